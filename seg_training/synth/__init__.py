"""
Synthetic driving scenes for training and tests: the engine behind ``seg-synth``.

Modules
    ``style``    domains (colour looks), camera views and weather
    ``render``   the camera, polygon filling, textures and per-frame effects
    ``scene``    a world laid out along a road and a drive through it (``render_sequence``)
    ``dataset``  the ``seg-synth`` command: datasets in the Cityscapes or folder layout

The names below are the package's public interface; everything else is reached through the
module that defines it.
"""

from seg_training.synth.dataset import (CITIES, CUSTOM8_FROM_LABEL_ID, drive_seed, generate,
                                        label_lut, main, samples_sheet)
from seg_training.synth.scene import (Drive, DriveParams, LABEL_IDS, render_frame,
                                      render_sequence, sample_drive)

__all__ = ['CITIES', 'CUSTOM8_FROM_LABEL_ID', 'Drive', 'drive_seed', 'DriveParams', 'generate',
           'LABEL_IDS', 'label_lut', 'main', 'render_frame', 'render_sequence', 'sample_drive',
           'samples_sheet']
