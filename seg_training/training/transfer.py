"""
Initialising a model from another one of the same architecture (project or published files).

Everything but the class heads (ERFNet: ``encoder.output_conv`` and ``decoder.output_conv``;
ESPNetv2: ``bu_dec_l4.merge_layer.3``, see :mod:`seg_training.nets.architectures`) is copied as is.
When the class sets are equal the heads are copied too; otherwise the new heads keep their
fresh initialisation except for the rows of target classes that exist in the source by name (or
by an alias of :data:`seg_training.base.classes.CLASS_ALIASES`, e.g. ``vehicle`` from ``car``).
"""

from dataclasses import dataclass, field
import logging
import os
from typing import Dict, Mapping, Optional, Union

import torch

from seg_training.base.classes import ClassTable, cityscapes_table
from seg_training.datasets.class_map import build_class_map, match_classes
from seg_training.nets import architectures
from seg_training.nets.checkpoint import (bare_state_dict, check_finite, check_state_dict,
                                          detect_format, flush_denormals, info_from_dict,
                                          ModelFileError, Normalization, PUBLISHED, read_file,
                                          unwrap)

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# ERFNet's parameters with one entry per class, and the dimension that indexes the class.
HEAD_KEYS: Dict[str, int] = dict(architectures.get('erfnet').head_keys)


@dataclass
class InitReport:
    """What :func:`init_from_file` did, for logs and the training summary."""

    source: str
    source_format: str
    source_classes: Optional[ClassTable]
    normalization: Optional[Normalization]  # the source's input normalisation, if known
    head: str  # 'copied', 'matched' (rows by class name) or 'fresh'
    rows: Dict[str, Optional[str]] = field(default_factory=dict)  # target class -> source class

    def to_dict(self) -> Dict:
        return {'source': self.source, 'source_format': self.source_format, 'head': self.head,
                'rows': dict(self.rows)}


def _official_classes(sd: Mapping[str, torch.Tensor]) -> Optional[ClassTable]:
    head = sd.get('decoder.output_conv.weight')
    n = int(head.shape[1]) if head is not None else -1
    if n == 20:
        return cityscapes_table(with_void=True)
    if n == 19:
        return cityscapes_table()
    return None


@dataclass
class Source:
    """A model file read for initialisation."""

    state_dict: Dict[str, torch.Tensor]  # without prefix, denormals flushed
    classes: Optional[ClassTable]
    normalization: Optional[Normalization]
    source_format: str
    arch: str
    arch_options: Dict = field(default_factory=dict)  # arch_config besides the class count


def read_source(path: PathLike) -> Source:
    """Read a model file for :func:`init_from_file`; ModelFileError names what is wrong."""
    obj = read_file(path)
    kind = detect_format(obj)
    if kind == 'espnet' or (kind == 'project' and obj.get('arch') == 'espnet'):
        raise ModelFileError(f'{path}: is an ESPNet (v1) model, which seg-train does not train '
                             '(its whole decoder is sized by the class count); use it as a '
                             '--teacher, or train espnetv2 or erfnet')
    if kind == 'project':
        info = info_from_dict(obj, str(path))
        if info.encoder_only:
            _logger.warning('%s is an encoder-only model: its decoder was never trained', path)
        src = Source(dict(obj['state_dict']), info.classes, info.normalization, 'project',
                     info.arch, dict(info.arch_options))
    elif kind == 'official':
        sd = bare_state_dict(obj)
        # The official Cityscapes model was trained on [0, 1] inputs without mean/std.
        src = Source(sd, _official_classes(sd), Normalization(), 'erfnet_pretrained', 'erfnet')
    elif kind in PUBLISHED:  # the ESPNetv2 authors' (ESPNet's are refused above)
        sd = bare_state_dict(obj)
        info = PUBLISHED[kind](sd, str(path))
        src = Source(sd, info.classes, info.normalization, info.source_format, info.arch,
                     dict(info.arch_options))
    elif kind == 'imagenet-encoder':
        raise ModelFileError(f'{path}: is the ImageNet-pretrained encoder file; pass it with '
                             '--pretrained-encoder, not --init')
    else:
        raise ModelFileError(f'{path}: neither a seg_perception model file nor an ERFNet or '
                             'ESPNetv2 state_dict')
    check_finite(src.state_dict, str(path))  # heads too: their rows skip check_state_dict
    src.state_dict = flush_denormals(src.state_dict, str(path))
    return src


def init_from_file(model: torch.nn.Module, path: PathLike, classes: ClassTable,
                   class_map: Optional[PathLike] = None,
                   source: Optional[Source] = None) -> InitReport:
    """
    Copy the weights of the model file at ``path`` into ``model``, adapting the class heads.

    ``classes`` is the class table of ``model``; the report says what was copied. The source
    must have the architecture of ``model`` (ESPNetv2: also its width scale). A ``class_map``
    file (:mod:`seg_training.datasets.class_map`) names the source classes of target classes whose
    names differ; a row starts from the first source class listed. ``source`` is ``path`` already
    read by :func:`read_source` (read here otherwise).
    """
    net = unwrap(model)
    if net.num_classes != classes.num_classes:
        raise ValueError(f'model has {net.num_classes} outputs but the class table '
                         f'{classes.num_classes}')
    arch_name = architectures.config_of(net)[0]
    src = source if source is not None else read_source(path)
    if src.arch != arch_name:
        raise ModelFileError(f'{path}: is an {src.arch} model; it cannot initialise an '
                             f'{arch_name} (leave the architecture unset to train the one of '
                             'the --init file)')
    head_keys = architectures.get(arch_name).head_keys
    sd, src_classes, norm, fmt = src.state_dict, src.classes, src.normalization, src.source_format
    own = net.state_dict()
    body = {k: v for k, v in sd.items() if k not in head_keys}
    own_body = {k: v for k, v in own.items() if k not in head_keys}
    check_state_dict(own_body, body, str(path))
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in body.items()}, strict=False)

    heads = {k: sd.get(k) for k in head_keys}
    if any(v is None for v in heads.values()):
        missing = [k for k, v in heads.items() if v is None]
        raise ModelFileError(f'{path}: state_dict lacks the class heads {missing}')
    same = src_classes is not None and src_classes.names == classes.names
    if same:
        check_state_dict({k: own[k] for k in head_keys}, heads, str(path))
        net.load_state_dict({k: v.to(own[k].dtype) for k, v in heads.items()}, strict=False)
        head, rows = 'copied', {n: n for n in classes.names}
    elif src_classes is None:
        _logger.warning('%s: unknown class table of the source head; the new head starts fresh',
                        path)
        head, rows = 'fresh', {n: None for n in classes.names}
    else:
        matched = match_classes(classes, src_classes)
        if class_map is not None:
            cmap = build_class_map(classes, src_classes, class_map, str(path))
            matched.update({t: ts[0] for t, ts in enumerate(cmap.sources) if ts})
        with torch.no_grad():
            for key, dim in head_keys.items():
                dst = own[key]
                src_t = heads[key].to(dst.dtype)
                if src_t.shape[dim] != src_classes.num_classes:
                    raise ModelFileError(f'{path}: {key} has {src_t.shape[dim]} outputs but the '
                                         f'class table {src_classes.num_classes}')
                for t, s in matched.items():
                    dst.select(dim, t).copy_(src_t.select(dim, s))
        net.load_state_dict({k: own[k] for k in head_keys}, strict=False)
        rows = {n: (src_classes.names[matched[i]] if i in matched else None)
                for i, n in enumerate(classes.names)}
        head = 'matched'
    report = InitReport(str(path), fmt, src_classes, norm, head, rows)
    fresh = [n for n, s in rows.items() if s is None]
    _logger.info('initialised from %s (%s): head %s; %d/%d classes from the source%s', path, fmt,
                 head, len(rows) - len(fresh), len(rows),
                 f'; fresh rows: {fresh}' if fresh else '')
    return report
