"""
The bundled demo drive (``make demo``, ``python -m seg_perception.demo``).

Modules, in the order the demo runs them
    ``drive``   the synthetic two-camera drive and its recording as a rosbag2
    ``graph``   segmentation_node, a recorder of its outputs and the replay, on one DDS graph
    ``timing``  latency and drops per frame and camera
    ``media``   the overlay video and the contact sheet
    ``cli``     the command: arguments, the run and its report
"""

from seg_perception.demo.cli import main, run
from seg_perception.demo.drive import (CAMERAS, DemoError, DriveSpec, FPS, OUTPUTS, record_drive,
                                       recorded_spec)
from seg_perception.demo.graph import cdr_header
from seg_perception.demo.timing import publish_times

__all__ = ['CAMERAS', 'cdr_header', 'DemoError', 'DriveSpec', 'FPS', 'main', 'OUTPUTS',
           'publish_times', 'record_drive', 'recorded_spec', 'run']
