"""
Segment image files: ``seg-predict --model M [options] INPUT...``.

INPUT is an image file or a folder searched recursively for png/jpg/jpeg/bmp files. For each image
the command writes, into the output folder (images found in a folder keep their sub-folder):

* ``<stem>_labels.png``: mono8 class index at the image's own size;
* ``<stem>_color.png``: the class colours of the model's class table;
* ``<stem>_overlay.png``: the colours blended over the image (``--alpha``), alpha channel kept.

Images are read with OpenCV as they are stored (gray, BGR, BGRA; 16-bit is scaled to 8-bit). An
image already at the network input size goes to the network without resizing. An image that cannot
be read is reported by path and skipped; the exit status is then 1. A model or device that cannot
be used stops the command with status 2.
"""

import argparse
import logging
from pathlib import Path
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seg_perception.engines import ACCELERATIONS
from seg_perception.pipeline import Frame, PRECISIONS, Result, SegmentationPipeline
from seg_perception.postprocess import LABEL_UPSAMPLING
from seg_training.base.cli import HelpFormatter, resolve_device, unit_interval_arg
from seg_training.base.logtext import loggable, MAX_LINE_CHARS
from seg_training.nets.checkpoint import load_model, ModelFileError, ModelInfo
from seg_training.nets.options import network_size_arg, tta_arg
from seg_training.nets.provenance import log_model

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.bmp', '.jpeg', '.jpg', '.png')
DEFAULT_OUTPUT_DIR = Path('out/predict')
MAX_NAME_CHARS = 60  # a class name in the log is cut to this


class ImageReadError(ValueError):
    """An input image that cannot be read; the message names the file."""


def find_images(inputs: Sequence[str]) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """
    List the images to segment and the problems with inputs that are no image.

    Returns ``(image path, output path prefix relative to the output folder)`` pairs, in the
    order given (folders sorted), each file once, and one message per input that is neither an
    image file nor a folder, or whose outputs would overwrite those of an earlier image.
    """
    images: List[Tuple[Path, Path]] = []
    errors: List[str] = []
    seen = set()
    owners: Dict[Path, Path] = {}  # output prefix -> image that claimed it
    for text in inputs:
        root = Path(text)
        if root.is_dir():
            found = sorted(p for p in root.rglob('*')
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f'{root}: folder holds no {"/".join(IMAGE_SUFFIXES)} images')
            pairs = [(p, p.relative_to(root).with_suffix('')) for p in found]
        elif root.is_file():
            pairs = [(root, Path(root.stem))]
        else:
            errors.append(f'{root}: no such file or folder')
            continue
        for path, prefix in pairs:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            if prefix in owners:
                errors.append(f'{path}: its outputs {prefix}_*.png would overwrite those of '
                              f'{owners[prefix]}; segment it in a separate run')
                continue
            owners[prefix] = path
            images.append((path, prefix))
    return images, errors


def read_image(path: Path) -> Frame:
    """Read an image file as stored: gray -> mono8, 3 channels -> bgr8, 4 -> bgra8."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f'{path}: cannot be read as an image')
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f'{path}: unsupported pixel type {img.dtype} (8 or 16 bit only)')
    if img.ndim == 2:
        img = img[..., None]  # (H, W, 1)
    encoding = {1: 'mono8', 3: 'bgr8', 4: 'bgra8'}.get(img.shape[2])
    if encoding is None:
        raise ImageReadError(f'{path}: unsupported channel count {img.shape[2]}')
    return Frame(np.ascontiguousarray(img), encoding)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` (OpenCV channel order) to ``path``; OSError names the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f'{path}: could not be written')


def write_outputs(result: Result, prefix: Path) -> None:
    """Write ``<prefix>_labels.png``, ``_color.png`` and ``_overlay.png`` for one image."""
    write_png(prefix.with_name(prefix.name + '_labels.png'), result.labels)
    write_png(prefix.with_name(prefix.name + '_color.png'), result.color[..., ::-1])  # RGB->BGR
    overlay = result.overlay
    if result.overlay_encoding in ('rgb8', 'rgba8'):
        overlay = np.concatenate([overlay[..., 2::-1], overlay[..., 3:]], axis=2)  # -> BGR(A)
    write_png(prefix.with_name(prefix.name + '_overlay.png'), overlay)


def describe(info: ModelInfo, path: str) -> str:
    """Summarise a model for the log: format, classes, input size, resize, normalisation."""
    w, h = info.input_size
    norm = info.normalization
    names = ', '.join(loggable(n, MAX_NAME_CHARS) for n in info.classes.names)
    return loggable(f'model {loggable(path)} ({info.source_format}): {info.num_classes} classes '
                    f'[{names}], network input {w}x{h}, resize {info.resize.describe()}, '
                    f'normalisation mean {list(norm.mean)} std {list(norm.std)}', MAX_LINE_CHARS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-predict',
        description='Segment image files and folders with an ERFNet model file.')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, or folders searched recursively for images')
    parser.add_argument('--model', required=True,
                        help='model file: seg_perception .pt or official erfnet_pretrained.pth')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                        help='where the network runs (auto: CUDA when available)')
    parser.add_argument('--precision', default='fp32', choices=sorted(PRECISIONS),
                        help='network precision (fp16/bf16: CUDA)')
    parser.add_argument('--accelerate', default='auto', choices=ACCELERATIONS,
                        help='how the network runs; auto: the fastest engine for the device and '
                        'precision (docs/performance.md, Engines)')
    parser.add_argument('--input-size', type=network_size_arg, metavar='WxH',
                        help="network input size (default: the model's own)")
    parser.add_argument('--output-dir', type=Path, default=DEFAULT_OUTPUT_DIR,
                        help=f'where the PNG files go (default: {DEFAULT_OUTPUT_DIR})')
    parser.add_argument('--alpha', type=unit_interval_arg, default=0.5,
                        help='opacity of the class colours in the overlay, 0..1 (default 0.5)')
    parser.add_argument('--tta', type=tta_arg, default=None, metavar='flip[,S,...]',
                        help='test-time augmentation: softmax averaged over a mirrored run '
                        '("flip") and/or input scales, e.g. flip,0.75,1,1.25 (default: off)')
    parser.add_argument('--label-upsampling', default='auto', choices=LABEL_UPSAMPLING,
                        help='labels at image size, as the node (default auto: bilinear on '
                        'CUDA, bilinear_x2 on the CPU)')
    parser.add_argument('--log-level', default='INFO',
                        choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'), help='logging level')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 some images failed, 2 no model)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format='%(levelname)s %(name)s: %(message)s')
    images, errors = find_images(args.inputs)
    for message in errors:
        _logger.error(message)
    try:
        device = resolve_device(args.device)
        if args.precision == 'fp16' and device.type == 'cpu':
            parser.error('--precision fp16 needs CUDA: the CPU has no fast half-precision '
                         'kernels (about 7 s per image); use fp32 on the CPU')
        model, info = load_model(args.model)
        pipeline = SegmentationPipeline(model, info, device=str(device),
                                        precision=args.precision, input_size=args.input_size,
                                        warmup=device.type == 'cuda',
                                        accelerate=args.accelerate, source=args.model,
                                        label_upsampling=args.label_upsampling,
                                        tta=args.tta)
    except (ModelFileError, RuntimeError, ValueError) as e:
        _logger.error('%s', loggable(e, MAX_LINE_CHARS))
        return 2
    _logger.info('%s', describe(info, args.model))
    log_model(info.provenance, args.model, _logger)
    _logger.info('running at %dx%d on %s (%s%s); %d images -> %s', *pipeline.input_size,
                 device, pipeline.engine.describe(),
                 f', TTA {args.tta.describe()}' if args.tta else '', len(images), args.output_dir)
    done = 0
    with logging_redirect_tqdm():
        for path, prefix in tqdm(images, desc='seg-predict', unit='image'):
            try:
                (result,) = pipeline([read_image(path)], alpha=args.alpha)
                write_outputs(result, args.output_dir / prefix)
                done += 1
            except (ImageReadError, OSError) as e:
                errors.append(str(e))
                _logger.error('%s', e)
    print(f'seg-predict: segmented {done} of {len(images)} images into {args.output_dir}'
          + (f'; {len(errors)} problems (see the log above)' if errors else ''))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
