"""
The architectures a model file can name, and what the tools need to know about each.

A model file's ``arch`` picks one of :data:`ARCHITECTURES`; its ``arch_config`` holds the
architecture's own settings (``num_classes`` always; ERFNet ``encoder_only``; ESPNetv2 ``scale``
and ``proj_planes``; ESPNet ``p``, ``q``, ``skip_image`` and ``input_bgr``). Everything that
differs between architectures and matters outside the network itself lives here: how to build
one, the stride its input sizes must be multiples of, which parameters are the class head (one
row per class; transfer learning copies rows by class name) and which are the encoder (frozen or
slowed down when fine-tuning). ESPNet (v1) runs the
authors' published models in every tool but seg-train does not train it (its ``--arch``
choices leave it out, ``--init`` refuses it): its whole decoder is sized by the class count, so
no head can be swapped for another class set.
"""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

from torch import nn

from seg_training.nets import espnet, espnetv2, model as erfnet


@dataclass(frozen=True)
class Architecture:
    """What the tools need to know about one network family."""

    name: str
    stride: int                       # input height and width must be multiples of it
    head_keys: Mapping[str, int]      # parameter -> dimension that indexes the class
    encoder_prefix: str               # parameters of the encoder (freeze, lr scale)
    encoder_head_prefix: str = ''     # ERFNet: the encoder-only head, unused after stage one
    two_stage: bool = False           # an encoder-only first stage exists
    label: str = ''                   # the name in messages


ARCHITECTURES: Dict[str, Architecture] = {
    'erfnet': Architecture(
        'erfnet', erfnet.STRIDE,
        head_keys={'encoder.output_conv.weight': 0,   # Conv2d (K, 128, 1, 1)
                   'encoder.output_conv.bias': 0,     # (K,)
                   'decoder.output_conv.weight': 1,   # ConvTranspose2d (16, K, 2, 2)
                   'decoder.output_conv.bias': 0},    # (K,)
        encoder_prefix='encoder.', encoder_head_prefix='encoder.output_conv.', two_stage=True,
        label='ERFNet'),
    'espnetv2': Architecture(
        'espnetv2', espnetv2.STRIDE,
        head_keys={'bu_dec_l4.merge_layer.3.weight': 0,  # Conv2d (K, proj, 1, 1)
                   'bu_dec_l4.merge_layer.3.bias': 0},   # (K,)
        encoder_prefix='base_net.', label='ESPNetv2'),
    'espnet': Architecture(
        'espnet', espnet.STRIDE,
        head_keys={'classifier.weight': 1},  # ConvTranspose2d (K, K, 2, 2)
        encoder_prefix='encoder.', label='ESPNet'),
}
FIELDS = {'erfnet': {'num_classes', 'encoder_only'},
          'espnetv2': {'num_classes', 'scale', 'proj_planes'},
          'espnet': {'num_classes', 'p', 'q', 'skip_image', 'input_bgr'}}


def get(name: str) -> Architecture:
    """Return the architecture called ``name``; ValueError lists the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f'unsupported architecture {name!r}; known: '
                         f'{sorted(ARCHITECTURES)}') from None


def normalize_config(name: str, config: Mapping[str, Any]) -> Dict[str, Any]:
    """
    Check an ``arch_config`` and return it with every field typed and filled in.

    ValueError names the field. ``num_classes`` is required; the rest have defaults.
    """
    get(name)
    known = FIELDS[name]
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f'arch_config of {name} has unknown fields {unknown}')
    try:
        n = config['num_classes']
    except KeyError:
        raise ValueError('arch_config lacks field num_classes') from None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 255:
        raise ValueError(f'arch_config.num_classes must be an integer in 1..255, got {n!r}')
    if name == 'erfnet':
        only = config.get('encoder_only', False)
        if not isinstance(only, bool):
            raise ValueError(f'arch_config.encoder_only must be true or false, got {only!r}')
        return {'num_classes': n, 'encoder_only': only}
    if name == 'espnet':
        defaults = espnet.ESPNetConfig(n)
        cfg = espnet.ESPNetConfig(n, config.get('p', defaults.p), config.get('q', defaults.q),
                                  config.get('skip_image', defaults.skip_image),
                                  config.get('input_bgr', defaults.input_bgr))
        try:
            espnet.check_config(cfg)
        except ValueError as e:
            raise ValueError(f'arch_config: {e}') from None
        return {'num_classes': n, 'p': cfg.p, 'q': cfg.q, 'skip_image': cfg.skip_image,
                'input_bgr': cfg.input_bgr}
    scale = config.get('scale', 2.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
            float(scale) not in espnetv2.LEVEL_CHANNELS:
        raise ValueError(f'arch_config.scale must be one of {sorted(espnetv2.LEVEL_CHANNELS)}, '
                         f'got {scale!r}')
    proj = config.get('proj_planes')
    if proj is None:
        proj = espnetv2.ESPNetv2Config(n).pyramid_width()
    if isinstance(proj, bool) or not isinstance(proj, int) or not 1 <= proj <= 256:
        raise ValueError(f'arch_config.proj_planes must be an integer in 1..256, got {proj!r}')
    return {'num_classes': n, 'scale': float(scale), 'proj_planes': proj}


def options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Return an ``arch_config`` without the class count and ERFNet's encoder_only."""
    return {k: v for k, v in config.items() if k not in ('num_classes', 'encoder_only')}


def build(name: str, config: Mapping[str, Any]) -> nn.Module:
    """Build a network of architecture ``name`` with random weights."""
    cfg = normalize_config(name, config)
    if name == 'erfnet':
        return erfnet.ERFNet(erfnet.ERFNetConfig(num_classes=cfg['num_classes'],
                                                 encoder_only=cfg['encoder_only']))
    if name == 'espnet':
        return espnet.ESPNet(espnet.ESPNetConfig(**cfg))
    return espnetv2.ESPNetv2(espnetv2.ESPNetv2Config(cfg['num_classes'], cfg['scale'],
                                                     cfg['proj_planes']))


def config_of(net: nn.Module) -> Tuple[str, Dict[str, Any]]:
    """(architecture name, arch_config) of a network built by :func:`build`."""
    if isinstance(net, espnet.ESPNet):
        e = net.cfg
        return 'espnet', {'num_classes': e.num_classes, 'p': e.p, 'q': e.q,
                          'skip_image': e.skip_image, 'input_bgr': e.input_bgr}
    if isinstance(net, espnetv2.ESPNetv2):
        c = net.cfg
        return 'espnetv2', {'num_classes': c.num_classes, 'scale': c.scale,
                            'proj_planes': c.pyramid_width()}
    if isinstance(net, erfnet.ERFNet):
        return 'erfnet', {'num_classes': net.cfg.num_classes,
                          'encoder_only': net.cfg.encoder_only}
    raise TypeError(f'not a network of this project: {type(net).__name__}')


def check_input_size(name: str, height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of the stride."""
    arch = get(name)
    erfnet.check_multiple(arch.label, arch.stride, height, width)
