"""
Small pieces the command-line tools share: help format, image sizes and the compute device.

Light to import (torch only when a device is asked for), so tools without a
network, such as seg-replay, use it too.
"""

import argparse
from contextlib import contextmanager
import signal
import threading
from typing import Iterator, Tuple, TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Option help that ends with the default where there is one, and marks required options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if not action.option_strings or 'default' in text or '(required' in text:
            return text
        if action.required:
            return f'{text} (required)'
        if any(action.default is v for v in (None, True, False, argparse.SUPPRESS)) \
                or action.default == []:
            return text
        return f'{text} (default: %(default)s)'


def parse_size(text: str) -> Tuple[int, int]:
    """Parse 'WxH' (e.g. '512x256') into (W, H); ValueError says what is wrong."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'size {text!r} is not WxH (e.g. 512x256)') from None
    if w <= 0 or h <= 0:
        raise ValueError(f'size {text!r}: width and height must be positive')
    return w, h


def size_arg(text: str) -> Tuple[int, int]:
    """Argparse type of an image size 'WxH'."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def unit_interval_arg(text: str) -> float:
    """Argparse type of a number in [0, 1], such as an overlay opacity (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f'{text} is outside [0, 1]')
    return value


def resolve_device(name: str, local_rank: int = 0) -> 'torch.device':
    """
    Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into a device.

    'auto' is CUDA when available, else the CPU; a bare 'cuda' is this process's GPU under DDP
    (``local_rank``). Asking for CUDA where there is none is a RuntimeError.
    """
    import torch

    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(name)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'device {name!r} requested but CUDA is not available '
                               f'(torch {torch.__version__})')
        if dev.index is None:
            dev = torch.device('cuda', local_rank)
    return dev


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(f'signal {signum}')
        self.signum = signum


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """
    While the block runs, SIGTERM raises :class:`Terminated`, a KeyboardInterrupt.

    So whatever cleans up after Ctrl-C (temporary files, a checkpoint) runs for SIGTERM too.
    Only the main thread may set handlers; elsewhere the block runs with SIGTERM as it was.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
