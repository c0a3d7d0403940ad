#!/usr/bin/env python3
"""
A real ERFNet: distilled from the ESPNetv2 Cityscapes model on real CamVid driving frames.

    python bench/distill_erfnet.py --camvid-root CAMVID --work-dir out/erfnet_distill
        [--cityscapes-root CS] [--epochs 6] [--batch-size 8] [--size 480x352]
        [--output bench/results/erfnet_distill]

The student is ERFNet with the 19 Cityscapes classes, started from the bundled synthetic model
(``models/erfnet_synth.pt``); the teacher is ``models/espnetv2_cityscapes.pt`` at its own
1024x512 input. It trains with ``seg-train --teacher`` on CamVid's ``train`` frames (367, the
SegNet tutorial's folder, CC BY-NC 4.0) with CamVid's hand labels where one CamVid class is one
Cityscapes class (:data:`CAMVID_AS_CITYSCAPES`; the rest is ignored by the cross-entropy and
learnt from the teacher alone): ``loss = (1 - a) CE + a KD``. CamVid's ``val`` frames, labelled
the same way, choose the model; the ``test`` frames never choose anything.

The run lives in ``--work-dir``: ``camvid_cityscapes19/`` (a folder dataset whose images and
masks are links to the CamVid folder, with the classes.yaml below) and ``run/`` (the seg-train
output; an interrupted run continues with ``--resume``, a finished one is not trained again).
Then the student, and the teacher for reference, are scored by seg-eval on CamVid ``test``
through ``config/class_maps/camvid_from_cityscapes.yaml`` at the student's input size, and on
the Cityscapes frames of ``--cityscapes-root`` (Cityscapes layout, split ``val``) if given,
with the student's label agreement with the teacher there. Writes ``results.json`` and
``results.md`` to ``--output``.
"""

import argparse
import logging
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_experiment import environment, evaluate_cached, seg_train_once  # noqa: E402

from seg_training.base.files import write_json  # noqa: E402

_logger = logging.getLogger('distill_erfnet')

TEACHER = ROOT / 'models' / 'espnetv2_cityscapes.pt'
STUDENT_INIT = ROOT / 'models' / 'erfnet_synth.pt'
CLASS_MAP = ROOT / 'config' / 'class_maps' / 'camvid_from_cityscapes.yaml'
# CamVid's masks (SegNet tutorial: sky 0, building 1, pole 2, road 3, pavement 4, tree 5,
# sign-symbol 6, fence 7, car 8, pedestrian 9, bicyclist 10, void 11) read as the 19 Cityscapes
# classes. Sign-symbol (traffic signs and lights) and bicyclist (riders and their bicycles) span
# several Cityscapes classes, and void is unlabelled: those pixels are ignored. Building and car
# are taken as Cityscapes' building and car (CamVid's walls and trucks are few). Cityscapes
# classes CamVid has no label for get values no CamVid mask holds (20-29).
CAMVID_AS_CITYSCAPES = """\
# CamVid's hand labels as the 19 Cityscapes classes (written by bench/distill_erfnet.py)
mask_format: index
classes:
  - {name: road, color: [128, 64, 128], values: [3]}
  - {name: sidewalk, color: [244, 35, 232], values: [4]}
  - {name: building, color: [70, 70, 70], values: [1]}
  - {name: wall, color: [102, 102, 156], values: [20]}
  - {name: fence, color: [190, 153, 153], values: [7]}
  - {name: pole, color: [153, 153, 153], values: [2]}
  - {name: traffic light, color: [250, 170, 30], values: [21]}
  - {name: traffic sign, color: [220, 220, 0], values: [22]}
  - {name: vegetation, color: [107, 142, 35], values: [5]}
  - {name: terrain, color: [152, 251, 152], values: [23]}
  - {name: sky, color: [70, 130, 180], values: [0]}
  - {name: person, color: [220, 20, 60], values: [9]}
  - {name: rider, color: [255, 0, 0], values: [24]}
  - {name: car, color: [0, 0, 142], values: [8]}
  - {name: truck, color: [0, 0, 70], values: [25]}
  - {name: bus, color: [0, 60, 100], values: [26]}
  - {name: train, color: [0, 80, 100], values: [27]}
  - {name: motorcycle, color: [0, 0, 230], values: [28]}
  - {name: bicycle, color: [119, 11, 32], values: [29]}
"""


def camvid_view(camvid: Path, out: Path) -> Path:
    """Write (or keep) the folder dataset that reads CamVid as Cityscapes classes."""
    for split in ('train', 'val', 'test'):
        for kind, name in (('images', split), ('masks', f'{split}annot')):
            link = out / kind / split
            target = (camvid / name).resolve()
            if not target.is_dir():
                raise SystemExit(f'distill_erfnet: {camvid / name}: not found (expected the '
                                 'SegNet tutorial\'s CamVid folder)')
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and link.resolve() != target:
                link.unlink()
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
    (out / 'classes.yaml').write_text(CAMVID_AS_CITYSCAPES)
    return out


def train_argv(args: argparse.Namespace, data: Path, out: Path) -> List[str]:
    """seg-train's arguments of the distillation run."""
    return ['--dataset', 'folder', '--data-root', str(data), '--output-dir', str(out),
            '--init', str(args.init), '--teacher', str(args.teacher),
            '--kd-weight', str(args.kd_weight), '--kd-temperature', str(args.kd_temperature),
            '--size', args.size, '--epochs', str(args.epochs), '--batch-size',
            str(args.batch_size), '--lr', str(args.lr), '--seed', str(args.seed),
            '--device', args.device, '--workers', str(args.workers)]


def agreement(student: Path, teacher: Path, root: Path) -> Dict[str, Any]:
    """Pixels where the student's published labels equal the teacher's, Cityscapes val frames."""
    from seg_perception.pipeline import SegmentationPipeline
    from seg_training.datasets.build import build_dataset
    from seg_training.evaluation.seg_eval import iter_label_predictions
    from seg_training.nets.checkpoint import load_model

    ds = build_dataset('cityscapes', root, 'val')
    pipes = [SegmentationPipeline(*load_model(m), device='cpu', warmup=False)
             for m in (student, teacher)]
    equal = total = 0
    for (_, a, _), (_, b, _) in zip(*(iter_label_predictions(p, ds) for p in pipes)):
        equal += int(np.count_nonzero(a == b))
        total += a.size
    return {'frames': len(ds), 'label_agreement': round(equal / total, 4)}


def brief(report: Dict[str, Any]) -> Dict[str, Any]:
    keys = ('miou', 'pixel_accuracy', 'per_class_iou', 'num_images', 'input_size', 'class_map')
    return {k: report.get(k) for k in keys}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or continue) the student, score it and the teacher; return the results."""
    work = Path(args.work_dir)
    data = camvid_view(Path(args.camvid_root), work / 'camvid_cityscapes19')
    t0 = time.time()
    summary = seg_train_once('erfnet_distill', train_argv(args, data, work / 'run'),
                             work / 'run')
    student = work / 'run' / 'best.pt'
    results: Dict[str, Any] = {
        'environment': environment(args.device),
        'settings': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        'train': {k: summary.get(k) for k in ('best_val_miou', 'best_epoch', 'epochs', 'time_s')},
        'budget': {'epochs': args.epochs, 'train_frames': 367, 'batch_size': args.batch_size},
        'scores': {}}
    w, h = (int(v) for v in args.size.split('x'))
    for name, model in (('student', student), ('teacher', Path(args.teacher))):
        scores: Dict[str, Any] = {}
        scores['camvid_test'] = brief(evaluate_cached(
            model, 'camvid', Path(args.camvid_root), work / f'{name}_camvid_test.json',
            args.device, 'test', size=(w, h), class_map=CLASS_MAP, batch_size=2))
        if args.cityscapes_root:
            scores['cityscapes_val'] = brief(evaluate_cached(
                model, 'cityscapes', Path(args.cityscapes_root),
                work / f'{name}_cityscapes_val.json', args.device, 'val', batch_size=1))
        results['scores'][name] = scores
    if args.cityscapes_root:
        results['scores']['student']['agreement_with_teacher'] = agreement(
            student, Path(args.teacher), Path(args.cityscapes_root))
    results['seconds'] = round(time.time() - t0, 1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / 'results.json')
    (out / 'results.md').write_text(markdown(results))
    return results


def markdown(results: Dict[str, Any]) -> str:
    """Return the table of the student against its teacher."""
    lines = ['| model | CamVid test mIoU (class map) | Cityscapes frames mIoU | '
             'agreement with the teacher |', '|---|---:|---:|---:|']
    for name, label in (('student', 'ERFNet, distilled'), ('teacher', 'ESPNetv2 (teacher)')):
        s = results['scores'][name]
        cs = s.get('cityscapes_val', {}).get('miou')
        agree = s.get('agreement_with_teacher', {}).get('label_agreement')
        lines.append(f"| {label} | {s['camvid_test']['miou']:.3f} | "
                     f"{'-' if cs is None else f'{cs:.3f}'} | "
                     f"{'-' if agree is None else f'{agree:.1%}'} |")
    t = results['train']
    lines.append('')
    lines.append(f"Budget: {results['budget']['epochs']} epochs x 367 CamVid train frames, batch "
                 f"{results['budget']['batch_size']}; best val mIoU {t['best_val_miou']:.3f} "
                 f"at epoch {t['best_epoch']}; {t['time_s'] / 60:.0f} min of training.")
    return '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.strip().split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--camvid-root', type=Path, required=True, help='CamVid (SegNet layout)')
    p.add_argument('--cityscapes-root', type=Path, default=None,
                   help='Cityscapes-layout folder whose val frames score the student')
    p.add_argument('--work-dir', type=Path, default=ROOT / 'out' / 'erfnet_distill')
    p.add_argument('--output', type=Path, default=ROOT / 'bench' / 'results' / 'erfnet_distill')
    p.add_argument('--teacher', type=Path, default=TEACHER)
    p.add_argument('--init', type=Path, default=STUDENT_INIT)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--lr', type=float, default=5e-4)
    p.add_argument('--kd-weight', type=float, default=0.5)
    p.add_argument('--kd-temperature', type=float, default=2.0)
    p.add_argument('--size', default='480x352', help='student input WxH (multiples of 8)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--workers', type=int, default=1)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: '
                        '%(message)s')
    args = build_parser().parse_args(argv)
    results = run(args)
    print(markdown(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
