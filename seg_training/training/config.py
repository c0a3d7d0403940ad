"""
Training configuration: defaults from ``config/train.yaml``, a user YAML, then CLI overrides.

The dataclasses below are the schema and hold the same defaults as ``config/train.yaml`` (a test
keeps the two in step). A YAML file may set any subset of the keys; an unknown key or a value of
the wrong type is an error naming the file and the key. The merged configuration is written next
to the training outputs as ``config.yaml`` and stored in every checkpoint.
"""

import dataclasses
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from seg_training.base.dataset_kinds import DATASETS, UNLABELLED_DATASETS
from seg_training.base.files import atomic_path
from seg_training.base.yaml_reader import ConfigError, read_yaml_file
from seg_training.datasets.transforms import AugmentConfig

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# Dataset layouts: this project's two (data.py) and other tools' (formats.py).
TRAIN_DATASETS = DATASETS + UNLABELLED_DATASETS
LOSSES = ('ce', 'focal', 'dice', 'ce_dice')
OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('single', 'two-stage')
ARCHS = ('erfnet', 'espnetv2')
ESPNETV2_SCALES = (0.5, 1.0, 1.25, 1.5, 2.0)
CLASS_WEIGHTINGS = ('enet', 'none')
AMP_DTYPES = ('bf16', 'fp16')


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the output folder."""

    dataset: str = 'folder'
    data_root: Optional[str] = None
    output_dir: Optional[str] = None
    train_split: str = 'train'
    val_split: str = 'val'
    # Validation from another labelled dataset (null: dataset / data_root); required when the
    # training frames have no labels (dataset: images).
    val_dataset: Optional[str] = None
    val_data_root: Optional[str] = None
    # More roots of the same dataset kind and class names whose training split joins the
    # main one (e.g. source and target domains trained together); validation uses data_root.
    extra_train_roots: List[str] = field(default_factory=list)
    # Initialisation: a project model file or the official erfnet_pretrained.pth, and/or the
    # official ImageNet encoder file.
    init: Optional[str] = None
    pretrained_encoder: Optional[str] = None
    # Network: erfnet | espnetv2 (null: the --init model's, else erfnet); arch_scale is the
    # ESPNetv2 width trained from scratch (an --init file brings its own).
    arch: Optional[str] = None
    arch_scale: float = 2.0
    # --init from other classes: YAML {class: [init model classes]}
    # (seg_training.datasets.class_map).
    init_class_map: Optional[str] = None
    # Knowledge distillation (seg_training.training.distill): a teacher model file, the
    # temperature of its soft targets, the weight a of loss = (1 - a) CE + a KD where labels
    # exist, and an optional YAML map of student classes to the teacher classes summed into them.
    teacher: Optional[str] = None
    teacher_class_map: Optional[str] = None
    kd_temperature: float = 2.0
    kd_weight: float = 0.5
    # Reference recipe (Romera et al.): Adam, poly decay, ENet class weights, 150 epochs.
    epochs: int = 150
    batch_size: int = 6
    size: List[int] = field(default_factory=lambda: [512, 256])  # network input [W, H]
    optimizer: str = 'adam'      # adam (the reference) | adamw (decoupled decay) | sgd
    lr: float = 5e-4
    weight_decay: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9        # sgd only (Nesterov)
    poly_power: float = 0.9
    loss: str = 'ce'
    focal_gamma: float = 2.0
    dice_weight: float = 1.0     # ce_dice: cross-entropy + dice_weight * Dice
    class_weighting: str = 'enet'
    class_weight_c: float = 1.10
    schedule: str = 'single'
    # Two-stage schedule: epochs of the encoder stage (null: half of ``epochs``).
    encoder_epochs: Optional[int] = None
    freeze_encoder: bool = False
    encoder_lr_scale: float = 1.0
    patience: int = 0            # early stopping after this many epochs without a better val mIoU
    workers: int = 2
    amp: bool = False            # CUDA only
    amp_dtype: str = 'bf16'
    channels_last: bool = True   # CUDA only
    device: str = 'auto'
    seed: int = 0
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    # Input normalisation (pixels in [0, 1]); null: the --init model's, else ImageNet's.
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    val_panels: int = 4          # validation samples drawn in the sample-panel plot
    plots: bool = True           # write plots/ (curves, per-class IoU, confusion, samples)
    plots_every_epoch: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (lists, numbers, strings, None): safe for YAML and weights-only files."""
        return dataclasses.asdict(self)


def default_config_path() -> Optional[Path]:
    """``config/train.yaml`` of the source tree or of the installed ROS package, if found."""
    here = Path(__file__).resolve().parents[1] / 'config' / 'train.yaml'
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        shared = Path(get_package_share_directory('seg_perception')) / 'config' / 'train.yaml'
        return shared if shared.is_file() else None
    except Exception:  # not installed as a ROS package
        return None


def _check_value(name: str, value: Any, default: Any, source: str) -> Any:
    """``value`` converted to the type of ``default``; ConfigError otherwise."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f'{source}: {name} must be true or false, got {value!r}')
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{source}: {name} must be an integer, got {value!r}')
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{source}: {name} must be a number, got {value!r}')
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f'{source}: {name} must be a string, got {value!r}')
        return value
    if isinstance(default, list) and not default:  # a list of any length of strings
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{source}: {name} must be a list of strings, got {value!r}')
        return list(value)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f'{source}: {name} must be a list of {len(default)} values, '
                              f'got {value!r}')
        return [_check_value(f'{name}[{i}]', v, d, source)
                for i, (v, d) in enumerate(zip(value, default))]
    return value


# Fields whose default is None but which take a value of a known shape.
_OPTIONAL_TYPES: Dict[str, Any] = {
    'encoder_epochs': 0, 'max_train_samples': 0, 'max_val_samples': 0,
    'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0],
    'init': '', 'pretrained_encoder': '', 'data_root': '', 'output_dir': '',
    'val_dataset': '', 'val_data_root': '', 'teacher': '', 'teacher_class_map': '',
    'arch': '', 'init_class_map': '',
}


def _merge(obj: Any, values: Mapping[str, Any], source: str, prefix: str = '') -> None:
    """Set the fields of dataclass ``obj`` from ``values`` (nested dicts for nested configs)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f'{source}: {prefix.rstrip(".") or "the file"} must be a mapping, '
                          f'got {type(values).__name__}')
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        name = f'{prefix}{key}'
        if key not in known:
            raise ConfigError(f'{source}: unknown key {name!r}; known keys: {sorted(known)}')
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value or {}, source, f'{name}.')
            continue
        if value is None and key not in _OPTIONAL_TYPES:
            raise ConfigError(f'{source}: {name} cannot be null')
        default = _OPTIONAL_TYPES.get(key, current) if current is None else current
        setattr(obj, key, _check_value(name, value, default, source))


def read_yaml(path: PathLike) -> Dict[str, Any]:
    """Read a YAML mapping from ``path`` (:func:`read_yaml_file`); errors name the file."""
    data = read_yaml_file(path, 'config file')
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping of config keys, got {type(data).__name__}')
    return data


def load_config(path: Optional[PathLike] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """
    Defaults (``config/train.yaml`` when found), then the YAML at ``path``, then ``overrides``.

    ``overrides`` uses the same keys as the YAML (nested dicts for ``augment``).
    """
    cfg = TrainConfig()
    default = default_config_path()
    if default is not None:
        _merge(cfg, read_yaml(default), str(default))
    if path is not None:
        _merge(cfg, read_yaml(path), str(path))
    if overrides:
        _merge(cfg, overrides, 'command line')
    validate(cfg)
    return cfg


def config_from_dict(d: Mapping[str, Any], source: str) -> TrainConfig:
    """Build a :class:`TrainConfig` from a saved dict (e.g. a checkpoint's ``training_state``)."""
    cfg = TrainConfig()
    _merge(cfg, d, source)
    validate(cfg, source)
    return cfg


def apply_overrides(cfg: TrainConfig, values: Mapping[str, Any], source: str) -> TrainConfig:
    """Return a copy of ``cfg`` with ``values`` set (nested dicts for ``augment``), validated."""
    out = config_from_dict(cfg.to_dict(), source)
    _merge(out, values, source)
    validate(out, source)
    return out


def _choice(value: str, choices, name: str, source: str) -> None:
    if value not in choices:
        raise ConfigError(f'{source}: {name} must be one of {list(choices)}, got {value!r}')


def validate(cfg: TrainConfig, source: str = 'config') -> None:
    """Raise ConfigError for values no training run can use."""
    _choice(cfg.dataset, TRAIN_DATASETS, 'dataset', source)
    _validate_distillation(cfg, source)
    _choice(cfg.loss, LOSSES, 'loss', source)
    _choice(cfg.optimizer, OPTIMIZERS, 'optimizer', source)
    if cfg.dice_weight < 0 or not 0 <= cfg.momentum < 1:
        raise ConfigError(f'{source}: dice_weight must be >= 0 and momentum in [0, 1)')
    _choice(cfg.schedule, SCHEDULES, 'schedule', source)
    if cfg.arch is not None:
        _choice(cfg.arch, ARCHS, 'arch', source)
    _choice(cfg.arch_scale, ESPNETV2_SCALES, 'arch_scale', source)
    if cfg.arch == 'espnetv2' and (cfg.schedule == 'two-stage' or cfg.pretrained_encoder):
        raise ConfigError(f'{source}: the two-stage schedule and pretrained_encoder are ERFNet\'s '
                          '(its encoder-only stage and ImageNet encoder); ESPNetv2 trains whole')
    _choice(cfg.class_weighting, CLASS_WEIGHTINGS, 'class_weighting', source)
    _choice(cfg.amp_dtype, AMP_DTYPES, 'amp_dtype', source)
    w, h = cfg.size
    if w <= 0 or h <= 0 or w % 8 or h % 8:
        raise ConfigError(f'{source}: size {w}x{h} must be positive multiples of 8 (WxH)')
    if cfg.epochs < 0:
        raise ConfigError(f'{source}: epochs must be >= 0, got {cfg.epochs}')
    if cfg.batch_size < 1:
        raise ConfigError(f'{source}: batch_size must be >= 1, got {cfg.batch_size}')
    if cfg.lr <= 0:
        raise ConfigError(f'{source}: lr must be positive, got {cfg.lr}')
    if cfg.workers < 0 or cfg.patience < 0:
        raise ConfigError(f'{source}: workers and patience must be >= 0')
    if not 0.0 <= cfg.encoder_lr_scale:
        raise ConfigError(f'{source}: encoder_lr_scale must be >= 0, got {cfg.encoder_lr_scale}')
    if cfg.freeze_encoder and cfg.encoder_lr_scale != 1.0:
        raise ConfigError(f'{source}: freeze_encoder and encoder_lr_scale exclude each other')
    if cfg.freeze_encoder and cfg.schedule == 'two-stage':
        raise ConfigError(f'{source}: the two-stage schedule trains the encoder first; '
                          'it cannot be combined with freeze_encoder')
    if cfg.init_class_map and not cfg.init:
        raise ConfigError(f'{source}: init_class_map maps the classes of --init; there is none')
    if cfg.init and cfg.pretrained_encoder:
        raise ConfigError(f'{source}: init and pretrained_encoder exclude each other (--init '
                          'already sets the encoder)')
    if cfg.schedule == 'two-stage' and cfg.epochs > 0 and stage_epochs(cfg)['full'] < 1:
        raise ConfigError(f'{source}: the two-stage schedule needs at least one epoch for the '
                          f'whole network (epochs {cfg.epochs}, encoder_epochs '
                          f'{cfg.encoder_epochs})')
    if cfg.encoder_epochs is not None and not 0 <= cfg.encoder_epochs <= cfg.epochs:
        raise ConfigError(f'{source}: encoder_epochs must be in 0..epochs ({cfg.epochs}), '
                          f'got {cfg.encoder_epochs}')
    for name in ('max_train_samples', 'max_val_samples'):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f'{source}: {name} must be >= 1, got {v}')
    if cfg.std is not None and any(s <= 0 for s in cfg.std):
        raise ConfigError(f'{source}: std must be positive, got {cfg.std}')
    a = cfg.augment
    if not 0 < a.scale_min <= a.scale_max:
        raise ConfigError(f'{source}: augment.scale_min/scale_max must satisfy '
                          f'0 < min <= max, got {a.scale_min}, {a.scale_max}')
    for name in ('hflip_p', 'rotate_p', 'blur_p', 'color_p'):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise ConfigError(f'{source}: augment.{name} must be a probability in [0, 1]')


def _validate_distillation(cfg: TrainConfig, source: str) -> None:
    """Raise ConfigError for distillation and validation-set settings no run can use."""
    if cfg.val_dataset is not None:
        _choice(cfg.val_dataset, DATASETS, 'val_dataset (a labelled layout)', source)
    if cfg.dataset in UNLABELLED_DATASETS:
        if not cfg.teacher:
            raise ConfigError(f'{source}: dataset {cfg.dataset} has no labels; it trains by '
                              'distillation alone: give --teacher MODEL')
        if cfg.val_dataset is None or cfg.val_data_root is None:
            raise ConfigError(f'{source}: dataset {cfg.dataset} has no labels to validate on: '
                              'give --val-dataset KIND --val-data-root DIR (a labelled set with '
                              'the classes to learn)')
    if cfg.teacher_class_map and not cfg.teacher:
        raise ConfigError(f'{source}: teacher_class_map needs a teacher (--teacher MODEL)')
    if not cfg.kd_temperature > 0:
        raise ConfigError(f'{source}: kd_temperature must be positive, got {cfg.kd_temperature}')
    if not 0.0 <= cfg.kd_weight <= 1.0:
        raise ConfigError(f'{source}: kd_weight must be in [0, 1], got {cfg.kd_weight}')


def stage_epochs(cfg: TrainConfig) -> Dict[str, int]:
    """Epochs per stage: ``{'encoder': n, 'full': m}`` (``encoder`` 0 for the single schedule)."""
    if cfg.schedule == 'single':
        return {'encoder': 0, 'full': cfg.epochs}
    enc = cfg.encoder_epochs if cfg.encoder_epochs is not None else cfg.epochs // 2
    return {'encoder': enc, 'full': cfg.epochs - enc}


def save_config(cfg: TrainConfig, path: PathLike) -> None:
    """Write the merged config as YAML (what ``--config`` reads back)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding='utf-8')
