#!/usr/bin/env python3
"""
seg-eval at the label size against seg-predict's full-size labels, on a Cityscapes-layout split.

    python bench/eval_agreement.py --data-root out/agree_cs [--model models/erfnet_synth.pt]
        [--split val] [--output bench/results/eval_agreement.json]

Without ``--data-root`` contents, one 2048x1024 frame is written there first with
``seg-synth --layout cityscapes --size 2048x1024 --train 0 --val 1``. Then: seg-eval's mIoU
(``--eval-size label`` and ``network``), seg-predict's labels for every image, and the mIoU of
those labels against the ground truth (our confusion matrix and cityscapesscripts' evaluator).
Prints and saves the JSON (with seconds and the load average).
"""

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-root', required=True)
    p.add_argument('--model', default=str(ROOT / 'models' / 'erfnet_synth.pt'))
    p.add_argument('--split', default='val')
    p.add_argument('--output', default=str(ROOT / 'bench' / 'results' / 'eval_agreement.json'))
    args = p.parse_args()
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from seg_perception.predict import main as seg_predict
    from seg_training.base.classes import cityscapes_label_to_train_id
    from seg_training.evaluation.metrics import cityscapes_evaluator, ConfusionMatrix
    from seg_training.evaluation.seg_eval import evaluate_model_file
    from seg_training.synth import generate

    root = Path(args.data_root)
    if not (root / 'leftImg8bit' / args.split).is_dir():
        generate(root, layout='cityscapes', n_train=0, n_val=1, size=(2048, 1024), seed=3)
    t0 = time.perf_counter()
    label = evaluate_model_file(args.model, 'cityscapes', root, args.split, device='cpu',
                                batch_size=1)
    t_label = time.perf_counter() - t0
    network = evaluate_model_file(args.model, 'cityscapes', root, args.split, device='cpu',
                                  batch_size=1, eval_size='network')
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'predict'
        t0 = time.perf_counter()
        seg_predict(['--model', args.model, '--device', 'cpu', '--output-dir', str(out),
                     str(root / 'leftImg8bit' / args.split)])
        t_predict = time.perf_counter() - t0
        to_train = cityscapes_label_to_train_id()
        to_label = np.zeros(256, np.uint8)
        for lb in cs_labels:
            if 0 <= lb.trainId < 19 and not lb.ignoreInEval:
                to_label[lb.trainId] = lb.id
        cm = ConfusionMatrix(19)
        gts = sorted((root / 'gtFine' / args.split).glob('*/*_gtFine_labelIds.png'))
        preds_dir = Path(tmp) / 'labelids'
        preds_dir.mkdir()
        for gt_path in gts:
            stem = gt_path.name[:-len('_gtFine_labelIds.png')]
            labels = cv2.imread(str(out / gt_path.parent.name / f'{stem}_leftImg8bit_labels.png'),
                                cv2.IMREAD_UNCHANGED)
            gt = cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED)
            cm.update(torch.from_numpy(labels), torch.from_numpy(to_train[gt]))
            cv2.imwrite(str(preds_dir / f'{stem}_pred.png'), to_label[labels])
        predict_miou = cm.compute()['miou']
        official = float(cityscapes_evaluator(gts, str(preds_dir))['averageScoreClasses'])
    result = {
        'model': args.model, 'data_root': str(root), 'images': len(gts),
        'label_sizes': label['label_sizes'], 'input_size': label['input_size'],
        'seg_eval_label_miou': label['miou'], 'seg_eval_network_miou': network['miou'],
        'seg_predict_labels_miou': predict_miou, 'cityscapesscripts_miou_of_seg_predict': official,
        'abs_diff_label_vs_predict': abs(label['miou'] - predict_miou),
        'seg_eval_label_seconds': round(t_label, 2), 'seg_predict_seconds': round(t_predict, 2),
        'loadavg_1min': float(open('/proc/loadavg').read().split()[0]),
        'torch': torch.__version__, 'cpu_threads': torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + '\n')
    return 0


if __name__ == '__main__':
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    sys.exit(main())
