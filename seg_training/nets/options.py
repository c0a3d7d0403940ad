"""
Command-line option types that know the networks: an input size the networks take, --tta.

Light to import: the network modules load when an option is parsed.
"""

import argparse
from typing import Tuple, TYPE_CHECKING

from seg_training.base.cli import size_arg

if TYPE_CHECKING:
    from seg_training.nets.tta import TTA


def network_size_arg(text: str) -> Tuple[int, int]:
    """Argparse type of an ERFNet input size 'WxH': multiples of the stride, within bounds."""
    from seg_training.nets.checkpoint import check_input_bound
    from seg_training.nets.model import check_input_size

    w, h = size_arg(text)
    try:
        check_input_size(h, w)
        check_input_bound(w, h, f'size {text!r}')
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return w, h


def tta_arg(text: str) -> 'TTA':
    """Argparse type of --tta: 'flip', scales, or both ('flip,0.75,1,1.25')."""
    from seg_training.nets.tta import parse_tta
    try:
        return parse_tta(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
