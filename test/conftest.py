"""Shared test fixtures: an isolated DDS domain per run and small model files."""

import os
from pathlib import Path
import random
import sys

import pytest

# Each test run talks DDS on this machine only, in a domain of its own, before rclpy is imported.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')

# The tests sit in sub-folders by what they test (node, pipeline, nets, ...); the helpers they
# share (ros_probe, published, big_images, ...) and test/data stay here, in test/. Some tests
# reuse another's writers (test_bag.write_bag, test_formats.write_camvid): every sub-folder is
# importable whichever is collected first, as pytest makes each one once it has collected it.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)] + sorted({str(p.parent) for p in HERE.glob('*/test_*.py')})


@pytest.fixture(scope='session')
def tiny_model_file(tmp_path_factory):
    """Write a project model file: random ERFNet weights, the custom8 classes, 64x32 input."""
    import torch

    from seg_training.base.classes import CUSTOM8
    from seg_training.nets.checkpoint import build_model, ModelInfo, Normalization, save_model

    torch.manual_seed(0)
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32),
                     normalization=Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    model = build_model(info).eval()
    path = tmp_path_factory.mktemp('models') / 'tiny.pt'
    save_model(model, info, path)
    return path


@pytest.fixture(scope='module')
def probe(request):
    """Give each graph-test module a probe node (publishers, subscriptions, parameter clients)."""
    from ros_probe import Probe

    p = Probe(request.module.__name__.rsplit('.', 1)[-1] + '_probe')
    yield p
    p.close()


@pytest.fixture(scope='session')
def reference(tiny_model_file):
    """Return the ROS-free pipeline on the tiny model: what the node's outputs must equal."""
    from seg_perception.pipeline import SegmentationPipeline

    return SegmentationPipeline.from_file(tiny_model_file, device='cpu', warmup=False)
