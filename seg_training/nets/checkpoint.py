"""
The model file: one self-describing format, plus the official ERFNet files as they are.

A project model file is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    format          'seg_perception.model'
    format_version  1
    arch            'erfnet' | 'espnetv2' | 'espnet' (seg_training.nets.architectures)
    arch_config     {'num_classes': int, 'encoder_only': bool} (ERFNet),
                    {'num_classes': int, 'scale': float, 'proj_planes': int} (ESPNetv2) or
                    {'num_classes': int, 'p': int, 'q': int, 'skip_image': bool,
                     'input_bgr': bool} (ESPNet)
    state_dict      the network's state_dict (no 'module.' prefix)
    classes         ClassTable.to_dict()
    normalization   {'mean': [r, g, b], 'std': [r, g, b]} applied to pixels scaled to [0, 1]
    input_size      [width, height] the network runs at
    train_config    dict (may be empty)
    metrics         dict (may be empty)
    preprocess      {'resize': 'area'|'bilinear', 'antialias': bool} (seg_training.nets.preprocess;
                    absent from older files, which get preprocess.legacy_resize)
    provenance      what the model was trained on (seg_training.nets.provenance; may be absent)
    calibration     int8 activation ranges of the onnxruntime_int8 engine
                    (seg_training.nets.calibration; may be absent; written by seg-export
                    --calibrate, dropped by writers of new weights)

Training checkpoints (``last.pt``) are model files with an extra ``training_state`` entry.

Also understood, as published by the ERFNet authors:

* ``erfnet_pretrained.pth``: a bare state_dict saved through ``DataParallel`` (keys ``module.*``),
  20 outputs (19 Cityscapes train ids, index 19 = void), inputs in [0, 1] without mean/std, run at
  1024x512.
* ``erfnet_encoder_pretrained.pth.tar``: ``{'state_dict': ...}`` of the ImageNet classifier, keys
  ``module.features.encoder.*`` (encoder only: used to initialise training, not to run).

and as published by the ESPNetv2 authors (github.com/sacmehta/EdgeNets, MIT):

* ``espnetv2_s_{0.5,1.0,1.25,1.5,2.0}_city_*.pth``: a bare state_dict (``base_net.*``,
  ``bu_dec_l*``, ...; a ``module.`` prefix is stripped), 20 outputs (19 Cityscapes train ids,
  index 19 = background), inputs in [0, 1] with the ImageNet mean/std, PIL bilinear resize,
  run at 1024x512. The width scale is read off the tensor shapes.

and as published by the ESPNet authors (github.com/sacmehta/ESPNet, ``pretrained/decoder/``, MIT):

* ``espnet_p_2_q_8_camvid.pth``: a bare state_dict (``encoder.*``, ``level3_C``, ``up_l2``, ...;
  a ``module.`` prefix is stripped) of their ``train/Model.py`` network, 12 outputs (CamVid's 11
  classes, index 11 = void), trained at 480x360 on OpenCV's BGR images normalised with a mean and
  std over CamVid train (seg_training.nets.espnet), run at 480x360.
* ``espnet_p_2_q_{3,5,8}.pth``: the same for their ``test/Model.py`` network (its 1/2 skip
  without the image), 20 outputs (19 Cityscapes train ids, index 19 = void), BGR normalised
  with their Cityscapes mean and std, OpenCV bilinear resize to 1024x512.

``p``, ``q``, the class count and the skip variant are read off the tensor shapes; the project
file keeps the authors' weights (denormals flushed) and records the conversion of their input
(RGB mean and std, ``input_bgr``). Their encoder-only ESPNet-C files (``pretrained/encoder/``)
are refused by name.

Whatever the format, float weights below the smallest normal float32 (denormals) are flushed to
zero on load: on CPUs that handle them in microcode they slow a forward pass by up to an order of
magnitude, and they change no output.
"""

from dataclasses import dataclass, field
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from seg_training.base.classes import CAMVID, ClassTable, cityscapes_table, with_void
from seg_training.base.files import atomic_path
from seg_training.nets import architectures
from seg_training.nets import espnet
from seg_training.nets.calibration import check_calibration
from seg_training.nets.espnetv2 import scale_of_state_dict
from seg_training.nets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from seg_training.nets.preprocess import (DEFAULT_RESIZE, legacy_resize, OFFICIAL_RESIZE,
                                          OPENCV_LINEAR_RESIZE, Preprocessing, Resize)
from seg_training.nets.provenance_record import (check_provenance, espnet_provenance,
                                                 espnetv2_provenance, official_provenance)

_logger = logging.getLogger(__name__)

FORMAT = 'seg_perception.model'
FORMAT_VERSION = 1
OFFICIAL_INPUT_SIZE = (1024, 512)  # (W, H) of the official Cityscapes models (both archs)
IMAGENET_ENCODER_PREFIX = 'module.features.encoder.'
ESPNETV2_HEAD = 'bu_dec_l4.merge_layer.3.weight'
ESPNET_HEAD = 'classifier.weight'            # the last transposed conv (K, K, 2, 2)
ESPNET_DOWNSAMPLER = 'level2_0.c1.conv.weight'  # under 'encoder.' in the full network
ESPNET_CAMVID_SIZE = (480, 360)              # (W, H) the authors trained and ran CamVid at
TINY = torch.finfo(torch.float32).tiny  # smallest normal float32
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
    arch: str = 'erfnet'
    arch_options: Dict = field(default_factory=dict)  # arch_config besides the class count
    calibration: Optional[Dict] = None  # int8 calibration record; None: not calibrated

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def arch_config(self) -> Dict[str, Any]:
        """Return the complete, checked ``arch_config`` of this model."""
        cfg = dict(self.arch_options, num_classes=self.num_classes)
        if self.arch == 'erfnet':
            cfg['encoder_only'] = self.encoder_only
        return architectures.normalize_config(self.arch, cfg)

    def check_input_size(self, width: int, height: int) -> None:
        """Raise ValueError unless the architecture runs at ``width`` x ``height``."""
        architectures.check_input_size(self.arch, int(height), int(width))

    def preprocessing(self, size: Optional[Tuple[int, int]] = None) -> Preprocessing:
        """Return the network-input step of this model at ``size`` (W, H) or its own size."""
        w, h = size if size else self.input_size
        norm = self.normalization
        return Preprocessing((int(w), int(h)), tuple(norm.mean), tuple(norm.std), self.resize)


def build_model(info: ModelInfo) -> torch.nn.Module:
    """Build the network ``info`` describes (random weights)."""
    return architectures.build(info.arch, info.arch_config)


def model_file_dict(model: torch.nn.Module, info: ModelInfo, extra: Optional[Dict] = None,
                    half: bool = False) -> Dict[str, Any]:
    """Return the dict that :func:`save_model` writes; ``half`` stores floats as fp16."""
    sd = {}
    for k, v in unwrap(model).state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.half() if half and v.is_floating_point() else v.clone()
    d: Dict[str, Any] = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'arch': info.arch,
        'arch_config': info.arch_config,
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
    ``torch.save`` through :func:`seg_training.base.files.atomic_path`: whole or not at all.

    The bytes go through a Python file, so a full disk is an OSError with its errno (torch's own
    file writer reports only 'unexpected pos'), which atomic_path turns into a NoSpaceError.
    """
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)


def save_model(model: torch.nn.Module, info: ModelInfo, path: PathLike,
               extra: Optional[Dict] = None, half: bool = False) -> None:
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
        raise ModelFileError(f'{source}: state_dict does not fit the network: '
                             + '; '.join(problems))
    check_finite(sd, source)


def flush_denormals(sd: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """
    ``sd`` with float values below the smallest normal float32 set to zero (logged with a count).

    Denormal weights (seen by the thousand in published ESPNet files) can make CPU convolutions
    an order of magnitude slower (11x reported for an ESPNet file; no difference measured on an
    AMD EPYC) and are too small to change any output.
    """
    out: Dict[str, torch.Tensor] = {}
    flushed = 0
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            tiny = (v != 0) & (v.abs() < TINY)
            n = int(tiny.sum())
            if n:
                v = v.masked_fill(tiny, 0.0)
                flushed += n
        out[k] = v
    if flushed:
        _logger.info('%s: %d denormal weights flushed to zero', source, flushed)
    return out


def load_state_dict_checked(module: torch.nn.Module, sd: Mapping[str, torch.Tensor],
                            source: str) -> None:
    """
    Load ``sd`` into ``module`` after :func:`check_state_dict`; dtypes follow the module.

    Denormals are flushed to zero first (:func:`flush_denormals`).
    """
    own = module.state_dict()
    check_state_dict(own, sd, source)
    sd = flush_denormals(sd, source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def detect_format(obj: Any) -> str:
    """
    Name the format of a loaded file.

    'project', 'official' (full ERFNet state_dict), 'espnetv2' (the ESPNetv2 authors'
    state_dict), 'espnet' (the ESPNet authors' full network), 'espnet-encoder' (their ESPNet-C),
    'imagenet-encoder' or 'unknown'.
    """
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
        if ESPNETV2_HEAD in stripped and any(k.startswith('base_net.') for k in stripped):
            return 'espnetv2'
        if ESPNET_HEAD in stripped and 'encoder.' + ESPNET_DOWNSAMPLER in stripped:
            return 'espnet'
        if ESPNET_DOWNSAMPLER in stripped and 'classifier.conv.weight' in stripped:
            return 'espnet-encoder'
    return 'unknown'


def load_model(path: PathLike, device: Union[str, torch.device] = 'cpu'
               ) -> Tuple[torch.nn.Module, ModelInfo]:
    """
    Load a runnable model in eval mode.

    A project file, the official ``erfnet_pretrained.pth``, an ESPNetv2 authors' Cityscapes
    file or an ESPNet authors' CamVid or Cityscapes file.
    """
    obj = read_file(path)
    kind = detect_format(obj)
    if kind == 'project':
        model, info = _from_project_dict(obj, str(path))
    elif kind == 'official':
        model, info = _from_official_state_dict(obj, str(path))
    elif kind in PUBLISHED:
        model, info = _from_published_state_dict(obj, str(path), kind)
    elif kind == 'espnet-encoder':
        raise ModelFileError(
            f'{path}: is an ESPNet-C encoder (the ESPNet authors\' pretrained/encoder/), whose '
            'class scores come at 1/8 of the input; load their full network from '
            'pretrained/decoder/ instead')
    elif kind == 'imagenet-encoder':
        raise ModelFileError(
            f'{path}: is an ImageNet-pretrained ERFNet encoder (keys {IMAGENET_ENCODER_PREFIX}*),'
            ' which has no segmentation head; use it to initialise training '
            '(seg-train --pretrained-encoder)')
    else:
        raise ModelFileError(
            f'{path}: not a seg_perception model file nor an ERFNet, ESPNetv2 or ESPNet '
            'state_dict (top-level keys: '
            f'{sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj)})')
    model.to(device).eval()
    _logger.info('loaded %s model %s (%s): %d classes, input %dx%d', info.source_format, path,
                 info.arch, info.num_classes, *info.input_size)
    return model, info


def info_from_dict(d: Mapping, source: str) -> ModelInfo:
    """Read the :class:`ModelInfo` of a project model-file dict."""
    try:
        if d.get('format_version', 0) > FORMAT_VERSION:
            raise ModelFileError(f'{source}: model file format_version {d["format_version"]} is '
                                 f'newer than this software reads ({FORMAT_VERSION})')
        arch_name = d.get('arch')
        if not isinstance(arch_name, str) or arch_name not in architectures.ARCHITECTURES:
            raise ModelFileError(f'{source}: unsupported architecture {arch_name!r}; known: '
                                 f'{sorted(architectures.ARCHITECTURES)}')
        classes = ClassTable.from_dict(d['classes'])
        arch = d['arch_config']
        if not isinstance(arch, Mapping):
            raise ModelFileError(f'{source}: arch_config is {type(arch).__name__}, not a dict')
        arch = architectures.normalize_config(arch_name, arch)
        if arch['num_classes'] != classes.num_classes:
            raise ModelFileError(f'{source}: arch_config.num_classes {arch["num_classes"]} != '
                                 f'{classes.num_classes} classes in the class table')
        w, h = (int(v) for v in d['input_size'])
        architectures.check_input_size(arch_name, h, w)
        check_input_bound(w, h, 'input_size')
        resize = (Resize.from_dict(d['preprocess']) if d.get('preprocess') is not None
                  else legacy_resize(FORMAT))
        provenance = d.get('provenance')
        if provenance is not None:
            check_provenance(provenance)  # ValueError naming the field
        calibration = d.get('calibration')
        if calibration is not None:
            check_calibration(calibration)  # ValueError naming the field
        return ModelInfo(classes=classes, input_size=(w, h),
                         normalization=Normalization.from_dict(d['normalization']),
                         encoder_only=bool(arch.get('encoder_only', False)),
                         source_format=FORMAT,
                         train_config=dict(d.get('train_config') or {}),
                         metrics=dict(d.get('metrics') or {}), resize=resize,
                         provenance=dict(provenance) if provenance is not None else None,
                         arch=arch_name, arch_options=architectures.options(arch),
                         calibration=dict(calibration) if calibration is not None else None)
    except KeyError as e:
        raise ModelFileError(f'{source}: model file lacks field {e.args[0]!r}') from None
    except ValueError as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f'{source}: {e}') from None


def _from_project_dict(d: Mapping, source: str) -> Tuple[torch.nn.Module, ModelInfo]:
    info = info_from_dict(d, source)
    model = build_model(info)
    load_state_dict_checked(model, d['state_dict'], source)
    return model, info


def official_info() -> ModelInfo:
    """Describe the official Cityscapes ERFNet: [0, 1] inputs, 1024x512, void at 19."""
    return ModelInfo(classes=cityscapes_table(with_void=True), input_size=OFFICIAL_INPUT_SIZE,
                     normalization=Normalization(), source_format='erfnet_pretrained',
                     resize=OFFICIAL_RESIZE, provenance=official_provenance())


def bare_state_dict(obj: Mapping) -> Dict[str, torch.Tensor]:
    """Return a published file's state_dict (the file, or its 'state_dict'), 'module.' off."""
    sd = obj['state_dict'] if _is_tensor_dict(obj.get('state_dict')) else obj
    return strip_prefix(sd, 'module.')


def _from_official_state_dict(obj: Mapping, source: str) -> Tuple[torch.nn.Module, ModelInfo]:
    sd = bare_state_dict(obj)
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


def espnetv2_info(sd: Mapping[str, torch.Tensor], source: str) -> ModelInfo:
    """
    Describe an ESPNetv2 authors' Cityscapes state_dict (keys without prefix).

    20 outputs are the 19 Cityscapes classes plus background (index 19, not a class), 19 outputs
    the classes alone; the inputs were resized with PIL bilinear to 1024x512 and normalised with
    the ImageNet mean and std.
    """
    scale = scale_of_state_dict(sd)
    if scale is None:
        raise ModelFileError(f'{source}: ESPNetv2 state_dict with level widths that match no '
                             f'known scale')
    num_classes = int(sd[ESPNETV2_HEAD].shape[0])
    if num_classes not in (19, 20):
        raise ModelFileError(
            f'{source}: ESPNetv2 state_dict with {num_classes} outputs; only the Cityscapes '
            'models (19 classes, + background) have a known class table')
    classes = cityscapes_table(with_void=num_classes == 20)
    proj = int(sd['bu_dec_l1.projection_layer.cbr.0.weight'].shape[0])
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    return ModelInfo(classes=classes, input_size=OFFICIAL_INPUT_SIZE,
                     normalization=Normalization(mean, std), source_format='espnetv2_authors',
                     resize=OFFICIAL_RESIZE, provenance=espnetv2_provenance(scale),
                     arch='espnetv2', arch_options={'scale': scale, 'proj_planes': proj})


def espnet_info(sd: Mapping[str, torch.Tensor], source: str) -> ModelInfo:
    """
    Describe an ESPNet authors' state_dict (keys without prefix).

    12 outputs are CamVid's 11 classes plus void (index 11), 20 outputs the 19 Cityscapes
    classes plus void (index 19); the normalisation is the authors' BGR mean and std of that
    dataset (:func:`seg_training.nets.espnet.authors_normalization`), the resize OpenCV's bilinear.
    """
    cfg = espnet.config_of_state_dict(sd)
    if cfg is None:
        raise ModelFileError(f'{source}: ESPNet state_dict whose {ESPNET_HEAD} and '
                             'conv.conv.weight fit neither of the authors\' decoders')
    try:
        espnet.check_config(cfg)  # p and q are counted from the keys: bounded before building
    except ValueError as e:
        raise ModelFileError(f'{source}: {e}') from None
    if cfg.num_classes == 12:
        classes, dataset, size = with_void(CAMVID), 'camvid', ESPNET_CAMVID_SIZE
        mean, std = espnet.authors_normalization(espnet.CAMVID_MEAN_BGR, espnet.CAMVID_STD_BGR)
    elif cfg.num_classes == 20:
        classes, dataset = cityscapes_table(with_void=True), 'cityscapes'
        size = OFFICIAL_INPUT_SIZE
        mean, std = espnet.authors_normalization(espnet.CITYSCAPES_MEAN_BGR,
                                                 espnet.CITYSCAPES_STD_BGR)
    else:
        raise ModelFileError(
            f'{source}: ESPNet state_dict with {cfg.num_classes} outputs; only the authors\' '
            'CamVid (12: 11 classes + void) and Cityscapes (20: 19 classes + void) models have a '
            'known class table and input normalisation')
    return ModelInfo(classes=classes, input_size=size, normalization=Normalization(mean, std),
                     source_format='espnet_authors', resize=OPENCV_LINEAR_RESIZE,
                     provenance=espnet_provenance(dataset, cfg.p, cfg.q), arch='espnet',
                     arch_options={'p': cfg.p, 'q': cfg.q, 'skip_image': cfg.skip_image,
                                   'input_bgr': cfg.input_bgr})


# detect_format's name of an authors' bare state_dict -> what describes it
PUBLISHED: Dict[str, Callable[[Mapping[str, torch.Tensor], str], ModelInfo]] = {
    'espnetv2': espnetv2_info, 'espnet': espnet_info}


def _from_published_state_dict(obj: Mapping, source: str, kind: str
                               ) -> Tuple[torch.nn.Module, ModelInfo]:
    """Load an authors' bare state_dict of a :data:`PUBLISHED` kind."""
    sd = bare_state_dict(obj)
    info = PUBLISHED[kind](sd, source)
    model = build_model(info)
    load_state_dict_checked(model, sd, source)
    return model, info


def load_imagenet_encoder(path: PathLike, model: torch.nn.Module) -> None:
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
    net = unwrap(model)
    if architectures.config_of(net)[0] != 'erfnet':
        raise ModelFileError(f'{path}: the ImageNet ERFNet encoder initialises ERFNet only')
    encoder = net.encoder
    body = {k: v for k, v in encoder.state_dict().items() if not k.startswith('output_conv.')}
    check_state_dict(body, enc, str(path))
    encoder.load_state_dict({k: v.to(body[k].dtype) for k, v in enc.items()}, strict=False)
    _logger.info('initialised the encoder from ImageNet-pretrained %s', path)


def state_hash(model: torch.nn.Module) -> str:
    """sha256 of a module's state_dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f'{name}:{v.dtype}:{tuple(v.shape)};'.encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
