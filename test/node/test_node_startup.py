"""segmentation_node starting and stopping: clean SIGINT, clear errors for what it can't run."""

import pytest
from ros_probe import make_image, NodeProcess, Probe, start_node

W, H = 40, 24


@pytest.fixture
def probe():
    p = Probe('startup_probe')
    yield p
    p.close()


def test_sigint_stops_worker_and_node_cleanly(tiny_model_file, tmp_path, probe):
    # A namespace of its own, so no other node of the run answers for it.
    node = start_node([f'model:={tiny_model_file}', 'device:=cpu'], tmp_path / 'node.log',
                      probe, ready_topic='/startup/segmentation/class_table',
                      ros_args=['-r', '__ns:=/startup'])
    try:
        msg, _ = make_image('rgb8', W, H, probe.stamp())
        with probe.listening(['/startup/segmentation/labels']):
            got = probe.request([('/startup/image', msg)],
                                {'/startup/segmentation/labels': msg.header.stamp}, node)
        assert got['/startup/segmentation/labels'].width == W
    finally:
        rc = node.stop(timeout=30.0)
    log = node.log()
    assert rc == 0, log
    assert 'Traceback' not in log, log
    assert 'engine onnxruntime (CPU provider' in log, log  # auto on the CPU in fp32


def test_ctrl_c_twice_still_shuts_down_cleanly(tiny_model_file, tmp_path, probe):
    """Ctrl-C under ros2 launch reaches the node twice: from the terminal and from launch."""
    import signal
    import time

    node = start_node([f'model:={tiny_model_file}', 'device:=cpu'], tmp_path / 'node.log',
                      probe, ready_topic='/twice/segmentation/class_table',
                      ros_args=['-r', '__ns:=/twice'])
    node.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the second one lands while the node is shutting down
    rc = node.stop(timeout=30.0)
    log = node.log()
    assert rc == 0, log
    assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log


def test_node_refuses_to_start_with_a_clear_error(tmp_path, tiny_model_file):
    broken = tmp_path / 'broken.pt'
    broken.write_bytes(b'this is not a torch file')
    cases = {
        'broken': ([f'model:={broken}', 'device:=cpu'], f'cannot run model {broken}'),
        'missing': ([f'model:={tmp_path / "absent.pt"}'], 'model file not found'),
        'device': (['device:=gpu'], "parameter device: 'gpu'"),
        'engine': ([f'model:={tiny_model_file}', 'device:=cpu', 'accelerate:=cuda_graphs'],
                   'accelerate cuda_graphs needs a CUDA device'),
        'cameras': ([f'model:={broken}', 'cameras:=[front, /front]'],
                    'name the same topic twice'),
    }
    procs = {name: NodeProcess(p, tmp_path / f'{name}.log') for name, (p, _) in cases.items()}
    for name, (_, message) in cases.items():
        rc = procs[name].wait(timeout=90.0)
        log = procs[name].log()
        assert rc == 1, log
        assert message in log, log
        assert '[FATAL]' in log and 'Traceback' not in log, log


def test_ros_arguments_the_node_cannot_take_are_one_line_errors(tmp_path, tiny_model_file):
    """Parameter files and names given to the node itself: exit 2 (arguments) or 1 (values)."""
    files = {'broken': 'a: [\n', 'list': 'segmentation_node: [1, 2]\n',
             'alias': ('segmentation_node:\n  ros__parameters:\n    model: &m x\n'
                       '    device: *m\n'),
             'big': '# ' + 'x' * (2 << 20) + '\n',
             'long_camera': ('segmentation_node:\n  ros__parameters:\n'
                             f'    cameras: [{"c" * 230}]\n')}
    for name, text in files.items():
        (tmp_path / f'{name}.yaml').write_text(text)
    model = [f'model:={tiny_model_file}', 'device:=cpu']
    cases = {
        'missing': (['--params-file', str(tmp_path / 'absent.yaml')], 2, '--params-file'),
        'broken': (['--params-file', str(tmp_path / 'broken.yaml')], 2, 'broken.yaml'),
        'list': (['--params-file', str(tmp_path / 'list.yaml')], 2, 'list.yaml'),
        'alias': (['--params-file', str(tmp_path / 'alias.yaml')], 2, 'aliasing'),
        'big': (['--params-file', str(tmp_path / 'big.yaml')], 2, 'more than the 1048576'),
        'remap': (['-r', 'image:=a b'], 2, "'-r image:=a b'"),
        'namespace': (['-r', '__ns:=/front/../x'], 2, '__ns:=/front/../x'),
        'long namespace': (['-r', '__ns:=/' + 'n' * 300], 2, 'not a valid ROS namespace'),
        'long camera': (['--params-file', str(tmp_path / 'long_camera.yaml')], 1,
                        'parameter cameras'),
    }
    procs = {name: NodeProcess(model, tmp_path / f'{name}.log', ros_args=args)
             for name, (args, _, _) in cases.items()}
    try:
        for name, (_, status, words) in cases.items():
            rc = procs[name].wait(timeout=90.0)
            log = procs[name].log()
            assert rc == status, f'{name}: {log}'
            assert 'Traceback' not in log, f'{name}: {log}'
            ours = [line for line in log.splitlines()
                    if line.startswith('segmentation_node: error:') or '[FATAL]' in line]
            assert len(ours) == 1 and words in ours[0], f'{name}: {log}'
    finally:
        for proc in procs.values():  # one that started after all is stopped with the test
            if proc.proc.poll() is None:
                proc.stop()
