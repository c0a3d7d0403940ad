#!/usr/bin/env python3
"""
Transfer-learning experiment on synthetic domains, after Petrovai (ICCP 2017).

    python bench/transfer_experiment.py --output bench/results/transfer [--size 256x128]
        [--source-train 468 --source-val 60 --target-train 234 --target-val 60]
        [--epochs 9 --source-epochs 8] [--device auto] [--work-dir out/transfer] [--quick]

The reference fine-tunes ERFNet from Cityscapes to 294 frames of another car (234 train, 60 val)
with 8 classes. Here both domains come from ``seg-synth``: the source in the Cityscapes layout
(19 train ids, the Cityscapes look) and the target as a ``custom8`` folder dataset with another
camera, other colours and weather. Four runs get the same budget for the target-training phase
(the same number of optimisation steps of the same batch size):

a. ``target_only``: the target training split, from scratch;
b. ``decoder_finetune``: source pretraining (shared), then the decoder only on the target
   (``seg-train --init source/best.pt --freeze-encoder``);
c. ``full_finetune``: source pretraining, then the whole network on the target
   (``seg-train --init source/best.pt``);
d. ``joint``: source and target training splits together as one custom8 dataset, from scratch
   (``seg-train --extra-train-root``), with fewer epochs so that epochs x images is a's.

The source model itself, with its head mapped to custom8 and no target training
(``seg-train --epochs 0``), is reported as a reference row. Every final model (``last.pt``: the
end of the budget, not an epoch picked on the validation set) is evaluated with ``seg-eval``'s
API on the target validation split and on a custom8 view of the source validation split (the
Cityscapes label ids mapped with seg-synth's own custom8 table).

Outputs in ``--output``: ``results.json`` (device, library versions, settings, budgets, times,
target and source mIoU and per-class IoU of every run), ``results.md`` (the tables) and
``transfer.png`` (grouped bars of the two mIoUs). Datasets and runs live in ``--work-dir``; the
command is resumable: datasets, runs and evaluations already there are reused, and a run
interrupted after an epoch continues with ``seg-train --resume``.
"""

import argparse
from dataclasses import asdict, dataclass, fields
import importlib.metadata
import json
import logging
import math
import os
from pathlib import Path
import platform
import shlex
import shutil
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import torch
import yaml

from seg_training.base.classes import CUSTOM8, IGNORE_INDEX
from seg_training.base.cli import parse_size
from seg_training.base.files import atomic_path, write_json
from seg_training.evaluation.seg_eval import evaluate_model_file
from seg_training.synth import generate, label_lut
from seg_training.training import loop as seg_train

_logger = logging.getLogger('transfer_experiment')

ROOT = Path(__file__).resolve().parents[1]
# The defaults cost about 1680 training steps of the whole network (batch 6, 256x128; ~0.85 s of
# one CPU core each), 350 decoder-only steps (~0.3 s) and 3000 validation images (~0.04 s):
# about 28 minutes of one core, 20-25 minutes on a free 2-core CPU (README, "Transfer
# learning"). --quick is a smoke run of a minute or two.
DEFAULTS = {'size': '256x128', 'source_train': 468, 'source_val': 60, 'target_train': 234,
            'target_val': 60, 'epochs': 9, 'source_epochs': 8}
QUICK = {'size': '128x64', 'source_train': 24, 'source_val': 12, 'target_train': 24,
         'target_val': 12, 'epochs': 2, 'source_epochs': 2}
RUNS = ('target_only', 'decoder_finetune', 'full_finetune', 'joint')
REFERENCE_RUN = 'source_only'
LABELS = {'target_only': 'a. target only (scratch)',
          'decoder_finetune': 'b. source, then decoder on target',
          'full_finetune': 'c. source, then all on target',
          'joint': 'd. source + target jointly (scratch)',
          REFERENCE_RUN: 'source model only (reference)'}
README_BEGIN = '<!-- transfer-table:begin -->'
README_END = '<!-- transfer-table:end -->'
PACKAGES = ('torch', 'numpy', 'opencv-python-headless', 'albumentations', 'cityscapesscripts',
            'matplotlib')


class ExperimentError(RuntimeError):
    """A step of the experiment failed or its work folder holds other settings."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides the experiment's results (kept in the work folder)."""

    size: Tuple[int, int]    # network input and image size (W, H)
    source_train: int
    source_val: int
    target_train: int
    target_val: int
    epochs: int              # target-training epochs of runs a, b and c
    source_epochs: int       # source pretraining epochs (shared by b and c)
    batch_size: int
    seed: int

    @property
    def joint_epochs(self) -> int:
        """Epochs of run d over source + target: the budget of ``epochs`` x target images."""
        exact = self.epochs * self.target_train / (self.source_train + self.target_train)
        return max(1, round(exact))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['size'] = list(self.size)
        return d


# ----------------------------------------------------------------------------- datasets

def _synth(out: Path, layout: str, n_train: int, n_val: int, s: Settings,
           seed: int) -> Dict[str, Any]:
    """Write a seg-synth dataset unless ``out`` already holds this one; returns its record."""
    record_path = out / 'seg_synth.json'
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        _logger.info('dataset %s exists (%d train, %d val): reused', out, record['train'],
                     record['val'])
        return record
    if out.exists():
        shutil.rmtree(out)  # an interrupted generation; seg-synth writes its record last
    generate(out, layout, None, n_train, n_val, s.size, seed, progress=True)
    return json.loads(record_path.read_text())


def _write_classes_yaml(path: Path) -> None:
    """Write the custom8 ``classes.yaml`` of an index-mask folder dataset."""
    classes = [{'name': name, 'color': list(color), 'values': [i]}
               for i, (name, color) in enumerate(zip(CUSTOM8.names, CUSTOM8.colors))]
    text = yaml.safe_dump({'classes': classes, 'mask_format': 'index',
                           'ignore_value': IGNORE_INDEX}, sort_keys=False)
    path.write_text(text, encoding='utf-8')


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def custom8_view(cityscapes_root: Path, out: Path,
                 splits: Sequence[str] = ('train', 'val')) -> Dict[str, int]:
    """
    Write a Cityscapes-layout dataset as a custom8 folder dataset at ``out``; frames per split.

    Masks are the ``*_gtFine_labelIds.png`` files mapped with seg-synth's custom8 table
    (:func:`seg_training.synth.label_lut`): car and truck become vehicle, traffic signs and
    lights pole, terrain vegetation; other ids are ignored (255). Images are hard links (copies
    across file systems). Reused when ``out/custom8_view.json`` exists.
    """
    record_path = out / 'custom8_view.json'
    if record_path.is_file():
        return json.loads(record_path.read_text())['frames']
    if out.exists():
        shutil.rmtree(out)
    _, lut = label_lut('custom8')  # (256,) label id -> custom8 index or 255
    frames: Dict[str, int] = {}
    for split in splits:
        gt_dir = cityscapes_root / 'gtFine' / split
        label_files = sorted(gt_dir.glob('*/*_gtFine_labelIds.png'))
        if not label_files:
            raise ExperimentError(f'{gt_dir}: no */*_gtFine_labelIds.png files')
        for label_path in label_files:
            city = label_path.parent.name
            stem = label_path.name[:-len('_gtFine_labelIds.png')]
            image_path = (cityscapes_root / 'leftImg8bit' / split / city
                          / f'{stem}_leftImg8bit.png')
            if not image_path.is_file():
                raise ExperimentError(f'{image_path}: image of {label_path} not found')
            label_ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if label_ids is None or label_ids.ndim != 2 or label_ids.dtype != np.uint8:
                raise ExperimentError(f'{label_path}: not a single-channel 8-bit label image')
            image_dir = out / 'images' / split / city
            mask_dir = out / 'masks' / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            _link_or_copy(image_path, image_dir / f'{stem}.png')
            if not cv2.imwrite(str(mask_dir / f'{stem}.png'), lut[label_ids]):  # (H, W) uint8
                raise ExperimentError(f'{mask_dir / stem}.png: could not write')
        frames[split] = len(label_files)
    _write_classes_yaml(out / 'classes.yaml')
    record_path.write_text(json.dumps({'source': str(cityscapes_root), 'frames': frames},
                                      indent=2) + '\n')
    _logger.info('custom8 view of %s: %s frames in %s', cityscapes_root, frames, out)
    return frames


# ----------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class RunSpec:
    """One seg-train run of the experiment."""

    name: str
    dataset: str                       # seg-train --dataset
    data_root: Path
    epochs: int
    extra_roots: Tuple[Path, ...] = ()
    init: Optional[Path] = None
    freeze_encoder: bool = False

    def argv(self, out: Path, s: Settings, device: str, config: Path) -> List[str]:
        """Return the seg-train command line of this run."""
        args = ['--config', str(config), '--dataset', self.dataset, '--data-root',
                str(self.data_root), '--output-dir', str(out), '--epochs', str(self.epochs),
                '--size', f'{s.size[0]}x{s.size[1]}', '--batch-size', str(s.batch_size),
                '--seed', str(s.seed), '--device', device, '--workers', '0']
        for root in self.extra_roots:
            args += ['--extra-train-root', str(root)]
        if self.init is not None:
            args += ['--init', str(self.init)]
        if self.freeze_encoder:
            args.append('--freeze-encoder')
        return args


def seg_train_once(name: str, argv: List[str], out: Path) -> Dict[str, Any]:
    """
    Run seg-train with ``argv`` unless ``out/summary.json`` exists; returns the summary.

    A run interrupted earlier (``out/last.pt``, no summary) continues with ``--resume``.
    """
    summary_path = out / 'summary.json'
    if summary_path.is_file():
        _logger.info('run %s: %s exists, not trained again', name, summary_path)
        return json.loads(summary_path.read_text())
    if (out / 'last.pt').is_file():
        _logger.info('run %s: continuing the interrupted run in %s', name, out)
        argv = argv + ['--resume']
    _logger.info('run %s: seg-train %s', name, ' '.join(argv))
    rc = seg_train.main(argv)
    if rc == 130:
        raise KeyboardInterrupt(f'run {name} interrupted')
    if rc != 0 or not summary_path.is_file():
        raise ExperimentError(f'run {name}: seg-train failed (exit status {rc}); its '
                              f'outputs are in {out}')
    return json.loads(summary_path.read_text())


def train_run(spec: RunSpec, out: Path, s: Settings, device: str,
              config: Path) -> Dict[str, Any]:
    """Train with seg-train unless ``out/summary.json`` exists; returns the summary."""
    return seg_train_once(spec.name, spec.argv(out, s, device, config), out)


def evaluate_cached(model: Path, dataset: str, root: Path, out_json: Path,
                    device: str, split: str = 'val', **options: Any) -> Dict[str, Any]:
    """seg-eval of ``model`` on ``split`` of ``dataset`` at ``root``, cached in out_json."""
    if out_json.is_file():
        return json.loads(out_json.read_text())
    options.setdefault('workers', 0)
    report = evaluate_model_file(model, dataset, root, split, device=device, **options)
    report.pop('confusion_matrix', None)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, out_json)
    return report


def _budget(epochs: int, images: int, batch_size: int) -> Dict[str, int]:
    return {'epochs': epochs, 'train_images': images, 'samples_seen': epochs * images,
            'steps': epochs * math.ceil(images / batch_size)}


# ----------------------------------------------------------------------------- records

def environment(device: str) -> Dict[str, Any]:
    """Device, CPU, thread count, Python and library versions, and the project's commit."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    resolved = torch.device('cuda' if device == 'auto' and torch.cuda.is_available()
                            else ('cpu' if device == 'auto' else device))
    versions = {'python': platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {'device': str(resolved),
            'device_name': torch.cuda.get_device_name(resolved) if resolved.type == 'cuda'
            else cpu,
            'cpu': cpu, 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'platform': platform.platform(), 'versions': versions, 'commit': commit}


def _miou(v: Optional[float]) -> str:
    return '-' if v is None else f'{v:.3f}'


def _count(n: int, noun: str) -> str:
    return f'{n} {noun}' + ('' if n == 1 else 's')


def _seconds(v: float) -> str:
    return f'{v:.1f} s' if v < 10 else f'{v:.0f} s'


def results_markdown(results: Dict[str, Any]) -> str:
    """Return the tables of results.md: mIoUs and times, then target per-class IoU."""
    s = results['settings']
    env = results['environment']
    rows = [*RUNS, REFERENCE_RUN]
    runs = results['runs']
    lines = [
        '| run | target val mIoU | source val mIoU | train time |',
        '|---|---:|---:|---:|']
    for name in rows:
        r = runs[name]
        lines.append(f'| {LABELS[name]} | {_miou(r["target_val"]["miou"])} | '
                     f'{_miou(r["source_val"]["miou"])} | {_seconds(r["train_time_s"])} |')
    src = results['source_pretraining']
    a, d = runs['target_only']['budget'], runs['joint']['budget']
    notes = (
        f'Synthetic domains at {s["size"][0]}x{s["size"][1]}: source {s["source_train"]} train '
        f'/ {s["source_val"]} val frames (Cityscapes layout and look), target '
        f'{s["target_train"]} / {s["target_val"]} (custom8, another camera and weather). '
        f'Target-training budget of every run: {a["steps"]} steps of batch {s["batch_size"]} '
        f'({a["samples_seen"]} samples; d: {_count(d["epochs"], "epoch")} of '
        f'{d["train_images"]} images). b and c start from the source pretraining '
        f'({_count(s["source_epochs"], "epoch")}, {_seconds(src["train_time_s"])}, source val '
        f'mIoU {_miou(src["source_val_miou_19"])} over 19 classes), which is not in their '
        'times. mIoU of the final models (end of the budget) over the 8 classes; source val is '
        'the custom8 view of the source validation frames. Device: '
        f'{env["device"]} ({env["device_name"]}, {_count(env["torch_threads"], "thread")}), '
        f'torch {env["versions"]["torch"]}.')
    lines += [
        '',
        *textwrap.wrap(notes, 99),
        '',
        '| run | ' + ' | '.join(CUSTOM8.names) + ' |',
        '|---|' + '---:|' * CUSTOM8.num_classes]
    for name in rows:
        ious = runs[name]['target_val']['per_class_iou']
        lines.append(f'| {LABELS[name]} | '
                     + ' | '.join(_miou(ious.get(c)) for c in CUSTOM8.names) + ' |')
    lines += ['', 'Per-class IoU on the target validation split.']
    if results.get('quick'):
        lines = ['**Smoke-test settings (`--quick`): these numbers only show that the pipeline',
                 'runs; the experiment\'s result comes from the default settings.**', '', *lines]
    return '\n'.join(lines) + '\n'


def plot_results(results: Dict[str, Any], out_png: Path) -> Path:
    """Draw grouped bars of the target and source val mIoU of each run into ``out_png``."""
    names = [*RUNS, REFERENCE_RUN]
    runs = results['runs']
    target = [runs[n]['target_val']['miou'] or 0.0 for n in names]
    source = [runs[n]['source_val']['miou'] or 0.0 for n in names]
    fig = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.38
    for offset, values, label, color in ((-width / 2, target, 'target val', '#1f77b4'),
                                         (width / 2, source, 'source val (custom8)', '#ff7f0e')):
        bars = ax.bar(x + offset, values, width, label=label, color=color)
        ax.bar_label(bars, fmt='%.2f', fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([LABELS[n].replace(', ', ',\n').replace(' (', '\n(') for n in names],
                       fontsize=8)
    ax.set_ylabel('mIoU (8 classes)')
    ax.set_ylim(0, 1)
    s = results['settings']
    ax.set_title(f'Transfer to the target domain: equal target budgets '
                 f'({s["size"][0]}x{s["size"][1]}, {results["environment"]["device"]})')
    ax.legend(loc='upper left')
    ax.grid(axis='y', alpha=0.3)
    with atomic_path(out_png, suffix='.png') as tmp:
        fig.savefig(tmp, format='png', bbox_inches='tight')
    return out_png


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the transfer-table markers of ``readme`` with ``table``."""
    text = readme.read_text(encoding='utf-8')
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ExperimentError(f'{readme}: no {README_BEGIN} ... {README_END} block')
    head = text[:begin + len(README_BEGIN)]
    readme.write_text(head + '\n' + table + text[end:], encoding='utf-8')


# ----------------------------------------------------------------------------- the experiment

def _check_settings(work: Path, s: Settings) -> None:
    path = work / 'experiment.json'
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != s.to_dict():
            changed = [k for k in saved if saved[k] != s.to_dict().get(k)]
            raise ExperimentError(
                f'{work}: holds an experiment with other settings ({", ".join(changed)} differ, '
                f'see {path}); choose another --work-dir or delete that one')
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(s.to_dict(), indent=2) + '\n')


def _eval_pair(name: str, model: Path, run_dir: Path, target: Path, source_c8: Path,
               device: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    _logger.info('run %s: evaluating %s on target val and source val (custom8)', name, model)
    tgt = evaluate_cached(model, 'folder', target, run_dir / 'eval_target_val.json', device)
    src = evaluate_cached(model, 'folder', source_c8, run_dir / 'eval_source_val.json', device)
    return tgt, src


def _brief(report: Dict[str, Any]) -> Dict[str, Any]:
    return {k: report[k] for k in ('miou', 'per_class_iou', 'pixel_accuracy', 'mean_accuracy',
                                   'num_images')}


def run_experiment(s: Settings, work: Path, output: Path, device: str = 'auto',
                   readme: Optional[Path] = None, command: Optional[str] = None,
                   quick: bool = False) -> Dict[str, Any]:
    """Run (or resume) the whole experiment; write and return results.json's content."""
    if s.joint_epochs * (s.source_train + s.target_train) != s.epochs * s.target_train:
        _logger.warning('run d: %d epochs x %d images = %d samples, not the %d of the other '
                        'runs; choose --source-train so that --epochs x --target-train is a '
                        'multiple of source + target images for equal budgets',
                        s.joint_epochs, s.source_train + s.target_train,
                        s.joint_epochs * (s.source_train + s.target_train),
                        s.epochs * s.target_train)
    _check_settings(work, s)
    data, runs_dir = work / 'data', work / 'runs'
    source, target, source_c8 = data / 'source', data / 'target', data / 'source_custom8'
    config = work / 'train_overrides.yaml'
    config.write_text('# the experiment redraws the curves once, at the end of each run\n'
                      'plots_every_epoch: false\n')

    _logger.info('[1/4] datasets in %s', data)
    datasets = {'source': _synth(source, 'cityscapes', s.source_train, s.source_val, s, s.seed),
                'target': _synth(target, 'folder', s.target_train, s.target_val, s, s.seed + 1),
                'source_custom8': custom8_view(source, source_c8)}

    _logger.info('[2/4] source pretraining: %d epochs on %d frames', s.source_epochs,
                 s.source_train)
    src_dir = runs_dir / 'source'
    src_summary = train_run(RunSpec('source', 'cityscapes', source, s.source_epochs), src_dir,
                            s, device, config)
    source_model = src_dir / 'best.pt'

    _logger.info('[3/4] target runs: %d epochs on %d target frames each (d: %d epochs on %d)',
                 s.epochs, s.target_train, s.joint_epochs, s.source_train + s.target_train)
    specs = [RunSpec('target_only', 'folder', target, s.epochs),
             RunSpec('decoder_finetune', 'folder', target, s.epochs, init=source_model,
                     freeze_encoder=True),
             RunSpec('full_finetune', 'folder', target, s.epochs, init=source_model),
             RunSpec('joint', 'folder', target, s.joint_epochs, extra_roots=(source_c8,)),
             RunSpec(REFERENCE_RUN, 'folder', target, 0, init=source_model)]
    runs: Dict[str, Dict[str, Any]] = {}
    for i, spec in enumerate(specs):
        _logger.info('run %d/%d: %s', i + 1, len(specs), LABELS[spec.name])
        run_dir = runs_dir / spec.name
        summary = train_run(spec, run_dir, s, device, config)
        images = summary['num_train']
        runs[spec.name] = {
            'label': LABELS[spec.name], 'reference': spec.name == REFERENCE_RUN,
            'init': str(spec.init.relative_to(work)) if spec.init else None,
            'freeze_encoder': spec.freeze_encoder,
            'train_roots': [str(p.relative_to(work))
                            for p in (spec.data_root, *spec.extra_roots)],
            'budget': _budget(spec.epochs, images, s.batch_size),
            'train_time_s': summary['epoch_time_s'],
            'seg_train_best_val_miou': summary['best_val_miou'],
            'seg_train_best_epoch': summary['best_epoch'],
            'seg_train_final_val_miou': summary['final_val']['miou'],
            'model': str((run_dir / 'last.pt').relative_to(work))}

    _logger.info('[4/4] evaluation of the final models')
    for name, record in runs.items():
        tgt, src = _eval_pair(name, work / record['model'], runs_dir / name, target, source_c8,
                              device)
        record['target_val'] = _brief(tgt)
        record['source_val'] = _brief(src)
    src_eval = evaluate_cached(source_model, 'cityscapes', source,
                               src_dir / 'eval_source_val_19.json', device)

    budgets = {runs[n]['budget']['samples_seen'] for n in RUNS}
    results = {
        'experiment': 'transfer learning on synthetic domains (Petrovai, ICCP 2017)',
        'command': command,
        'quick': quick,
        'environment': environment(device),
        'settings': dict(s.to_dict(), joint_epochs=s.joint_epochs),
        'equal_budgets': len(budgets) == 1,
        'datasets': datasets,
        'source_pretraining': {
            'budget': _budget(s.source_epochs, src_summary['num_train'], s.batch_size),
            'train_time_s': src_summary['epoch_time_s'],
            'best_epoch': src_summary['best_epoch'],
            'source_val_miou_19': src_eval['miou'],
            'source_val_per_class_iou_19': src_eval['per_class_iou'],
            'model': str(source_model.relative_to(work))},
        'runs': runs,
        'total_train_time_s': round(src_summary['epoch_time_s']
                                    + sum(r['train_time_s'] for r in runs.values()), 1),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(results, output / 'results.json')
    table = results_markdown(results)
    (output / 'results.md').write_text('# Transfer learning on synthetic domains\n\n' + table,
                                       encoding='utf-8')
    plot_results(results, output / 'transfer.png')
    if readme is not None:
        update_readme(readme, table)
    _logger.info('wrote %s, %s and %s', output / 'results.json', output / 'results.md',
                 output / 'transfer.png')
    return results


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    """Build the command line parser; the help states the defaults and what they cost."""
    d, q = DEFAULTS, QUICK
    p = argparse.ArgumentParser(
        prog='transfer_experiment.py',
        description='Transfer-learning experiment on synthetic domains: target only, source '
        'then decoder, source then all, source + target jointly, with equal target-training '
        'budgets. Defaults: ' + ', '.join(f'--{k.replace("_", "-")} {v}' for k, v in d.items())
        + ', batch 6 (about 20-25 minutes on a free 2-core CPU). --quick: '
        + ', '.join(f'--{k.replace("_", "-")} {v}' for k, v in q.items())
        + '. Options given explicitly override either set.')
    p.add_argument('--output', required=True,
                   help='folder for results.json, results.md and transfer.png')
    p.add_argument('--work-dir',
                   help='datasets and runs (default out/transfer in the repository, '
                   'out/transfer-quick with --quick)')
    p.add_argument('--size', help=f'image and network size WxH (default {d["size"]})')
    p.add_argument('--source-train', type=int,
                   help=f'source training frames (default {d["source_train"]})')
    p.add_argument('--source-val', type=int,
                   help=f'source validation frames (default {d["source_val"]})')
    p.add_argument('--target-train', type=int,
                   help=f'target training frames (default {d["target_train"]}, as the reference)')
    p.add_argument('--target-val', type=int,
                   help=f'target validation frames (default {d["target_val"]})')
    p.add_argument('--epochs', type=int,
                   help=f'target-training epochs of runs a-c (default {d["epochs"]}); run d gets '
                   'epochs x target / (source + target)')
    p.add_argument('--source-epochs', type=int,
                   help=f'source pretraining epochs (default {d["source_epochs"]})')
    p.add_argument('--batch-size', type=int, default=6, help='batch size (default 6)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the data (source seed, target seed + 1) and of training')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default auto)')
    p.add_argument('--threads', type=int,
                   help='torch CPU threads (default: torch\'s choice); 1 helps on a busy CPU')
    p.add_argument('--quick', action='store_true',
                   help='small smoke-test settings (see above)')
    p.add_argument('--readme', help='also put the table into this README between the '
                   f'{README_BEGIN} and {README_END} lines')
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge the explicit options onto the default or quick settings and check them."""
    base = QUICK if args.quick else DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in base.items()}
    size = parse_size(values.pop('size'))
    if size[0] % 8 or size[1] % 8:
        raise ValueError(f'--size {size[0]}x{size[1]}: width and height must be multiples of 8')
    s = Settings(size=size, batch_size=args.batch_size, seed=args.seed, **values)
    for f in fields(s):
        value = getattr(s, f.name)
        if f.name not in ('size', 'seed') and value < 1:
            raise ValueError(f'--{f.name.replace("_", "-")} must be at least 1, got {value}')
    return s


def main(argv: Optional[List[str]] = None) -> int:
    """Run the experiment from the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: '
                        '%(message)s')
    try:
        s = settings_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = 'python bench/transfer_experiment.py ' + shlex.join(
        sys.argv[1:] if argv is None else argv)
    try:
        work = Path(args.work_dir) if args.work_dir else (
            ROOT / 'out' / ('transfer-quick' if args.quick else 'transfer'))
        results = run_experiment(s, work, Path(args.output), args.device,
                                 Path(args.readme) if args.readme else None, command,
                                 args.quick)
    except ExperimentError as e:
        print(f'transfer_experiment: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('transfer_experiment: interrupted; the same command continues where it stopped',
              file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
    print(results_markdown(results), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
