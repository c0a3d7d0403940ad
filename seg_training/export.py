"""
seg-export: a model file to ONNX or TorchScript, checked against PyTorch, with a JSON sidecar.

The exported network takes ``image``: float32 (B, 3, H, W) RGB, pixels scaled to [0, 1] then
normalised with the model's mean/std, and returns ``logits``: float32 (B, K, H, W). The batch is
1 unless ``--dynamic-batch``; H and W are the model's input size (or ``--size``).

After writing, the export is run on a seeded random input (onnxruntime for ONNX,
``torch.jit.load`` for TorchScript) and compared with the PyTorch model: the maximum absolute
logit difference and the argmax agreement are reported, and a difference over ``--tolerance`` is
an error (nothing is left at the output path then). The sidecar ``<output>.json`` holds what a
runtime needs besides the weights: class names and colours, normalisation, input size, the resize
(``resize``: method and antialias of seg_training.nets.preprocess, the step the node runs), tensor
names and the check's numbers.

Example::

    seg-export --model out/custom/best.pt --format onnx --dynamic-batch

``--calibrate FRAMES_DIR`` instead writes a copy of the model file with the int8 calibration of
the ``onnxruntime_int8`` engine (seg_training.nets.calibration): the model runs, exported to ONNX
exactly as the engine exports it, on ``--frames`` frames of the folder at the network size
(``--size`` or the model's), and the activation ranges and the measured int8 vs fp32 label
agreement go into the file's ``calibration`` entry (``--output``, default
``<model>.calibrated.pt``; the model's own path rewrites it in place, atomically, weights
untouched). It lives here because it is the same step as an ONNX export: the model file made
ready for one runtime, checked against PyTorch's labels.

    seg-export --model models/espnetv2_camvid.pt --calibrate camvid/train \
        --output models/espnetv2_camvid.pt
"""

import argparse
from dataclasses import dataclass
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
import warnings

import numpy as np
import torch

from seg_training.base.cli import HelpFormatter
from seg_training.base.files import check_writable, write_json
from seg_training.datasets.segmentation import IMAGE_SUFFIXES
from seg_training.nets import calibration
from seg_training.nets.checkpoint import (atomic_save, detect_format, load_model, model_file_dict,
                                          ModelFileError, ModelInfo, read_file, state_hash)
from seg_training.nets.options import network_size_arg

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
FORMATS = ('onnx', 'torchscript')
SUFFIXES = {'onnx': '.onnx', 'torchscript': '.torchscript'}
DEFAULT_OPSET = 17
# Oldest opset ERFNet exports to: before 7, BatchNormalization has a form onnxruntime cannot run.
MIN_OPSET = 7
DEFAULT_TOLERANCE = 1e-3
INPUT_NAME = 'image'
OUTPUT_NAME = 'logits'
DEFAULT_FRAMES = 64  # calibration frames (a quarter of them held out for the agreement)


class ExportError(RuntimeError):
    """An export that failed or does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely it matches PyTorch."""

    path: Path
    sidecar: Path
    max_abs_diff: float
    argmax_agreement: float
    check_batch: int


def max_opset() -> int:
    """Newest ONNX opset this PyTorch's exporter writes."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # the constant moved: the default is known to work
        return DEFAULT_OPSET
    return int(ONNX_MAX_OPSET)


def check_opset(opset: int) -> None:
    """Raise ValueError unless ERFNet can be exported with ONNX ``opset``."""
    if not MIN_OPSET <= opset <= max_opset():
        raise ValueError(f'opset {opset} is not one ERFNet exports to with torch '
                         f'{torch.__version__}: choose {MIN_OPSET}..{max_opset()} '
                         f'(default {DEFAULT_OPSET})')


def check_tolerance(tolerance: float) -> None:
    """Raise ValueError unless ``tolerance`` is a number >= 0 (NaN would accept anything)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f'tolerance {tolerance} must be a finite number >= 0')


def _checked_arg(check: Callable[[Any], None], kind: Callable[[str], Any]
                 ) -> Callable[[str], Any]:
    """Argparse type: ``kind(text)``, then ``check``; its ValueError is a usage error."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
            check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    return parse


def default_output(model_path: PathLike, fmt: str) -> Path:
    """``<model stem>.onnx`` or ``<model stem>.torchscript`` next to the model file."""
    return Path(model_path).with_suffix(SUFFIXES[fmt])


def sample_input(info: ModelInfo, size: Tuple[int, int], batch: int, seed: int = 0
                 ) -> torch.Tensor:
    """Make a seeded random RGB batch normalised as the model expects: (B, 3, H, W) float32."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, 3, h, w, generator=g)  # pixels in [0, 1]
    mean = torch.tensor(info.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.normalization.std).view(1, 3, 1, 1)
    return (rgb - mean) / std  # (B, 3, H, W)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: PathLike, opset: int,
                dynamic_batch: bool) -> None:
    """
    Write ``model`` as ONNX with input 'image' and output 'logits'.

    Uses the TorchScript-based exporter (``dynamo=False``): ERFNet has no data-dependent control
    flow, and it needs no extra package beyond ``onnx``.
    """
    axes = {INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The input-size assert becomes a constant in the graph; the size is fixed anyway.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes,
                          do_constant_folding=True, dynamo=False)
    import onnx

    onnx.checker.check_model(str(path))


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: PathLike) -> None:
    """Write ``model`` traced with ``torch.jit.trace`` on ``example``."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        traced = torch.jit.trace(model, example, check_trace=False)  # compared below instead
        torch.jit.save(traced, str(path))


def run_onnx(path: PathLike, x: torch.Tensor) -> np.ndarray:
    """Logits of an ONNX file under onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]  # (B, K, H, W)


def run_torchscript(path: PathLike, x: torch.Tensor) -> np.ndarray:
    """Logits of a TorchScript file loaded with ``torch.jit.load`` on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        module = torch.jit.load(str(path), map_location='cpu')
    with torch.inference_mode():
        return module(x).numpy()  # (B, K, H, W)


def compare(reference: np.ndarray, exported: np.ndarray) -> Tuple[float, float]:
    """(max absolute logit difference, share of pixels with the same argmax class)."""
    if reference.shape != exported.shape:
        raise ExportError(f'exported model returns shape {exported.shape}, PyTorch '
                          f'{reference.shape}')
    diff = float(np.abs(reference - exported).max())
    agree = float((reference.argmax(1) == exported.argmax(1)).mean())
    return diff, agree


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def sidecar_dict(fmt: str, path: Path, model_path: PathLike, info: ModelInfo,
                 size: Tuple[int, int], opset: Optional[int], dynamic_batch: bool,
                 check: Dict[str, Any], data: Optional[Path] = None) -> Dict[str, Any]:
    """
    Describe what a runtime needs besides the exported weights.

    ``data`` is the exported file while it is not yet at ``path`` (its checksum is taken).
    """
    w, h = size
    batch = 'batch' if dynamic_batch else 1
    d: Dict[str, Any] = {
        'format': fmt,
        'file': path.name,
        'sha256': _sha256(data or path),
        'source_model': str(model_path),
        'source_format': info.source_format,
        'input': {'name': INPUT_NAME, 'shape': [batch, 3, h, w], 'dtype': 'float32',
                  'channels': 'RGB',
                  'preprocess': 'resize to input_size as "resize" says, then '
                                '(pixel - 255 mean) / (255 std)'},
        'output': {'name': OUTPUT_NAME, 'shape': [batch, info.num_classes, h, w],
                   'dtype': 'float32', 'postprocess': 'argmax over dim 1'},
        'input_size': [w, h],
        'normalization': info.normalization.to_dict(),
        'resize': info.resize.to_dict(),
        'preprocess': info.preprocessing((w, h)).to_dict(),
        'num_classes': info.num_classes,
        'classes': info.classes.to_dict(),
        'dynamic_batch': dynamic_batch,
        'torch_version': torch.__version__,
        'check': check,
    }
    if opset is not None:
        d['opset'] = opset
    return d


def export_model(model_path: PathLike, fmt: str, output: Optional[PathLike] = None,
                 size: Optional[Tuple[int, int]] = None, opset: int = DEFAULT_OPSET,
                 dynamic_batch: bool = False,
                 tolerance: float = DEFAULT_TOLERANCE) -> ExportResult:
    """
    Export a model file, check it against PyTorch, write the sidecar; see the module doc.

    The export and its sidecar appear together or not at all. Paths that cannot be written are
    refused before any work, an ExportError naming them.
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; choose one of {list(FORMATS)}')
    if fmt == 'onnx':
        check_opset(opset)
    check_tolerance(tolerance)
    out = Path(output) if output else default_output(model_path, fmt)
    sidecar = Path(f'{out}.json')
    try:
        check_writable(out)
        check_writable(sidecar)
    except OSError as e:
        raise ExportError(str(e)) from None
    model, info = load_model(model_path, 'cpu')
    if info.encoder_only:
        raise ModelFileError(f'{model_path}: encoder-only model (1/8 resolution, a training '
                             'stage); train the decoder before exporting')
    size = tuple(size) if size else tuple(info.input_size)
    info.check_input_size(size[0], size[1])
    model = model.float().eval()
    example = sample_input(info, size, 1, seed=0)
    check_batch = 2 if dynamic_batch else 1
    x = sample_input(info, size, check_batch, seed=1)
    with torch.inference_mode():
        reference = model(x).numpy()  # (B, K, H, W)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f'.{out.name}.', suffix=SUFFIXES[fmt],
                                        dir=out.parent)
    except OSError as e:
        raise ExportError(f'{out}: cannot be written: {e.strerror}') from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            if fmt == 'onnx':
                export_onnx(model, example, tmp, opset, dynamic_batch)
                exported = run_onnx(tmp, x)
            else:
                export_torchscript(model, example, tmp)
                exported = run_torchscript(tmp, x)
        except Exception as e:  # exporters and runtimes raise many types, with long texts
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
            raise ExportError(f'{fmt} export of {model_path} failed: {type(e).__name__}: '
                              f'{first}; nothing written') from e
        diff, agree = compare(reference, exported)
        _logger.info('%s export vs PyTorch on a %dx3x%dx%d input: max |diff| %.3g, argmax '
                     'agreement %.5f', fmt, check_batch, size[1], size[0], diff, agree)
        if not diff <= tolerance:
            raise ExportError(f'{fmt} export of {model_path} differs from PyTorch by up to '
                              f'{diff:.3g} (tolerance {tolerance:g}); nothing written')
        os.chmod(tmp, 0o644)
        check = {'max_abs_diff': diff, 'argmax_agreement': agree, 'tolerance': tolerance,
                 'batch': check_batch,
                 'runtime': 'onnxruntime' if fmt == 'onnx' else 'torch.jit.load'}
        # The sidecar first (it describes the file about to be renamed), then the export; if
        # that rename fails, the sidecar goes again: both or neither.
        write_json(sidecar_dict(fmt, out, model_path, info, size,
                                opset if fmt == 'onnx' else None, dynamic_batch, check,
                                data=tmp), sidecar)
        try:
            os.replace(tmp, out)
        except BaseException:
            sidecar.unlink()
            raise
    except OSError as e:
        raise ExportError(f'{out}: not written: {e}') from e
    finally:
        if tmp.exists():
            tmp.unlink()
    _logger.info('wrote %s and %s', out, sidecar)
    return ExportResult(out, sidecar, diff, agree, check_batch)


def calibration_frames(folder: PathLike) -> List[Path]:
    """
    Return the images of ``folder``, sorted: its own, else a dataset root's camera images.

    A dataset root is a Cityscapes layout (``leftImg8bit/**/*_leftImg8bit.png``) or the folder
    layout (``images/**``). Raises ExportError naming the folder when it holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f'--calibrate {root}: not a folder')

    def images(paths: Any) -> List[Path]:
        return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    found = (images(root.iterdir()) or images((root / 'leftImg8bit').rglob('*_leftImg8bit.png'))
             or images((root / 'images').rglob('*')))
    if not found:
        raise ExportError(f'--calibrate {root}: no {"/".join(IMAGE_SUFFIXES)} images in it (nor '
                          'under leftImg8bit/ or images/ of a dataset root)')
    return found


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert('RGB'))  # (H, W, 3) uint8, writable
    except OSError as e:
        raise ExportError(f'{path}: cannot be read as an image: {e}') from None


def calibrate_model(model_path: PathLike, frames_dir: PathLike, output: Optional[PathLike] = None,
                    size: Optional[Tuple[int, int]] = None, frames: int = DEFAULT_FRAMES,
                    method: str = 'minmax', description: Optional[str] = None
                    ) -> Tuple[Path, Dict[str, Any]]:
    """
    Write a copy of a model file with its int8 calibration; return (path, record).

    ``frames`` images spread evenly over the sorted folder are used; ``description`` says what
    they are (default: the folder). A project model file is copied entry by entry (weights
    bit-identical) and its provenance gets a ``calibration`` line; a published file becomes a
    project file.
    """
    from seg_perception.engines import cpu_cores, export_onnx as runtime_export
    from seg_perception.engines import ONNX_EXPORTER, ONNX_OPSET

    if method not in calibration.METHODS:
        raise ValueError(f'calibration method {method!r} is not one of '
                         f'{list(calibration.METHODS)}')
    if frames < 1:
        raise ValueError(f'--frames {frames}: need at least one frame')
    paths = calibration_frames(frames_dir)
    out = Path(output) if output else Path(model_path).with_suffix('.calibrated.pt')
    try:
        check_writable(out)
    except OSError as e:
        raise ExportError(str(e)) from None
    obj = read_file(model_path)
    model, info = load_model(model_path, 'cpu')
    if info.encoder_only:
        raise ModelFileError(f'{model_path}: encoder-only model (1/8 resolution, a training '
                             'stage); train the decoder before calibrating')
    w, h = tuple(size) if size else tuple(info.input_size)
    info.check_input_size(w, h)
    model = model.float().eval()
    picked = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(frames, len(paths)))]
    prep = info.preprocessing((w, h))
    inputs = [prep.image(_read_rgb(p))[None].numpy() for p in picked]  # (1, 3, h, w) each
    _logger.info('calibrating %s at %dx%d on %d frames of %s (%s)', model_path, w, h,
                 len(inputs), frames_dir, method)
    record = calibration.make_record(
        runtime_export(model, h, w), inputs, method, ONNX_OPSET, ONNX_EXPORTER,
        state_hash(model), (w, h), description or str(frames_dir), threads=cpu_cores())
    _logger.info('int8 vs fp32 labels agree on %.2f %% of the pixels of %d held-out frames, '
                 'int8 %.2fx as fast (auto runs int8 from %.0f %% and %.1fx)',
                 100 * record['agreement'], record['frames']['held_out'], record['speedup'],
                 100 * calibration.MIN_AGREEMENT, calibration.MIN_SPEEDUP)
    if detect_format(obj) == 'project':
        d = dict(obj, calibration=record)
        if isinstance(d.get('provenance'), dict):
            fr = record['frames']
            d['provenance'] = dict(d['provenance'], calibration=(
                f'int8 ranges ({method}, {"/".join(record["op_types"])}) from '
                f'{fr["calibration"]} frames of {fr["source"]} at {w}x{h}; int8 vs fp32 '
                f'labels agree on {100 * record["agreement"]:.2f} % of {fr["held_out"]} '
                f'held-out frames, int8 {record["speedup"]:.2f}x as fast'))
    else:
        d = model_file_dict(model, info, extra={'calibration': record})
    try:
        atomic_save(d, out)
    except OSError as e:
        raise ExportError(f'{out}: not written: {e}') from e
    _logger.info('wrote %s', out)
    return out, record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-export', description='Export a segmentation model file to ONNX or '
        'TorchScript, check it against PyTorch and write a JSON sidecar with its class table; '
        'or (--calibrate) add the int8 calibration of the onnxruntime_int8 engine to a copy.')
    p.add_argument('--model', required=True,
                   help='a project model file or a published ERFNet, ESPNetv2 or ESPNet file')
    p.add_argument('--format', choices=FORMATS, help='export format (or --calibrate)')
    p.add_argument('--calibrate', metavar='FRAMES_DIR',
                   help='instead of exporting, write a copy of the model file with the int8 '
                   'calibration measured on the images of this folder (or dataset root)')
    p.add_argument('--frames', type=int, default=DEFAULT_FRAMES,
                   help='--calibrate: frames used, spread over the folder')
    p.add_argument('--calibration-source', metavar='TEXT',
                   help='--calibrate: what the frames are, recorded in the model file '
                   '(default: the folder)')
    p.add_argument('--calibration-method', choices=calibration.METHODS, default='minmax',
                   help='--calibrate: activation ranges from min/max or the 99.999th '
                   'percentile')
    p.add_argument('--output', help='output file (default: the model path with .onnx or '
                   '.torchscript, or .calibrated.pt); the sidecar is <output>.json')
    p.add_argument('--size', type=network_size_arg,
                   help='network input WxH (default: the model file\'s input size)')
    p.add_argument('--opset', type=_checked_arg(check_opset, int), default=DEFAULT_OPSET,
                   help=f'ONNX opset version ({MIN_OPSET}..{max_opset()})')
    p.add_argument('--dynamic-batch', action='store_true',
                   help='variable batch dimension (default: batch 1)')
    p.add_argument('--tolerance', type=_checked_arg(check_tolerance, float),
                   default=DEFAULT_TOLERANCE,
                   help='largest accepted absolute logit difference from PyTorch')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.format is None) == (args.calibrate is None):
        parser.error('give one of --format (export) or --calibrate (int8 calibration)')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.calibrate is not None:
        try:
            out, record = calibrate_model(args.model, args.calibrate, args.output, args.size,
                                          args.frames, args.calibration_method,
                                          args.calibration_source)
        except (ModelFileError, ExportError, ValueError, OSError) as e:
            sys.exit(f'seg-export: error: {e}')
        print(json.dumps({'output': str(out), 'agreement': record['agreement'],
                          'speedup': record['speedup'],
                          'frames': record['frames'], 'method': record['method'],
                          'input_size': record['input_size']}, indent=2))
        return 0
    try:
        res = export_model(args.model, args.format, args.output, args.size, args.opset,
                           args.dynamic_batch, args.tolerance)
    except (ModelFileError, ExportError, ValueError, OSError) as e:
        sys.exit(f'seg-export: error: {e}')
    print(json.dumps({'output': str(res.path), 'sidecar': str(res.sidecar),
                      'max_abs_diff': res.max_abs_diff,
                      'argmax_agreement': res.argmax_agreement}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
