"""
The model file: one self-describing format, plus the official ERFNet files as they are.

A project model file is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    format          'seg_perception.model'
    format_version  1
    arch            'erfnet'
    arch_config     {'num_classes': int, 'encoder_only': bool}
    state_dict      ERFNet state_dict (no 'module.' prefix)
    classes         ClassTable.to_dict()
    normalization   {'mean': [r, g, b], 'std': [r, g, b]} applied to pixels scaled to [0, 1]
    input_size      [width, height] the network runs at
    train_config    dict (may be empty)
    metrics         dict (may be empty)
    preprocess      {'resize': 'area'|'bilinear', 'antialias': bool} (seg_training.preprocess;
                    absent from older files, which get preprocess.legacy_resize)
    provenance      what the model was trained on (seg_training.provenance; may be absent)

Training checkpoints (``last.pt``) are model files with an extra ``training_state`` entry.

Also understood, as published by the ERFNet authors:

* ``erfnet_pretrained.pth``: a bare state_dict saved through ``DataParallel`` (keys ``module.*``),
  20 outputs (19 Cityscapes train ids, index 19 = void), inputs in [0, 1] without mean/std, run at
  1024x512.
* ``erfnet_encoder_pretrained.pth.tar``: ``{'state_dict': ...}`` of the ImageNet classifier, keys
  ``module.features.encoder.*`` (encoder only: used to initialise training, not to run).
"""

from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from seg_training.classes import ClassTable, cityscapes_table
from seg_training.files import atomic_path
from seg_training.model import ERFNet, ERFNetConfig, check_input_size
from seg_training.preprocess import (DEFAULT_RESIZE, legacy_resize, OFFICIAL_RESIZE,
                                     Preprocessing, Resize)
from seg_training.provenance import check_provenance

_logger = logging.getLogger(__name__)

FORMAT = 'seg_perception.model'
FORMAT_VERSION = 1
OFFICIAL_INPUT_SIZE = (1024, 512)  # (W, H) of the official Cityscapes model
IMAGENET_ENCODER_PREFIX = 'module.features.encoder.'
PathLike = Union[str, os.PathLike]
MAX_INPUT_SIDE = 8192               # network input width or height a model file may ask for
MAX_INPUT_PIXELS = 32 * 2 ** 20     # and width x height (8192x4096)
MAX_NAMED_TENSORS = 10              # non-finite tensors named in one error


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to RGB pixels scaled to [0, 1]."""

    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> Dict:
        return {'mean': list(self.mean), 'std': list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping) -> 'Normalization':
        return cls(tuple(float(v) for v in d['mean']), tuple(float(v) for v in d['std']))


@dataclass(frozen=True)
class ModelInfo:
    """Everything about a model besides its weights."""

    classes: ClassTable
    input_size: Tuple[int, int]  # (W, H) network input
    normalization: Normalization = Normalization()
    encoder_only: bool = False
    source_format: str = FORMAT
    train_config: Dict = field(default_factory=dict)
    metrics: Dict = field(default_factory=dict)
    resize: Resize = DEFAULT_RESIZE
    provenance: Optional[Dict] = None  # None: not recorded

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def preprocessing(self, size: Optional[Tuple[int, int]] = None) -> Preprocessing:
        """Return the network-input step of this model at ``size`` (W, H) or its own size."""
        w, h = size if size else self.input_size
        norm = self.normalization
        return Preprocessing((int(w), int(h)), tuple(norm.mean), tuple(norm.std), self.resize)


def build_model(info: ModelInfo) -> ERFNet:
    """Build an ERFNet with the architecture ``info`` describes (random weights)."""
    return ERFNet(ERFNetConfig(num_classes=info.num_classes, encoder_only=info.encoder_only))


def model_file_dict(model: ERFNet, info: ModelInfo, extra: Optional[Dict] = None,
                    half: bool = False) -> Dict[str, Any]:
    """Return the dict that :func:`save_model` writes; ``half`` stores floats as fp16."""
    sd = {}
    for k, v in unwrap(model).state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.half() if half and v.is_floating_point() else v.clone()
    d: Dict[str, Any] = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'arch': 'erfnet',
        'arch_config': {'num_classes': info.num_classes, 'encoder_only': info.encoder_only},
        'state_dict': sd,
        'classes': info.classes.to_dict(),
        'normalization': info.normalization.to_dict(),
        'input_size': list(info.input_size),
        'train_config': dict(info.train_config),
        'metrics': dict(info.metrics),
        'preprocess': info.resize.to_dict(),
    }
    if info.provenance is not None:
        d['provenance'] = dict(info.provenance)
    if extra:
        d.update(extra)
    return d


def atomic_save(obj: Any, path: PathLike) -> None:
    """
    ``torch.save`` through :func:`seg_training.files.atomic_path`: whole or not at all.

    The bytes go through a Python file, so a full disk is an OSError with its errno (torch's own
    file writer reports only 'unexpected pos'), which atomic_path turns into a NoSpaceError.
    """
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)


def save_model(model: ERFNet, info: ModelInfo, path: PathLike, extra: Optional[Dict] = None,
               half: bool = False) -> None:
    """Write a project model file atomically."""
    atomic_save(model_file_dict(model, info, extra, half), path)


def read_file(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    check_readable_file(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ModelFileError(f'{path}: cannot be loaded as a weights-only torch file: {e}') from e


def check_readable_file(path: Path) -> None:
    """Raise ModelFileError saying why ``path`` is no model file: missing, a folder, empty."""
    if path.is_dir():
        raise ModelFileError(f'{path}: is a directory, not a model file')
    if not path.exists():
        raise ModelFileError(f'{path}: model file not found')
    if not path.is_file():
        raise ModelFileError(f'{path}: is not a regular file (a device, pipe or socket)')
    if path.stat().st_size == 0:
        raise ModelFileError(f'{path}: is empty (0 bytes); an interrupted copy or download?')


def check_finite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ModelFileError naming every floating-point tensor of ``sd`` with a NaN or Inf."""
    bad = []
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            nan = int(torch.isnan(v).sum())
            inf = int(torch.isinf(v).sum())
            if nan or inf:
                bad.append(f'{k} ({nan} NaN, {inf} Inf of {v.numel()})')
    if bad:
        shown = ', '.join(bad[:MAX_NAMED_TENSORS])
        more = f' and {len(bad) - MAX_NAMED_TENSORS} more' if len(bad) > MAX_NAMED_TENSORS else ''
        raise ModelFileError(f'{source}: weights are not finite in {len(bad)} tensors: '
                             f'{shown}{more}; the model would output garbage (diverged '
                             'training or a damaged file)')


def check_input_bound(width: int, height: int, source: str = 'input size') -> None:
    """Raise ValueError for a network input beyond MAX_INPUT_SIDE per side or MAX_INPUT_PIXELS."""
    if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        raise ValueError(f'{source}: network input {width}x{height} exceeds the bound of '
                         f'{MAX_INPUT_SIDE} pixels per side and {MAX_INPUT_PIXELS // 2 ** 20} '
                         'MP in all')


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the model inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, 'module') and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Keys without ``prefix`` where every key has it; unchanged otherwise."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def check_state_dict(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
                     source: str) -> None:
    """
    Raise ModelFileError naming every unknown, missing or mis-shaped key of ``sd``.

    Only ``num_batches_tracked`` buffers (absent from files saved by PyTorch < 0.4) may be missing.
    A state_dict that fits must also be finite (:func:`check_finite`).
    """
    unknown = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd and not k.endswith('num_batches_tracked'))
    shapes = sorted(f'{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}'
                    for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape))
    problems = []
    if unknown:
        problems.append(f'unknown keys {unknown}')
    if missing:
        problems.append(f'missing keys {missing}')
    if shapes:
        problems.append(f'mis-shaped keys {shapes}')
    if problems:
        raise ModelFileError(f'{source}: state_dict does not fit ERFNet: ' + '; '.join(problems))
    check_finite(sd, source)


def load_state_dict_checked(module: torch.nn.Module, sd: Mapping[str, torch.Tensor],
                            source: str) -> None:
    """Load ``sd`` into ``module`` after :func:`check_state_dict`; dtypes follow the module."""
    own = module.state_dict()
    check_state_dict(own, sd, source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def detect_format(obj: Any) -> str:
    """'project', 'official' (full ERFNet state_dict) or 'imagenet-encoder'."""
    if isinstance(obj, Mapping) and obj.get('format') == FORMAT:
        return 'project'
    sd = obj.get('state_dict') if isinstance(obj, Mapping) and 'state_dict' in obj else obj
    if _is_tensor_dict(sd):
        keys = list(sd)
        if any(k.startswith(IMAGENET_ENCODER_PREFIX) for k in keys):
            return 'imagenet-encoder'
        stripped = strip_prefix(sd, 'module.')
        if any(k.startswith('decoder.') for k in stripped):
            return 'official'
    return 'unknown'


def load_model(path: PathLike, device: Union[str, torch.device] = 'cpu'
               ) -> Tuple[ERFNet, ModelInfo]:
    """Load a runnable model (project file or official ``erfnet_pretrained.pth``) in eval mode."""
    obj = read_file(path)
    kind = detect_format(obj)
    if kind == 'project':
        model, info = _from_project_dict(obj, str(path))
    elif kind == 'official':
        model, info = _from_official_state_dict(obj, str(path))
    elif kind == 'imagenet-encoder':
        raise ModelFileError(
            f'{path}: is an ImageNet-pretrained ERFNet encoder (keys {IMAGENET_ENCODER_PREFIX}*),'
            ' which has no segmentation head; use it to initialise training '
            '(seg-train --pretrained-encoder)')
    else:
        raise ModelFileError(
            f'{path}: not a seg_perception model file nor an ERFNet state_dict '
            f'(top-level keys: {sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj)})')
    model.to(device).eval()
    _logger.info('loaded %s model %s: %d classes, input %dx%d', info.source_format, path,
                 info.num_classes, *info.input_size)
    return model, info


def info_from_dict(d: Mapping, source: str) -> ModelInfo:
    """Read the :class:`ModelInfo` of a project model-file dict."""
    try:
        if d.get('format_version', 0) > FORMAT_VERSION:
            raise ModelFileError(f'{source}: model file format_version {d["format_version"]} is '
                                 f'newer than this software reads ({FORMAT_VERSION})')
        if d.get('arch') != 'erfnet':
            raise ModelFileError(f'{source}: unsupported architecture {d.get("arch")!r}')
        classes = ClassTable.from_dict(d['classes'])
        arch = d['arch_config']
        if int(arch['num_classes']) != classes.num_classes:
            raise ModelFileError(f'{source}: arch_config.num_classes {arch["num_classes"]} != '
                                 f'{classes.num_classes} classes in the class table')
        w, h = (int(v) for v in d['input_size'])
        check_input_size(h, w)
        check_input_bound(w, h, 'input_size')
        resize = (Resize.from_dict(d['preprocess']) if d.get('preprocess') is not None
                  else legacy_resize(FORMAT))
        provenance = d.get('provenance')
        if provenance is not None:
            check_provenance(provenance)  # ValueError naming the field
        return ModelInfo(classes=classes, input_size=(w, h),
                         normalization=Normalization.from_dict(d['normalization']),
                         encoder_only=bool(arch.get('encoder_only', False)),
                         source_format=FORMAT,
                         train_config=dict(d.get('train_config') or {}),
                         metrics=dict(d.get('metrics') or {}), resize=resize,
                         provenance=dict(provenance) if provenance is not None else None)
    except KeyError as e:
        raise ModelFileError(f'{source}: model file lacks field {e.args[0]!r}') from None
    except ValueError as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f'{source}: {e}') from None


def _from_project_dict(d: Mapping, source: str) -> Tuple[ERFNet, ModelInfo]:
    info = info_from_dict(d, source)
    model = build_model(info)
    load_state_dict_checked(model, d['state_dict'], source)
    return model, info


def official_info() -> ModelInfo:
    """Describe the official Cityscapes ERFNet: [0, 1] inputs, 1024x512, void at 19."""
    from seg_training.provenance import official_provenance

    return ModelInfo(classes=cityscapes_table(with_void=True), input_size=OFFICIAL_INPUT_SIZE,
                     normalization=Normalization(), source_format='erfnet_pretrained',
                     resize=OFFICIAL_RESIZE, provenance=official_provenance())


def _from_official_state_dict(obj: Mapping, source: str) -> Tuple[ERFNet, ModelInfo]:
    sd = obj['state_dict'] if 'state_dict' in obj and _is_tensor_dict(obj['state_dict']) else obj
    sd = strip_prefix(sd, 'module.')
    head = sd.get('decoder.output_conv.weight')
    if head is None:
        raise ModelFileError(f'{source}: ERFNet state_dict lacks decoder.output_conv.weight')
    num_classes = int(head.shape[1])  # ConvTranspose2d weight is (in, out, kH, kW)
    info = official_info()
    if num_classes != info.num_classes:
        raise ModelFileError(
            f'{source}: official-format ERFNet with {num_classes} outputs; the official '
            f'Cityscapes model has {info.num_classes} (19 classes + void). Convert it to a '
            'project model file with its own class table (seg-train --init ... --epochs 0).')
    model = build_model(info)
    load_state_dict_checked(model, sd, source)
    return model, info


def load_imagenet_encoder(path: PathLike, model: ERFNet) -> None:
    """Copy the official ImageNet-pretrained encoder into ``model.encoder`` (head untouched)."""
    obj = read_file(path)
    sd = obj.get('state_dict', obj) if isinstance(obj, Mapping) else None
    if detect_format(obj) != 'imagenet-encoder' or sd is None:
        raise ModelFileError(f'{path}: not an ERFNet ImageNet encoder file '
                             f'(expected keys {IMAGENET_ENCODER_PREFIX}*)')
    enc = {k[len(IMAGENET_ENCODER_PREFIX):]: v for k, v in sd.items()
           if k.startswith(IMAGENET_ENCODER_PREFIX)}
    # The classifier head (module.classifier.*) is dropped on purpose; the encoder's own
    # output_conv is not in the file and keeps its fresh initialisation.
    encoder = unwrap(model).encoder
    body = {k: v for k, v in encoder.state_dict().items() if not k.startswith('output_conv.')}
    check_state_dict(body, enc, str(path))
    encoder.load_state_dict({k: v.to(body[k].dtype) for k, v in enc.items()}, strict=False)
    _logger.info('initialised the encoder from ImageNet-pretrained %s', path)
