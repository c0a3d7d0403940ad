"""
Whatever a peer sends to segmentation_node's services, the node answers and keeps segmenting.

The node runs in its own process (namespace ``/hostile``); the probe calls its parameter services
with real rclpy clients (rcl_interfaces), sending requests rclpy's own service code raises on,
then checks the answers, that the next good frame is segmented and that the process is alive.
"""

import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import (DescribeParameters, GetParameters, GetParameterTypes,
                                ListParameters, SetParameters, SetParametersAtomically)
from ros_probe import make_image, start_node

NS = '/hostile'
NODE = f'{NS}/segmentation_node'
INPUT = f'{NS}/image'
LABELS = f'{NS}/segmentation/labels'
UNKNOWN_TYPE = 77  # no ParameterType has this value
W, H = 40, 24


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'reliability:=reliable'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe,
                      ready_topic=f'{NS}/segmentation/class_table',
                      ros_args=['-r', f'__ns:={NS}'])
    yield proc
    rc = proc.stop()
    log = proc.log()
    assert rc == 0, log
    assert 'Traceback' not in log, log


def _call(probe, node, srv_type, service, request):
    client = probe.node.create_client(srv_type, f'{NODE}/{service}')
    try:
        probe.spin_until(client.service_is_ready, f'service {service}', process=node)
        future = client.call_async(request)
        probe.spin_until(future.done, f'answer of {service}', process=node)
        return future.result()
    finally:
        probe.node.destroy_client(client)


def _param(name, type_, **value):
    return ParameterMsg(name=name, value=ParameterValue(type=type_, **value))


def _alpha(probe, node):
    answer = _call(probe, node, GetParameters, 'get_parameters',
                   GetParameters.Request(names=['overlay_alpha']))
    return answer.values[0].double_value


def _segments_a_frame(probe, node, seed):
    msg, _ = make_image('rgb8', W, H, probe.stamp(), seed=seed)
    with probe.listening([LABELS]):
        got = probe.request([(INPUT, msg)], {LABELS: msg.header.stamp}, node)
    assert (got[LABELS].width, got[LABELS].height) == (W, H)


def test_unknown_parameter_types_are_refused_and_the_node_keeps_segmenting(probe, node):
    _segments_a_frame(probe, node, seed=1)
    good = _param('overlay_alpha', ParameterType.PARAMETER_DOUBLE, double_value=0.25)
    bad = _param('overlay_alpha', UNKNOWN_TYPE)
    # set_parameters answers each parameter: the good one is set, the bad one refused.
    answer = _call(probe, node, SetParameters, 'set_parameters',
                   SetParameters.Request(parameters=[good, bad]))
    assert [r.successful for r in answer.results] == [True, False], answer
    assert 'overlay_alpha' in answer.results[1].reason, answer
    assert f'type {UNKNOWN_TYPE}' in answer.results[1].reason, answer
    assert _alpha(probe, node) == 0.25
    # set_parameters_atomically refuses the whole request: nothing is set.
    again = _param('overlay_alpha', ParameterType.PARAMETER_DOUBLE, double_value=0.75)
    answer = _call(probe, node, SetParametersAtomically, 'set_parameters_atomically',
                   SetParametersAtomically.Request(parameters=[again, bad]))
    assert not answer.result.successful, answer
    assert f'type {UNKNOWN_TYPE}' in answer.result.reason, answer
    assert _alpha(probe, node) == 0.25
    node.check_running()
    _segments_a_frame(probe, node, seed=2)
    assert f'type {UNKNOWN_TYPE}' in node.log()  # the refusal is logged


def test_a_parameter_without_a_name_is_not_created(probe, node):
    nameless = _param('', ParameterType.PARAMETER_DOUBLE, double_value=0.5)
    for srv_type, service in ((SetParameters, 'set_parameters'),
                              (SetParametersAtomically, 'set_parameters_atomically')):
        answer = _call(probe, node, srv_type, service, srv_type.Request(parameters=[nameless]))
        result = answer.results[0] if srv_type is SetParameters else answer.result
        assert not result.successful, answer
    answer = _call(probe, node, GetParameters, 'get_parameters', GetParameters.Request(names=['']))
    assert list(answer.values) == []
    node.check_running()


def test_hostile_queries_are_answered(probe, node):
    """Unknown, empty, control-character and very long names; the largest depth."""
    names = ['', 'no_such_parameter', '\n[FATAL] forged', 'x' * 100000, 'overlay_alpha']
    for srv_type, service in ((GetParameters, 'get_parameters'),
                              (DescribeParameters, 'describe_parameters'),
                              (GetParameterTypes, 'get_parameter_types')):
        _call(probe, node, srv_type, service, srv_type.Request(names=names))
    answer = _call(probe, node, ListParameters, 'list_parameters',
                   ListParameters.Request(prefixes=['', '.', 'a..b'], depth=2 ** 64 - 1))
    assert answer is not None
    node.check_running()
    _segments_a_frame(probe, node, seed=3)
