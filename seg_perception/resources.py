"""
Where the package's installed files are: the bundled default model and config files.

A colcon install puts them under ``share/seg_perception`` (found through the ament index); a
source checkout (``pip install -e .``) has them next to the Python packages.
"""

import logging
from pathlib import Path
from typing import List

_logger = logging.getLogger(__name__)

PACKAGE = 'seg_perception'
# The default: a real Cityscapes model (ESPNetv2, its authors' weights; models/README.md).
DEFAULT_MODEL = Path('models') / 'espnetv2_cityscapes.pt'
# ERFNet trained on seg-synth scenes only: the synthetic demo drive's model.
SYNTH_MODEL = Path('models') / 'erfnet_synth.pt'
# Real frames with hand labels (CamVid layout, CC BY-NC 4.0; samples/camvid/README.md).
SAMPLES = Path('samples') / 'camvid'
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class ResourceNotFoundError(FileNotFoundError):
    """A bundled file that is not installed; the message lists where it was looked for."""


def share_dirs() -> List[Path]:
    """List folders that may hold the package's data: ament share dir, then the source tree."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)))
    except (ImportError, LookupError, OSError, ValueError) as e:
        # No ROS install or the package is not in the ament index (a pip install).
        _logger.debug('no ament share directory for %s: %s', PACKAGE, e)
    if SOURCE_ROOT not in dirs:
        dirs.append(SOURCE_ROOT)
    return dirs


def find_resource(relative: Path) -> Path:
    """Return the first existing ``share_dir / relative`` (the error lists the candidates)."""
    candidates = [d / relative for d in share_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    raise ResourceNotFoundError(
        f'{relative} is not installed (looked for {", ".join(str(c) for c in candidates)})')


def default_model_path() -> Path:
    """Return the bundled default model file; the error says how to get a model otherwise."""
    try:
        return find_resource(DEFAULT_MODEL)
    except ResourceNotFoundError as e:
        raise ResourceNotFoundError(
            f'no model given and the bundled default model is missing: {e}. Pass a model file '
            '(node: -p model:=/path/model.pt, commands: --model /path/model.pt), or make one: '
            'seg-synth --layout folder --classes custom8 --out data/synth, then seg-train '
            '--dataset folder --data-root data/synth --output-dir runs/synth and use '
            f'runs/synth/best.pt (copy it to {SOURCE_ROOT / DEFAULT_MODEL} to make it the '
            'default)') from None


def synth_model_path() -> Path:
    """Return the bundled synthetic ERFNet (the synthetic demo drive's model)."""
    return find_resource(SYNTH_MODEL)


def samples_root() -> Path:
    """Return the folder of the bundled real frames (``test/`` images, ``testannot/`` labels)."""
    return find_resource(SAMPLES / 'README.md').parent


def default_params_file() -> Path:
    """Return the installed ``config/segment.yaml`` with the node's default parameters."""
    return find_resource(Path('config') / 'segment.yaml')
