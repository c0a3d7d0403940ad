"""
segmentation_node warns once per camera when the camera delivers frames faster than it keeps up.

Real graphs: the node in its own process (tiny custom8 model), the test's probe publishing a
camera at a fixed rate and subscribing to the labels (without a subscriber the node skips frames
and nothing is dropped). A slow node is made by running the tiny network at a large input; the
warning is read from the node's output.
"""

import re
import time

from ros_probe import make_image, start_node

W, H = 320, 240
WARNING = re.compile(r'/image: the camera delivers ([\d.]+) fps, this node sustains '
                     r'([\d.]+) fps: the newest frame wins')


def _stream(probe, node, fps, seconds, until=None):
    """Publish W x H rgb8 frames on /image at ``fps`` for ``seconds`` or until ``until()``."""
    msg, _ = make_image('rgb8', W, H, probe.stamp())
    pub = probe.publisher(type(msg), '/image')
    period = 1.0 / fps
    end = time.monotonic() + seconds
    next_time = time.monotonic()
    sent = 0
    while time.monotonic() < end:
        node.check_running()
        if until is not None and until():
            return sent
        if time.monotonic() >= next_time:
            msg.header.stamp = probe.stamp()
            pub.publish(msg)
            sent += 1
            next_time = max(next_time + period, time.monotonic())
        probe.executor.spin_once(timeout_sec=max(0.0, min(next_time - time.monotonic(), 0.05)))
    return sent


def test_a_camera_faster_than_the_node_is_warned_about_once(tiny_model_file, tmp_path, probe):
    # The tiny network at 1024x512 takes 60-400 ms per frame on a CPU: 30 fps is more than it
    # sustains.
    node = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'input_width:=1024',
                       'input_height:=512', 'diagnostics_period:=0.5'],
                      tmp_path / 'segmentation_node.log', probe)
    try:
        with probe.listening(['/segmentation/labels']):
            _stream(probe, node, 30.0, 90.0, until=lambda: WARNING.search(node.log()))
            found = WARNING.search(node.log())
            assert found, f'no warning about the camera rate:\n{node.log()[-3000:]}'
            _stream(probe, node, 30.0, 4.0)  # still too fast: no second warning
            assert probe.messages['/segmentation/labels'], 'the node segments what it takes'
    finally:
        assert node.stop() == 0, node.log()
    log = node.log()
    assert len(WARNING.findall(log)) == 1, log
    camera_fps, node_fps = (float(v) for v in found.groups())
    assert 10.0 < camera_fps < 45.0, found.group(0)
    assert node_fps < 0.8 * camera_fps, found.group(0)
    line = next(ln for ln in log.splitlines() if WARNING.search(ln))
    assert '[WARN]' in line
    for hint in ('dropped_overwritten', 'input_width', 'onnxruntime', 'int8', 'output_scale',
                 'docs/performance.md', 'once per topic'):
        assert hint in line, hint


def test_a_camera_slower_than_the_node_gets_no_warning(tiny_model_file, tmp_path, probe):
    node = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'diagnostics_period:=0.5'],
                      tmp_path / 'segmentation_node.log', probe)
    try:
        with probe.listening(['/segmentation/labels']):
            sent = _stream(probe, node, 5.0, 9.0)  # longer than the node's 5 s rate window
            probe.spin_until(lambda: len(probe.messages['/segmentation/labels']) >= sent // 2,
                             'labels of half the frames', process=node)
            status = probe.wait_status('camera /image', lambda v: int(v['frames_received']) >= 20,
                                       'the frames counted', node)
    finally:
        assert node.stop() == 0, node.log()
    assert int(status['dropped_overwritten']) < int(status['frames_received']) // 5, status
    assert not WARNING.search(node.log()), node.log()
    assert 'this node sustains' not in node.log()
