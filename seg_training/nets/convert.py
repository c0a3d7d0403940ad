"""
Turn any model file the project reads into a project model file.

    python -m seg_training.nets.convert SOURCE OUTPUT [--input-size WxH]

SOURCE is a project model file, the official ``erfnet_pretrained.pth``, an ESPNetv2 authors'
Cityscapes file (``espnetv2_s_*_city_*.pth``) or an ESPNet authors' file
(``espnet_p_2_q_8_camvid.pth``, ``espnet_p_2_q_{3,5,8}.pth``). OUTPUT is a project model file
with the same weights (denormals flushed to zero), the class table, input normalisation, resize
and network size the source was trained with, and its provenance, written atomically. Every tool
reads both files alike; the project file just carries what the published one leaves to its
README.
"""

import argparse
import dataclasses
import logging
import sys
from typing import List, Optional

from seg_training.base.cli import HelpFormatter, size_arg
from seg_training.nets.checkpoint import check_input_bound, load_model, ModelFileError, save_model

_logger = logging.getLogger(__name__)


def convert(source: str, output: str, input_size: Optional[tuple] = None) -> None:
    """Write ``source`` as a project model file at ``output`` (see the module docstring)."""
    model, info = load_model(source)
    if input_size is not None:
        w, h = input_size
        info.check_input_size(w, h)
        check_input_bound(w, h, '--input-size')
        info = dataclasses.replace(info, input_size=(w, h))
    save_model(model, info, output)
    _logger.info('wrote %s: %s, %d classes, input %dx%d', output, info.arch, info.num_classes,
                 *info.input_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m seg_training.nets.convert',
                                formatter_class=HelpFormatter,
                                description=__doc__.strip().split('\n\n')[0])
    p.add_argument('source', help='model file in any format the project reads')
    p.add_argument('output', help='project model file to write')
    p.add_argument('--input-size', type=size_arg, metavar='WxH', default=None,
                   help="network input size to record (default: the source's)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        convert(args.source, args.output, args.input_size)
    except (ModelFileError, ValueError, OSError) as e:
        sys.exit(f'convert: error: {e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
