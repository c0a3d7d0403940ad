"""
segmentation_node with two cameras of different sizes, one model, 32FC1 confidence.

One node process (``cameras:=[front, rear]``, reliable input, tiny custom8 model) serves the
module.
"""

import json

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from ros_probe import image_array, LATCHED, make_image, start_node
from std_msgs.msg import String

from seg_perception.pipeline import Frame, Outputs
from seg_training.base.classes import ClassTable, CUSTOM8

SIZES = {'front': (96, 48), 'rear': (40, 24)}  # (W, H); the network input is 64x32
ENCODINGS = {'front': 'rgb8', 'rear': 'bgr8'}


def out(cam, name):
    return f'/{cam}/segmentation/{name}'


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'cameras:=[front, rear]',
                       'confidence_encoding:=32FC1', 'reliability:=reliable', 'depth:=2',
                       'diagnostics_period:=0.3'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe,
                      ready_topic=out('rear', 'class_table'))
    yield proc
    assert proc.stop() == 0, proc.log()


def both_cameras(probe, node, outputs, seed):
    """Send one frame per camera; return {camera: (pixels, {output: message})}."""
    sends, expect, pixels = [], {}, {}
    for i, cam in enumerate(SIZES):
        w, h = SIZES[cam]
        msg, pixels[cam] = make_image(ENCODINGS[cam], w, h, probe.stamp(), frame_id=cam,
                                      seed=seed + i)
        sends.append((f'/{cam}/image', msg))
        expect.update({out(cam, name): msg.header.stamp for name in outputs})
    topics = list(expect)
    with probe.listening(topics):
        got = probe.request(sends, expect, node)
    return {cam: (pixels[cam], {name: got[out(cam, name)] for name in outputs})
            for cam in SIZES}


def references(reference, pixels, outputs):
    """Compute expected results per camera, batched as the node may have, or one by one."""
    frames = [Frame(pixels[cam], ENCODINGS[cam]) for cam in SIZES]
    batched = reference(frames, outputs)
    single = [reference([f], outputs)[0] for f in frames]
    return {cam: (batched[i], single[i]) for i, cam in enumerate(SIZES)}


def test_two_cameras_of_different_sizes_are_answered_from_one_model(probe, node, reference):
    answers = both_cameras(probe, node, ['labels', 'color', 'overlay'], seed=1)
    want = references(reference, {c: a[0] for c, a in answers.items()}, Outputs())
    for cam, (pixels, msgs) in answers.items():
        for name, msg in msgs.items():
            assert msg.header.frame_id == cam, (cam, name)
            assert (msg.width, msg.height) == SIZES[cam], (cam, name)
        assert msgs['overlay'].encoding == ENCODINGS[cam]
        labels = image_array(msgs['labels'])
        assert any(np.array_equal(labels, r.labels) for r in want[cam]), cam


def test_confidence_as_32fc1_probabilities(probe, node, reference):
    answers = both_cameras(probe, node, ['labels', 'confidence'], seed=5)
    want = references(reference, {c: a[0] for c, a in answers.items()},
                      Outputs(confidence=True))
    for cam, (_, msgs) in answers.items():
        msg = msgs['confidence']
        assert msg.encoding == '32FC1' and (msg.width, msg.height) == SIZES[cam]
        conf = image_array(msg)
        assert conf.min() >= 1.0 / len(CUSTOM8) - 1e-6 and conf.max() <= 1.0
        assert any(np.allclose(conf, r.confidence, atol=1e-5) for r in want[cam]), cam


def test_diagnostics_per_camera(probe, node):
    both_cameras(probe, node, ['labels'], seed=9)
    for cam in SIZES:
        values = probe.wait_status(f'camera /{cam}/image',
                                   lambda v: int(v['frames_processed']) >= 1,
                                   f'diagnostics of {cam}', node)
        assert values['topic'] == f'/{cam}/image'
        assert float(values['fps']) > 0 and values['latency_p50_ms'] != 'n/a'
        assert int(values['dropped_overwritten']) >= 0
        assert values['dropped_malformed'] == '0'
    pipeline = probe.status('pipeline')
    assert 1 <= int(pipeline['batch_size_max']) <= 2
    assert int(pipeline['frames_processed']) >= 2


def test_each_camera_has_the_class_table_and_no_plain_image_input(probe, node):
    topics = [out(cam, 'class_table') for cam in SIZES]
    with probe.listening(topics, String, LATCHED):
        probe.spin_until(lambda: all(probe.messages[t] for t in topics), 'class tables',
                         process=node)
        tables = [json.loads(probe.messages[t][0].data) for t in topics]
    assert all(ClassTable.from_dict(t) == CUSTOM8 for t in tables)
    readers = probe.node.get_subscriptions_info_by_topic('/image')
    assert not [r for r in readers if r.node_name == 'segmentation_node']


def test_a_frame_with_any_stamp_never_costs_the_other_cameras_frame(probe, node):
    """Front frames with broken stamps, each sent once with a rear frame: all are answered."""
    stamps = [Time(sec=-5), Time(sec=0, nanosec=0), Time(sec=2**31 - 1, nanosec=999_999_999),
              Time(sec=-2**31), Time(sec=-5, nanosec=1), Time(sec=-1, nanosec=999_999_999),
              Time(sec=2**31 - 2), Time(sec=-7), Time(sec=-5, nanosec=2), Time(sec=-100)]
    topics = [out(cam, 'labels') for cam in SIZES]
    with probe.listening(topics):
        both_cameras(probe, node, ['labels'], seed=50)  # both inputs matched and answered
        before = probe.wait_status('camera /rear/image', lambda v: True, 'rear diagnostics',
                                   node)
        for trial, stamp in enumerate(stamps):
            sent = {}
            for cam in SIZES:
                w, h = SIZES[cam]
                msg, _ = make_image(ENCODINGS[cam], w, h,
                                    stamp if cam == 'front' else probe.stamp(), frame_id=cam,
                                    seed=60 + trial)
                probe.publisher(type(msg), f'/{cam}/image').publish(msg)  # once, no resend
                sent[cam] = msg.header.stamp

            def answered(cam):
                return any(m.header.stamp == sent[cam] for m in probe.messages[out(cam, 'labels')])

            probe.spin_until(lambda: all(answered(c) for c in SIZES),
                             f'trial {trial}: answers to both frames (front stamp {stamp})',
                             timeout=30.0, process=node)
        rear = probe.wait_status(
            'camera /rear/image',
            lambda v: int(v['frames_processed']) >= int(before['frames_processed']) + 10,
            'rear frames counted as processed', node)
    assert rear['dropped_failed'] == '0'
    assert 'Traceback' not in node.log() and '[ERROR]' not in node.log()
