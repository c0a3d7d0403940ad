"""The node's parameters: YAML defaults vs declarations, descriptors, overrides, resources."""

from dataclasses import fields
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.node import Node
import yaml

from seg_perception import params, resources

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'config' / 'segment.yaml'


def yaml_defaults():
    return yaml.safe_load(CONFIG.read_text())['segmentation_node']['ros__parameters']


def declared(args):
    """Declare the parameters on a fresh node started with ``args``; return the values."""
    ctx = Context()
    rclpy.init(context=ctx, args=['test_params', '--ros-args', *args])
    try:
        node = Node('segmentation_node', context=ctx)
        try:
            return params.declare(node)
        finally:
            node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_yaml_and_declarations_agree_in_names_values_and_types():
    in_yaml, in_code = yaml_defaults(), params.defaults()
    assert sorted(in_yaml) == sorted(in_code), 'parameters only in one of YAML and params.py'
    for name, value in in_code.items():
        assert in_yaml[name] == value, name
        assert type(in_yaml[name]) is type(value), name  # rcl rejects 1 for a double


def test_params_file_read_by_rcl_gives_the_declared_defaults():
    assert declared(['--params-file', str(CONFIG)]) == params.NodeParams()


def test_command_line_overrides_are_read():
    p = declared(['-p', 'cameras:=[front, rear]', '-p', 'input_width:=128', '-p',
                  'overlay_alpha:=0.25', '-p', 'input_transport:=compressed', '-p',
                  'reliability:=reliable', '-p', 'depth:=3'])
    assert p.cameras == ('front', 'rear')
    assert p.input_size == (128, 0)
    assert p.overlay_alpha == 0.25
    assert (p.input_transport, p.reliability, p.depth) == ('compressed', 'reliable', 3)


@pytest.mark.parametrize('override,error', [
    ('input_width:=12', ParameterException),   # not a multiple of 8 (descriptor step)
    ('depth:=0', ParameterException),          # below the descriptor range
    ('overlay_alpha:=2.0', ParameterException),
    ('device:=gpu', ValueError),               # not auto, cpu, cuda or cuda:N
    ('precision:=int8', ValueError),
    ('cameras:=[front, front]', ValueError),
])
def test_bad_overrides_are_refused_naming_the_parameter(override, error):
    with pytest.raises(error) as info:
        declared(['-p', override])
    assert override.split(':=')[0] in str(info.value)


def test_descriptors_match_the_dataclass():
    assert params.runtime_parameters() == ('overlay_alpha',)
    for f in fields(params.NodeParams):
        d = params.descriptor(f.name)
        assert d.read_only == (f.name != 'overlay_alpha'), f.name
        assert d.description, f.name
    alpha = params.descriptor('overlay_alpha').floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    width = params.descriptor('input_width').integer_range[0]
    assert (width.from_value, width.step) == (0, 8)
    assert 'fp16' in params.descriptor('precision').additional_constraints


@pytest.mark.parametrize('name,value', [('overlay_alpha', 1.01), ('overlay_alpha', float('nan')),
                                        ('input_height', 36), ('device', 'cuda:x'),
                                        ('confidence_encoding', '16UC1'),
                                        ('cameras', ('front cam',))])
def test_check_value_names_the_parameter(name, value):
    with pytest.raises(ValueError, match=f'parameter {name}'):
        params.check_value(name, value)


def test_from_values_rejects_unknown_names():
    with pytest.raises(ValueError, match='modle'):
        params.NodeParams.from_values({'modle': 'x.pt'})


def test_default_params_file_is_the_source_config():
    assert resources.default_params_file() == CONFIG


def test_missing_default_model_says_where_it_looked_and_how_to_get_one(monkeypatch):
    monkeypatch.setattr(resources, 'DEFAULT_MODEL', Path('models') / 'no_such_model.pt')
    with pytest.raises(resources.ResourceNotFoundError) as info:
        resources.default_model_path()
    message = str(info.value)
    assert str(ROOT / 'models' / 'no_such_model.pt') in message
    assert '-p model:=' in message and 'seg-train' in message


def test_floating_point_parameters_take_integers():
    p = declared(['-p', 'log_period:=0', '-p', 'diagnostics_period:=2', '-p', 'overlay_alpha:=1'])
    assert (p.log_period, p.diagnostics_period, p.overlay_alpha) == (0.0, 2.0, 1.0)
    assert all(type(v) is float for v in (p.log_period, p.diagnostics_period, p.overlay_alpha))
    assert declared(['-p', 'overlay_alpha:=0']).overlay_alpha == 0.0
    for override in ('overlay_alpha:=2', 'log_period:=-1', 'diagnostics_period:=0'):
        with pytest.raises(ValueError, match=f'parameter {override.split(":=")[0]}'):
            declared(['-p', override])
    with pytest.raises(ValueError, match='parameter overlay_alpha'):
        params.NodeParams(overlay_alpha=True)
    assert params.coerce('overlay_alpha', 1) == 1.0 and params.coerce('depth', 2) == 2


def test_max_input_pixels_bounds_frames():
    assert params.NodeParams().max_input_pixels == 4096 * 4096
    assert declared(['-p', 'max_input_pixels:=1000000']).max_input_pixels == 1_000_000
    with pytest.raises(ParameterException, match='max_input_pixels'):
        declared(['-p', 'max_input_pixels:=0'])


def test_usage_lists_every_parameter_with_default_and_description():
    text = params.usage('segmentation_node')
    assert text.startswith('usage: segmentation_node [-h] [--ros-args')
    for f in fields(params.NodeParams):
        line = next(ln for ln in text.splitlines() if ln.startswith(f'  {f.name} ('))
        assert 'default' in line, line
        assert params.descriptor(f.name).description in text, f.name
    assert "  overlay_alpha (double, default 0.5) [0..1; changeable at run time]" in text
    assert "  precision (string, default 'fp32') [fp32 | fp16 | bf16]" in text
    assert '  input_width (integer, default 0) [0..4096 step 8]' in text


def test_accelerate_choices_are_the_engines():
    from seg_perception.engines import ACCELERATIONS

    assert params.ACCELERATIONS == ACCELERATIONS
    assert params.descriptor('accelerate').read_only
