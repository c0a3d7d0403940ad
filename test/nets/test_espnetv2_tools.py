"""An ESPNetv2 model file through the node (real DDS graph) and seg-bag, as an ERFNet one runs."""

import subprocess

import numpy as np
import pytest
from ros_probe import image_array, make_image, start_node
import torch

from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_training.base.classes import CUSTOM8
from seg_training.nets import architectures
from seg_training.nets.checkpoint import ModelInfo, Normalization, save_model
from test_bag import read_bag, SEG_BAG, seg_bag_args, write_bag

W, H = 96, 64
INPUT, LABELS, OVERLAY = '/image', '/segmentation/labels', '/segmentation/overlay'


@pytest.fixture(scope='module')
def espnetv2_file(tmp_path_factory):
    """Write a small ESPNetv2 project file: width 0.5, custom8 classes, 64x32 input."""
    torch.manual_seed(5)
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32), arch='espnetv2',
                     arch_options={'scale': 0.5},
                     normalization=Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    net = architectures.build('espnetv2', info.arch_config).eval()
    path = tmp_path_factory.mktemp('espnetv2') / 'espnetv2_tiny.pt'
    save_model(net, info, path)
    return path


@pytest.fixture(scope='module')
def reference(espnetv2_file):
    return SegmentationPipeline.from_file(str(espnetv2_file), device='cpu', warmup=False)


def test_the_node_runs_an_espnetv2_file(espnetv2_file, reference, probe, tmp_path):
    node = start_node([f'model:={espnetv2_file}', 'device:=cpu'], tmp_path / 'node.log', probe)
    try:
        msg, pixels = make_image('rgb8', W, H, probe.stamp(), frame_id='esp', seed=3)
        with probe.listening([LABELS, OVERLAY]):
            got = probe.request([(INPUT, msg)], {t: msg.header.stamp for t in (LABELS, OVERLAY)},
                                node)
        want = reference([Frame(pixels, 'rgb8')], Outputs(color=False), alpha=0.5)[0]
        np.testing.assert_array_equal(image_array(got[LABELS]), want.labels)
        assert got[OVERLAY].header.frame_id == 'esp'
        assert 'espnetv2' in node.log()
    finally:
        assert node.stop() == 0, node.log()


def test_seg_bag_runs_an_espnetv2_file(espnetv2_file, reference, tmp_path):
    expected = write_bag(tmp_path / 'drive', 'mcap')
    proc = subprocess.run([SEG_BAG] + seg_bag_args(espnetv2_file, tmp_path / 'drive',
                                                   tmp_path / 'out'),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out, _, _ = read_bag(tmp_path / 'out')
    (_, _, pixels, enc) = expected['/front/image_raw'][0]
    _, msg, _ = out['/front/segmentation/labels'][0]
    want = reference([Frame(pixels, enc)], Outputs(labels=True, color=False, overlay=False))
    got = np.asarray(msg.data).reshape(msg.height, msg.step)[:, :msg.width]
    np.testing.assert_array_equal(got, want[0].labels)
