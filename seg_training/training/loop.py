"""
seg-train: train ERFNet or ESPNetv2 on a labelled dataset, from scratch or by transfer.

    seg-train --dataset cityscapes|folder|bdd100k|mmseg|camvid|cvat|images --data-root D
              --output-dir O [--val-dataset KIND --val-data-root D]
              [--init CKPT] [--pretrained-encoder F] [--arch A] [--epochs N] [--device D]
              [--seed S]
              [--teacher MODEL [--kd-temperature T] [--kd-weight A] [--teacher-class-map F]]
              [--batch-size B] [--resume] [--config YAML] [--size WxH] [--lr LR]
              [--freeze-encoder | --encoder-lr-scale F] [--schedule single|two-stage]
              [--optimizer adam|adamw|sgd] [--loss ce|focal|dice|ce_dice] [--patience N]
              [--workers N] [--amp] [--max-train-samples N] [--max-val-samples N]

Configuration: ``config/train.yaml`` defaults, then ``--config``, then command-line options; the
merged result is ``O/config.yaml``. Outputs in ``O``: ``best.pt`` (best validation mIoU, a model
file that seg-predict and the node run as is), ``last.pt`` (plus the full training state for
``--resume``), ``metrics.csv`` and TensorBoard events (``O/tensorboard``) of every epoch,
``summary.json`` and ``plots/``. Under ``torchrun --nproc_per_node N`` it trains with DDP; only
rank 0 writes files.
"""

import argparse
import contextlib
import csv
import json
import logging
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from seg_training.base.classes import ClassTable
from seg_training.base.cli import sigterm_as_interrupt
from seg_training.base.dataset_kinds import DATASETS, UNLABELLED_DATASETS
from seg_training.base.files import atomic_path, NoSpaceError
from seg_training.base.yaml_reader import ConfigError
from seg_training.datasets.build import (build_dataset, check_datasets, JointDataset,
                                         loader_worker_init)
from seg_training.datasets.segmentation import DatasetError, SegmentationDataset
from seg_training.datasets.transforms import denormalize, train_transform, val_transform
from seg_training.nets import architectures, provenance
from seg_training.nets.checkpoint import (atomic_save, info_from_dict, load_imagenet_encoder,
                                          load_model, load_state_dict_checked, model_file_dict,
                                          ModelFileError, ModelInfo, Normalization, read_file,
                                          unwrap)
from seg_training.nets.options import network_size_arg
from seg_training.nets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from seg_training.nets.preprocess import DEFAULT_RESIZE
from seg_training.training import distill, engine
from seg_training.training.config import (AMP_DTYPES, apply_overrides, ARCHS, CLASS_WEIGHTINGS,
                                          config_from_dict, load_config, LOSSES, OPTIMIZERS,
                                          read_yaml, save_config, SCHEDULES, stage_epochs,
                                          TRAIN_DATASETS, TrainConfig)
from seg_training.training.lock import folder_lock, FolderLockError
from seg_training.training.losses import build_loss, describe_weights, enet_class_weights
from seg_training.training.transfer import init_from_file, read_source, Source

_logger = logging.getLogger(__name__)

# Keys a resumed run may change; anything else must match the interrupted run.
RESUME_OVERRIDABLE = ('epochs', 'patience', 'workers', 'device', 'data_root', 'val_data_root',
                      'extra_train_roots', 'output_dir', 'plots', 'plots_every_epoch')
# train_ce, train_kd: the parts of a distillation loss (--teacher); empty otherwise.
CSV_COLUMNS = ('epoch', 'stage', 'lr', 'train_loss', 'train_ce', 'train_kd', 'val_miou',
               'val_pixel_accuracy', 'val_mean_accuracy', 'val_fw_iou', 'val_mean_dice',
               'time_s')


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """Options of seg-train; each help says its default (config/train.yaml's schema)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog='seg-train',
        description='Train or fine-tune ERFNet or ESPNetv2 on a labelled dataset; writes '
        'best.pt, last.pt, '
        'summary.json, metrics.csv, TensorBoard events and plots into --output-dir.',
        epilog='Defaults come from config/train.yaml, then --config, then these options. '
        '--data-root and --output-dir are required (unless --resume, or set by --config).',
        argument_default=argparse.SUPPRESS)

    def opt(group: Any, *flags: str, default: Any = None, **kw: Any) -> None:
        """Add an option whose help ends with its default (TrainConfig's, or ``default``)."""
        key = kw.get('dest') or flags[0][2:].replace('-', '_')
        value = getattr(d, key, None) if default is None else default
        if value is not None and kw.get('action') not in ('store_true', 'store_false'):
            kw['help'] = f'{kw["help"]} (default: {value})'
        group.add_argument(*flags, **kw)

    opt(p, '--config', help='YAML with any of the keys of config/train.yaml', default='none')
    g = p.add_argument_group('data')
    opt(g, '--dataset', choices=TRAIN_DATASETS,
        help='dataset layout; images: a folder of frames without labels, trained by '
        '--teacher alone')
    opt(g, '--data-root', dest='data_root', metavar='DIR', help='dataset root folder (required)')
    opt(g, '--output-dir', dest='output_dir', metavar='DIR',
        help='folder for the run (required; must not hold a run unless --resume)')
    opt(g, '--train-split', dest='train_split', help='training split')
    opt(g, '--val-split', dest='val_split', help='validation split')
    opt(g, '--val-dataset', dest='val_dataset', choices=DATASETS,
        help='validate on another labelled layout (needed by --dataset images)',
        default='--dataset')
    opt(g, '--val-data-root', dest='val_data_root', metavar='DIR',
        help='root of the validation dataset', default='--data-root')
    opt(g, '--extra-train-root', dest='extra_train_roots', action='append', metavar='DIR',
        help='another root whose training split joins the main one (repeatable; same '
             '--dataset and class names)', default='none')
    opt(g, '--max-train-samples', dest='max_train_samples', type=int, metavar='N',
        help='use N training samples spread over the split', default='all')
    opt(g, '--max-val-samples', dest='max_val_samples', type=int, metavar='N',
        help='use N validation samples spread over the split', default='all')
    g = p.add_argument_group('model and transfer')
    opt(g, '--init', metavar='CKPT', help='start from a project model file or the official '
        'erfnet_pretrained.pth', default='random weights')
    opt(g, '--pretrained-encoder', dest='pretrained_encoder', metavar='FILE',
        help='official erfnet_encoder_pretrained.pth.tar (ImageNet)', default='none')
    opt(g, '--init-class-map', dest='init_class_map', metavar='YAML',
        help='--init from other classes: YAML "class: [init model classes]" (first one '
        'starts the head row; config/class_maps/)', default='classes by name')
    opt(g, '--arch', choices=ARCHS, help='network to train', default="the --init model's, "
        'else erfnet')
    opt(g, '--arch-scale', dest='arch_scale', type=float, metavar='S',
        help='ESPNetv2 width from scratch: 0.5, 1.0, 1.25, 1.5 or 2.0')
    opt(g, '--size', type=lambda t: list(network_size_arg(t)), metavar='WxH',
        help='network input size, multiples of 8 (ESPNetv2: 16)',
        default='x'.join(map(str, d.size)))
    enc = g.add_mutually_exclusive_group()
    enc.add_argument('--freeze-encoder', dest='freeze_encoder', action='store_true',
                     help='train only the decoder (default: off)')
    enc.add_argument('--encoder-lr-scale', dest='encoder_lr_scale', type=float, metavar='F',
                     help=f'encoder learning rate = lr * F (default: {d.encoder_lr_scale})')
    opt(g, '--schedule', choices=SCHEDULES,
        help='two-stage: encoder alone at 1/8 resolution, then the whole network')
    opt(g, '--encoder-epochs', dest='encoder_epochs', type=int, metavar='N',
        help='two-stage: epochs of the encoder stage', default='half of --epochs')
    g = p.add_argument_group('distillation')
    opt(g, '--teacher', metavar='MODEL', help='model file whose soft targets teach the network '
        '(any model file seg-predict runs; at its own input size and normalisation)',
        default='none')
    opt(g, '--kd-temperature', dest='kd_temperature', type=float, metavar='T',
        help='temperature of the soft targets (the KD term is scaled by T^2)')
    opt(g, '--kd-weight', dest='kd_weight', type=float, metavar='A',
        help='loss = (1 - A) CE + A KD where labels exist (KD alone on frames without)')
    opt(g, '--teacher-class-map', dest='teacher_class_map', metavar='FILE',
        help='YAML "student_class: [teacher_class, ...]" (probabilities summed)',
        default='teacher classes by name')
    g = p.add_argument_group('optimisation')
    opt(g, '--epochs', type=int, metavar='N', help='epochs in all')
    opt(g, '--batch-size', dest='batch_size', type=int, metavar='B', help='images per step')
    opt(g, '--optimizer', choices=OPTIMIZERS, help='Adam is the ERFNet recipe')
    opt(g, '--lr', type=float, help='initial learning rate (poly decay)')
    opt(g, '--weight-decay', dest='weight_decay', type=float, help='weight decay')
    opt(g, '--momentum', type=float, help='SGD momentum (Nesterov)')
    opt(g, '--loss', choices=LOSSES, help='ce_dice: cross-entropy + dice_weight * Dice')
    opt(g, '--dice-weight', dest='dice_weight', type=float, help='weight of Dice in ce_dice')
    opt(g, '--class-weighting', dest='class_weighting', choices=CLASS_WEIGHTINGS,
        help='enet: 1 / ln(1.10 + p_class) from the training labels')
    opt(g, '--patience', type=int, metavar='N',
        help='stop after N epochs without a better val mIoU (0: never)')
    g = p.add_argument_group('run')
    opt(g, '--device', help='auto, cpu, cuda or cuda:N')
    opt(g, '--workers', type=int, metavar='N', help='DataLoader worker processes')
    opt(g, '--amp', action='store_true', help='mixed precision (CUDA only; default: off)')
    opt(g, '--amp-dtype', dest='amp_dtype', choices=AMP_DTYPES, help='autocast dtype of --amp')
    opt(g, '--seed', type=int, help='seed of weights, data order and augmentation')
    opt(g, '--no-plots', dest='plots', action='store_false',
        help='write no plots (metrics.csv and TensorBoard still log everything)')
    opt(g, '--resume', action='store_true',
        help='continue the run in --output-dir from its last.pt')
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge the run's configuration (with ``--resume``: the saved one, checked against args)."""
    overrides = {k: v for k, v in vars(args).items() if k not in ('config', 'resume')}
    if not getattr(args, 'resume', False):
        cfg = load_config(getattr(args, 'config', None), overrides)
        missing = [k for k in ('data_root', 'output_dir') if getattr(cfg, k) is None]
        if missing:
            raise ConfigError('missing ' + ', '.join('--' + k.replace('_', '-') for k in missing))
        return cfg
    if 'config' in args:
        overrides = {**read_yaml(args.config), **overrides}
    out = overrides.get('output_dir')
    if out is None:
        raise ConfigError('--resume needs --output-dir')
    last = Path(out) / 'last.pt'
    if not last.is_file():
        raise ConfigError(f'{last}: not found; nothing to resume')
    state = read_file(last).get('training_state')
    if not isinstance(state, dict) or 'config' not in state:
        raise ConfigError(f'{last}: has no training_state to resume from')
    cfg = config_from_dict(state['config'], str(last))
    saved = cfg.to_dict()
    probe = apply_overrides(cfg, overrides, 'command line')
    changed = [k for k, v in probe.to_dict().items() if v != saved[k]]
    refused = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if refused:
        raise ConfigError(f'--resume: {", ".join(refused)} differ from the interrupted run '
                          f'({last}); only {", ".join(RESUME_OVERRIDABLE)} may change')
    for k in changed:
        _logger.info('resume: %s %r -> %r', k, saved[k], getattr(probe, k))
    return probe


# ----------------------------------------------------------------------------- outputs

def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, tensors -> lists, recursively (for summary.json)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    return obj


def by_name(names: Sequence[str], values: Sequence[float],
            void_index: Optional[int] = None) -> Dict[str, float]:
    """{class name: value}, without the void output."""
    return {n: v for i, (n, v) in enumerate(zip(names, values)) if i != void_index}


class RunLog:
    """metrics.csv and TensorBoard events of a run (rank 0 only; a no-op elsewhere)."""

    def __init__(self, out: Path, active: bool, start_epoch: int) -> None:
        self.active = active
        self.csv_path = out / 'metrics.csv'
        self.writer = None
        if not active:
            return
        self._trim_csv(start_epoch)
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed session logged after its last checkpoint.
        self.writer = SummaryWriter(str(out / 'tensorboard'),
                                    purge_step=start_epoch + 1 if start_epoch else None)

    def _trim_csv(self, start_epoch: int) -> None:
        """Keep the rows of epochs <= start_epoch (a resumed run rewrites the rest)."""
        rows = []
        if self.csv_path.is_file() and start_epoch > 0:
            with open(self.csv_path, newline='') as f:
                rows = [r for r in csv.DictReader(f) if int(r['epoch']) <= start_epoch]
        with open(self.csv_path, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def epoch(self, row: Dict[str, Any], per_class: Dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.csv_path, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=CSV_COLUMNS).writerow(
                {k: row.get(k, '') for k in CSV_COLUMNS})
        e = row['epoch']
        for key in CSV_COLUMNS[2:]:
            if isinstance(row.get(key), float) and math.isfinite(row[key]):
                self.writer.add_scalar(key.replace('_', '/', 1), row[key], e)
        for name, v in per_class.items():
            if math.isfinite(v):
                self.writer.add_scalar(f'val_iou/{name}', v, e)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def model_info(cfg: TrainConfig, classes: ClassTable, metrics: Optional[Dict] = None,
               provenance: Optional[Dict] = None,
               net: Optional[torch.nn.Module] = None) -> ModelInfo:
    """
    Describe, for the model file, the network this run trains (``net``; ERFNet if None).

    Its network-input step is preprocess.DEFAULT_RESIZE (area when shrinking), the resize the
    training augmentation shrinks with, and validation runs the same step.
    """
    arch, arch_cfg = ('erfnet', {}) if net is None else architectures.config_of(unwrap(net))
    return ModelInfo(classes=classes, input_size=(cfg.size[0], cfg.size[1]),
                     normalization=Normalization(tuple(cfg.mean), tuple(cfg.std)),
                     train_config=cfg.to_dict(), metrics=dict(metrics or {}),
                     resize=DEFAULT_RESIZE, provenance=provenance, arch=arch,
                     arch_options=architectures.options(arch_cfg))


def build_network(cfg: TrainConfig, classes: ClassTable,
                  saved: Optional[Mapping[str, Any]] = None,
                  init: Optional[Source] = None) -> torch.nn.Module:
    """
    Build the network of this run, random weights.

    Its architecture is the one of ``saved`` (a resumed run's last.pt), else ``cfg.arch``, else
    the ``--init`` file's (``init``, read by :func:`read_source`; ESPNetv2: its width and pyramid
    too, so its body fits), else ERFNet.
    """
    if saved is not None:
        info = info_from_dict(saved, 'last.pt')
        return architectures.build(info.arch, info.arch_config)
    options: Dict[str, Any] = {}
    arch = cfg.arch
    if init is not None:
        if arch is None or arch == init.arch:
            arch, options = init.arch, dict(init.arch_options)
        else:
            raise ConfigError(f'--init {cfg.init} is an {init.arch} model but --arch is {arch}')
    arch = arch or 'erfnet'
    if arch == 'espnetv2':
        options.setdefault('scale', cfg.arch_scale)
    architectures.check_input_size(arch, cfg.size[1], cfg.size[0])
    return architectures.build(arch, dict(options, num_classes=classes.num_classes))


def _data_records(cfg: TrainConfig, train_ds: Any, val_ds: SegmentationDataset
                  ) -> List[Dict[str, Any]]:
    """Provenance records of the training parts and the validation split."""
    parts = train_ds.parts if isinstance(train_ds, JointDataset) else [train_ds]
    return ([provenance.dataset_record(p, cfg.dataset, 'train') for p in parts]
            + [provenance.dataset_record(val_ds, cfg.val_dataset or cfg.dataset, 'val')])


def _init_record(cfg: TrainConfig) -> Optional[Dict[str, Any]]:
    """Provenance of the model or encoder the run started from (--init, --pretrained-encoder)."""
    source = cfg.init or cfg.pretrained_encoder
    if not source:
        return None
    try:
        parent = provenance.file_provenance(source)
    except (ModelFileError, OSError) as e:
        _logger.warning('cannot read the provenance of %s: %s', source, e)
        parent = None
    return provenance.init_record(str(source), parent)


def file_metrics(val: Dict[str, Any], epoch: int, classes: ClassTable) -> Dict[str, Any]:
    """Select what a model file records about its validation."""
    return {'epoch': epoch, 'val_miou': val['miou'], 'pixel_accuracy': val['pixel_accuracy'],
            'mean_accuracy': val['mean_accuracy'], 'fw_iou': val['fw_iou'],
            'mean_dice': val['mean_dice'],
            'per_class_iou': by_name(classes.names, val['per_class_iou'], classes.void_index)}


# ----------------------------------------------------------------------------- the run

def _loader(ds: SegmentationDataset, cfg: TrainConfig, sampler, generator: torch.Generator,
            device: torch.device) -> DataLoader:
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      pin_memory=device.type == 'cuda', worker_init_fn=loader_worker_init(),
                      generator=generator, persistent_workers=False)


def _class_weights(cfg: TrainConfig, ds: SegmentationDataset, state: Optional[Dict],
                   hist: Optional[np.ndarray] = None) -> Optional[torch.Tensor]:
    if state is not None:
        return state.get('class_weights')
    if cfg.class_weighting == 'none' or cfg.dataset in UNLABELLED_DATASETS:
        return None
    t0 = time.time()
    if hist is None:
        hist = ds.label_histogram(workers=max(1, cfg.workers))
    w = enet_class_weights(hist, cfg.class_weight_c)
    _logger.info('class weights from %d labelled pixels (%.1f s): %s', int(hist.sum()),
                 time.time() - t0, describe_weights(ds.classes.names, w))
    return w


def _initialise(net: torch.nn.Module, cfg: TrainConfig, classes: ClassTable,
                init: Optional[Source] = None) -> Optional[Dict]:
    """Apply --init (``init``: the file as read) / --pretrained-encoder; fill in cfg.mean/std."""
    report = None
    source_norm = None
    if cfg.init:
        r = init_from_file(net, cfg.init, classes, cfg.init_class_map, init)
        report, source_norm = r.to_dict(), r.normalization
    elif cfg.pretrained_encoder:
        load_imagenet_encoder(cfg.pretrained_encoder, net)
        report = {'source': cfg.pretrained_encoder, 'source_format': 'imagenet-encoder',
                  'head': 'fresh'}
    if cfg.mean is None:
        cfg.mean = list(source_norm.mean) if source_norm else list(IMAGENET_MEAN)
    if cfg.std is None:
        cfg.std = list(source_norm.std) if source_norm else list(IMAGENET_STD)
    return report


def _sample_panels(net: torch.nn.Module, ds: SegmentationDataset, cfg: TrainConfig,
                   device: torch.device, out_png: Path) -> None:
    from seg_training.evaluation import plots
    n = min(cfg.val_panels, len(ds))
    if n == 0:
        return
    items = [ds[i * len(ds) // n] for i in range(n)]  # spread over the split (other drives)
    images = torch.stack([x for x, _ in items]).to(device)  # (n, 3, H, W)
    preds = engine.predict_batch(net, 'full', images).cpu()  # (n, H, W)
    plots.plot_samples([denormalize(x, cfg.mean, cfg.std) for x, _ in items],
                       [p.numpy() for p in preds], [y.numpy() for _, y in items],
                       ds.classes.palette(), out_png)


def run(cfg: TrainConfig, resume: bool = False) -> Optional[Dict[str, Any]]:
    """Train as ``cfg`` says; returns the summary on rank 0 (None elsewhere)."""
    dinfo, device = engine.init_distributed(cfg.device)
    try:
        return _run(cfg, resume, dinfo, device)
    finally:
        engine.cleanup_distributed()


def _check_data(train_ds: Any, val_ds: Any, cfg: TrainConfig,
                dinfo: engine.DistInfo) -> np.ndarray:
    """
    Check every file of both splits once per job; return the training masks' class counts.

    Under DDP rank 0 checks and sends the counts, or its error, to every rank: N ranks on one
    machine would otherwise each read the whole dataset. (Ranks on other machines train from
    their own copy of the files unchecked; a bad file there still stops the run, naming it.)
    """
    def check() -> np.ndarray:
        return check_datasets([train_ds, val_ds], workers=max(2, cfg.workers), progress=True)[0]

    if not dinfo.distributed:
        return check()
    import torch.distributed as dist

    shared: List[Any] = [None]
    if dinfo.is_main:
        try:
            shared[0] = check()
        except DatasetError as e:
            shared[0] = str(e)
    dist.broadcast_object_list(shared, src=0)
    if isinstance(shared[0], str):
        raise DatasetError(shared[0] if dinfo.is_main else
                           f'[rank {dinfo.rank}] the data check of rank 0 failed (its error '
                           'lists the files)')
    return shared[0]


def _run(cfg: TrainConfig, resume: bool, dinfo: engine.DistInfo,
         device: torch.device) -> Optional[Dict[str, Any]]:
    t_start = time.time()
    out = Path(cfg.output_dir)
    main = dinfo.is_main
    state, saved_sd, saved_obj, saved_prov = None, None, None, None
    if resume:
        saved_obj = read_file(out / 'last.pt')
        state, saved_sd = saved_obj['training_state'], saved_obj['state_dict']
        saved_prov = saved_obj.get('provenance')
        if state.get('interrupted'):
            _logger.warning('%s was saved by an interrupted epoch: that epoch starts over from '
                            'the weights it had reached', out / 'last.pt')
    engine.seed_everything(cfg.seed)

    val_root = cfg.val_data_root or cfg.data_root
    val_ds = build_dataset(cfg.val_dataset or cfg.dataset, val_root, cfg.val_split, None,
                           cfg.max_val_samples)
    if cfg.extra_train_roots:  # (frames without labels take the validation set's classes)
        parts = [build_dataset(cfg.dataset, r, cfg.train_split, classes=val_ds.classes)
                 for r in [cfg.data_root, *cfg.extra_train_roots]]
        train_ds = JointDataset(parts, cfg.max_train_samples)
    else:
        train_ds = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, None,
                                 cfg.max_train_samples, classes=val_ds.classes)
    classes = train_ds.classes
    if val_ds.classes != classes:
        raise DatasetError(f'{cfg.data_root} ({cfg.train_split}) and {val_root} '
                           f'({cfg.val_split}) have different class tables')
    teacher = None
    if cfg.teacher:  # before the data check: a bad teacher file fails at once
        teacher = distill.load_teacher(
            cfg.teacher, classes, device, cfg.teacher_class_map,
            f'the classes of {val_root}', cfg.channels_last and device.type == 'cuda')
        if state is not None:
            distill.check_resumed_teacher(teacher, saved_prov, out / 'last.pt')
    # Every file of both splits, before the first step; the masks' counts give class weights.
    train_hist = _check_data(train_ds, val_ds, cfg, dinfo)

    init = read_source(cfg.init) if cfg.init and state is None else None  # read once
    try:
        net = build_network(cfg, classes, saved_obj, init)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if state is not None:
        load_state_dict_checked(net, saved_sd, str(out / 'last.pt'))
        progress = engine.Progress.from_dict(state['progress'])
    else:
        progress = engine.Progress(init=_initialise(net, cfg, classes, init))
    wall_before = progress.wall_s  # earlier sessions of this run

    def clock() -> None:
        progress.wall_s = wall_before + time.time() - t_start

    _warn_upscaling(cfg, train_ds)
    net.to(device)
    precision = engine.Precision.from_config(cfg, device)
    if precision.channels_last:
        net.to(memory_format=torch.channels_last)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / 'config.yaml')
    size = (cfg.size[0], cfg.size[1])
    train_ds.transform = train_transform(size, cfg.mean, cfg.std, cfg.augment, cfg.seed)
    val_ds.transform = val_transform(size, cfg.mean, cfg.std)
    weights = _class_weights(cfg, train_ds, state, train_hist)
    criterion = build_loss(cfg.loss, weights.to(device) if weights is not None else None,
                           cfg.focal_gamma, dice_weight=cfg.dice_weight)
    kd = (distill.DistillLoss(criterion, teacher, cfg.kd_temperature, cfg.kd_weight, cfg.mean,
                              cfg.std) if teacher is not None else None)

    train_gen = torch.Generator()
    if dinfo.distributed:
        train_sampler = DistributedSampler(train_ds, dinfo.world_size, dinfo.rank, shuffle=True,
                                           seed=cfg.seed)
        val_sampler = engine.ShardSampler(len(val_ds), dinfo.rank, dinfo.world_size)
    else:
        train_sampler = RandomSampler(train_ds, generator=train_gen)
        val_sampler = None
    train_loader = _loader(train_ds, cfg, train_sampler, train_gen, device)
    val_loader = _loader(val_ds, cfg, val_sampler, torch.Generator().manual_seed(cfg.seed),
                         device)

    per_stage = stage_epochs(cfg)
    schedule = ['encoder'] * per_stage['encoder'] + ['full'] * per_stage['full']
    log = RunLog(out, main, progress.epoch)
    records = _data_records(cfg, train_ds, val_ds) if main else []
    init_prov = _init_record(cfg) if main else None
    teacher_prov = teacher.record() if main and teacher is not None else None

    def prov(epochs: int) -> Dict[str, Any]:
        best = progress.best_miou if progress.best_epoch else None
        return provenance.training_provenance(records, init_prov, epochs, progress.best_epoch,
                                              best, teacher_prov)
    cfg_dict = cfg.to_dict()
    opt = sched = scaler = module = None
    opt_stage = None
    pending = None
    if state is not None:
        if progress.epoch < len(schedule) and schedule[progress.epoch] == progress.stage:
            pending = state  # optimiser state of the stage that continues
        engine.restore_rng_state(state['rng'])

    def save_last(interrupted: bool = False) -> None:
        clock()
        ts = engine.training_state(progress, opt, sched, scaler, cfg_dict, weights, interrupted)
        info_last = model_info(cfg, classes, provenance=prov(progress.epoch), net=net)
        atomic_save(model_file_dict(net, info_last, {'training_state': ts}), out / 'last.pt')

    _logger.info('training %d epochs (%s) on %s: %d train / %d val samples, %d classes, %dx%d',
                 len(schedule), ', '.join(f'{k} {v}' for k, v in per_stage.items() if v),
                 device, len(train_ds), len(val_ds), classes.num_classes, *size)
    val: Optional[Dict[str, Any]] = None
    try:
        for e in range(progress.epoch, len(schedule)):
            if progress.stopped_early:
                break
            t0 = time.time()
            stage = schedule[e]
            if stage != opt_stage:
                engine.set_trainable(net, stage, cfg.freeze_encoder)
                opt, sched = engine.build_optimizer(net, cfg, per_stage[stage])
                scaler = precision.scaler()
                if pending is not None:
                    opt.load_state_dict(pending['optimizer'])
                    sched.load_state_dict(pending['scheduler'])
                    if scaler is not None and pending.get('scaler'):
                        scaler.load_state_dict(pending['scaler'])
                    pending = None
                module = engine.stage_module(net, stage)
                if dinfo.distributed:
                    module = DistributedDataParallel(
                        module, device_ids=[device.index] if device.type == 'cuda' else None)
                opt_stage = stage
            seed = engine.epoch_seed(cfg.seed, e, dinfo.rank)
            train_gen.manual_seed(seed)
            train_ds.transform.set_seed(seed)
            if dinfo.distributed:
                train_sampler.set_epoch(e)
            engine.set_train_mode(net, cfg.freeze_encoder and stage == 'full')
            lr = opt.param_groups[-1]['lr']
            losses = engine.train_one_epoch(module, train_loader, criterion, opt, device,
                                            precision, scaler,
                                            desc=f'epoch {e + 1}/{len(schedule)} {stage}',
                                            progress=main, distill=kd)
            loss = losses['loss']
            sched.step()
            engine.sync_buffers(net)
            val, cm = engine.validate(net, stage, val_loader, classes.num_classes, device,
                                      classes.void_index, precision.amp)
            progress.time_s += time.time() - t0
            improved = progress.record(e + 1, stage, val['miou'], cfg.patience)
            if improved:
                progress.best_metrics = {**val, 'confusion': cm.matrix.cpu().tolist()}
            _logger.info('epoch %d/%d %s: loss %.4f, val mIoU %.4f, %.1f s%s', e + 1,
                         len(schedule), stage, loss, val['miou'], time.time() - t0,
                         f' (best {progress.best_miou:.4f} at epoch {progress.best_epoch})'
                         if progress.best_epoch else '')
            if main:
                row = {'epoch': e + 1, 'stage': stage, 'lr': lr, 'train_loss': loss,
                       'val_miou': val['miou'], 'val_pixel_accuracy': val['pixel_accuracy'],
                       'val_mean_accuracy': val['mean_accuracy'], 'val_fw_iou': val['fw_iou'],
                       'val_mean_dice': val['mean_dice'], 'time_s': round(progress.time_s, 3)}
                row.update({f'train_{k}': v for k, v in losses.items()
                            if k in engine.PARTS and math.isfinite(v)})
                log.epoch(row, by_name(classes.names, val['per_class_iou'], classes.void_index))
                if improved:
                    info = model_info(cfg, classes, file_metrics(val, e + 1, classes),
                                      prov(e + 1), net)
                    atomic_save(model_file_dict(net, info), out / 'best.pt')
                save_last()
                if cfg.plots and cfg.plots_every_epoch:
                    _plot_curves(out)
            if progress.stopped_early:
                _logger.info('early stopping: no better val mIoU for %d epochs', cfg.patience)
    except KeyboardInterrupt:
        if main:
            save_last(interrupted=True)
            _logger.warning('interrupted: saved %s; continue with --resume', out / 'last.pt')
        log.close()
        raise

    if progress.best_epoch == 0:
        # No epoch of the whole network ran (e.g. --epochs 0 to convert an --init model):
        # the current weights are the result.
        val, cm = engine.validate(net, 'full', val_loader, classes.num_classes, device,
                                  classes.void_index, precision.amp)
        progress.best_miou, progress.best_epoch = val['miou'], progress.epoch
        progress.best_metrics = {**val, 'confusion': cm.matrix.cpu().tolist()}
        if main:
            info = model_info(cfg, classes, file_metrics(val, progress.epoch, classes),
                              prov(progress.epoch), net)
            atomic_save(model_file_dict(net, info), out / 'best.pt')
            save_last()
    log.close()
    if not main:
        return None
    clock()
    summary = _summary(cfg, progress, val, classes, len(train_ds), len(val_ds), device,
                       dinfo, len(schedule))
    with atomic_path(out / 'summary.json') as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=2), encoding='utf-8')
    if cfg.plots:  # after the results: a plot that fails costs only itself
        _final_plots(out, cfg, progress, classes, val_ds, device)
    return summary


def _warn_upscaling(cfg: TrainConfig, ds: Any) -> None:
    """Warn when the network size is larger than the dataset's images (each one upscaled)."""
    if not ds.samples:
        return
    path = ds.samples[0][0]
    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
    except OSError:
        return  # reported by name when the sample is read
    if cfg.size[0] > w or cfg.size[1] > h:
        _logger.warning('training size %dx%d is larger than the images (%s: %dx%d): every image '
                        'is upscaled, %.1fx the pixels of --size %dx%d', cfg.size[0], cfg.size[1],
                        path, w, h, cfg.size[0] * cfg.size[1] / (w * h), w // 8 * 8, h // 8 * 8)


def _summary(cfg: TrainConfig, progress: engine.Progress, final: Optional[Dict[str, Any]],
             classes: ClassTable, n_train: int, n_val: int, device: torch.device,
             dinfo: engine.DistInfo, planned: int) -> Dict[str, Any]:
    best = progress.best_metrics or {}
    final = final or best

    def brief(m: Dict[str, Any]) -> Dict[str, Any]:
        return {k: m.get(k) for k in ('miou', 'pixel_accuracy', 'mean_accuracy', 'fw_iou',
                                      'mean_dice')} | {
            'per_class_iou': by_name(classes.names, m.get('per_class_iou', []),
                                     classes.void_index)}

    return {
        'best_val_miou': progress.best_miou,
        'best_epoch': progress.best_epoch,
        'per_class_iou': by_name(classes.names, best.get('per_class_iou', []),
                                 classes.void_index),
        'best_val': brief(best),
        'final_val': brief(final),
        'epochs': progress.epoch,
        'epochs_planned': planned,
        'stopped_early': progress.stopped_early,
        'time_s': round(progress.wall_s, 3),        # everything, all sessions
        'epoch_time_s': round(progress.time_s, 3),  # training and validation epochs only
        'classes': list(classes.names),
        'num_train': n_train,
        'num_val': n_val,
        'device': str(device),
        'world_size': dinfo.world_size,
        'init': progress.init,
        'config': cfg.to_dict(),
    }


def _plot_curves(out: Path) -> None:
    from seg_training.evaluation import plots
    png = out / 'plots' / 'curves.png'
    plots.draw_safely(png, lambda: plots.plot_curves(out / 'metrics.csv', png))


def _final_plots(out: Path, cfg: TrainConfig, progress: engine.Progress, classes: ClassTable,
                 val_ds: SegmentationDataset, device: torch.device) -> None:
    from seg_training.evaluation import plots
    _plot_curves(out)
    best = progress.best_metrics or {}
    keep = [i for i in range(classes.num_classes) if i != classes.void_index]
    names = [classes.names[i] for i in keep]
    folder = out / 'plots'
    if best.get('per_class_iou'):
        plots.draw_safely(folder / 'per_class_iou.png', lambda: plots.plot_per_class_iou(
            names, [best['per_class_iou'][i] for i in keep], folder / 'per_class_iou.png'))
    if best.get('confusion'):
        matrix = torch.tensor(best['confusion'])[keep][:, keep]
        plots.draw_safely(folder / 'confusion.png', lambda: plots.plot_confusion(
            matrix.numpy(), names, folder / 'confusion.png'))
    best_path = out / 'best.pt'
    if best_path.is_file():
        net = load_model(best_path, device)[0]
        plots.draw_safely(folder / 'samples.png', lambda: _sample_panels(
            net, val_ds, cfg, device, folder / 'samples.png'))


# ----------------------------------------------------------------------------- entry point

def _finished_run(cfg: TrainConfig) -> Optional[str]:
    """Describe the run in ``cfg.output_dir`` if it has nothing left to do, else None."""
    progress = engine.Progress.from_dict(
        read_file(Path(cfg.output_dir) / 'last.pt')['training_state']['progress'])
    planned = sum(stage_epochs(cfg).values())
    if progress.epoch < planned and not progress.stopped_early:
        return None
    how = 'stopped early' if progress.stopped_early else 'finished'
    return (f'{cfg.output_dir} {how} after {progress.epoch} of {planned} epochs, best val mIoU '
            f'{progress.best_miou:.4f} at epoch {progress.best_epoch}')


@contextlib.contextmanager
def _hold_output_dir(cfg: TrainConfig, rank: int, resume: bool) -> Iterator[None]:
    """
    Lock ``cfg.output_dir`` for this run: a second run or ``--resume`` on it is refused at once.

    Rank 0 holds the lock for a whole DDP job. A new run (not ``resume``) needs a folder without
    a run in it, which is checked under the lock.
    """
    with folder_lock(cfg.output_dir, 'another seg-train run') if rank == 0 \
            else contextlib.nullcontext():
        if not resume and (Path(cfg.output_dir) / 'last.pt').exists():
            raise ConfigError(f'{cfg.output_dir}: already holds a training run (last.pt); pass '
                              '--resume to continue it or choose another --output-dir')
        yield


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f'%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s'
                        if 'WORLD_SIZE' in os.environ else
                        '%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        cfg = config_from_args(args)
    except (ConfigError, ModelFileError) as e:
        print(f'seg-train: error: {e}', file=sys.stderr)
        return 2
    finished = _finished_run(cfg) if getattr(args, 'resume', False) else None
    if finished:
        print(f'seg-train: {finished}; nothing to resume (raise --epochs to train longer)')
        return 0
    try:
        with sigterm_as_interrupt(), _hold_output_dir(cfg, rank, getattr(args, 'resume', False)):
            summary = run(cfg, resume=getattr(args, 'resume', False))
    except (ConfigError, DatasetError, ModelFileError, FolderLockError) as e:
        print(f'seg-train: error: {e}', file=sys.stderr)
        return 2
    except NoSpaceError as e:
        hint = ('; free space, then continue with --resume'
                if (Path(cfg.output_dir) / 'last.pt').is_file() else '')
        print(f'seg-train: error: {e}{hint}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('seg-train: interrupted', file=sys.stderr)
        return 130
    if summary is not None:
        print(f'best val mIoU {summary["best_val_miou"]:.4f} at epoch {summary["best_epoch"]} '
              f'({summary["epochs"]} epochs, {summary["time_s"]:.1f} s); '
              f'outputs in {cfg.output_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
