"""bench/camvid_transfer.py on a tiny CamVid-layout dataset: rows, budgets, reuse of runs."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

from file_module import load_file
from seg_training.base.classes import cityscapes_table
from seg_training.datasets.formats import CAMVID
from seg_training.nets.checkpoint import build_model, ModelInfo, save_model
from seg_training.nets.espnetv2 import ESPNetv2, ESPNetv2Config

ROOT = Path(__file__).resolve().parents[2]


def write_camvid(root: Path, counts=(('train', 6), ('val', 3), ('test', 3))) -> Path:
    """Write a CamVid folder (SegNet layout): sky, road, a car, noise; 11 = void."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        (root / split).mkdir(parents=True)
        (root / f'{split}annot').mkdir()
        for i in range(n):
            mask = np.full((36, 48), CAMVID.names.index('road'), np.uint8)
            mask[:14] = CAMVID.names.index('sky')
            mask[20:30, 10 + i:24 + i] = CAMVID.names.index('car')
            mask[0, :] = 11  # void
            rgb = CAMVID.palette()[mask].astype(np.float32) + rng.normal(0, 10, (36, 48, 3))
            name = f'seq_{i:04d}.png'
            Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(root / split / name)
            Image.fromarray(mask).save(root / f'{split}annot' / name)
    return root


def test_rows_budgets_and_reuse(tmp_path):
    bench = load_file(ROOT / 'bench' / 'camvid_transfer.py')
    data = write_camvid(tmp_path / 'camvid')
    torch.manual_seed(0)
    city = tmp_path / 'espnetv2_s_0.5_city.pth'
    torch.save(ESPNetv2(ESPNetv2Config(20, 0.5)).state_dict(), city)  # the authors' layout
    argv = ['--data-root', str(data), '--output', str(tmp_path / 'results'), '--work-dir',
            str(tmp_path / 'work'), '--rows', 'espnetv2_zero_shot,espnetv2_city_lr01,'
            'erfnet_scratch', '--epochs', '1', '--batch-size', '4', '--size', '48x32',
            '--espnetv2', str(city), '--workers', '0']
    assert bench.main(argv) == 0
    results = (tmp_path / 'results' / 'results.json').read_text()
    rows = json.loads(results)['rows']
    assert list(rows) == ['espnetv2_zero_shot', 'espnetv2_city_lr01', 'erfnet_scratch']
    assert rows['espnetv2_zero_shot']['budget'] is None
    want = {'epochs': 1, 'train_frames': 367, 'steps': 92, 'batch_size': 4, 'epochs_run': 1}
    assert rows['espnetv2_city_lr01']['budget'] == want
    for entry in rows.values():
        assert set(entry['per_class_iou']) == set(CAMVID.names)
        assert 0.0 <= entry['test_miou'] <= 1.0
    best = tmp_path / 'work' / 'espnetv2_city_lr01' / 'best.pt'
    saved = torch.load(best, weights_only=True)
    assert saved['arch'] == 'espnetv2' and saved['classes']['names'] == list(CAMVID.names)
    assert (tmp_path / 'results' / 'camvid_transfer.png').stat().st_size > 1000
    assert 'ESPNetv2 from Cityscapes, encoder at 0.1x lr' in (
        tmp_path / 'results' / 'results.md').read_text()
    stamp = best.stat().st_mtime_ns
    assert bench.main(argv) == 0  # a finished row is reused, not trained again
    assert best.stat().st_mtime_ns == stamp


def test_erfnet_init_rows_say_what_their_init_learnt_from(tmp_path):
    bench = load_file(ROOT / 'bench' / 'camvid_transfer.py')
    data = write_camvid(tmp_path / 'camvid')
    torch.manual_seed(0)
    info = ModelInfo(classes=cityscapes_table(), input_size=(48, 32))
    init = tmp_path / 'erfnet_distilled.pt'
    save_model(build_model(info), info, init, extra={'provenance': {
        'datasets': [{'role': 'train', 'dataset': 'folder', 'root': '/data/camvid_cs19',
                      'split': 'train', 'images': 6}],
        'teacher': {'source': 'models/espnetv2_cityscapes.pt'}, 'epochs': 2}})
    argv = ['--data-root', str(data), '--output', str(tmp_path / 'results'), '--work-dir',
            str(tmp_path / 'work'), '--rows', 'erfnet_init_lr01', '--epochs', '1',
            '--batch-size', '4', '--size', '48x32', '--erfnet-init', str(init),
            '--workers', '0']
    assert bench.main(argv) == 0
    row = json.loads((tmp_path / 'results' / 'results.json').read_text())['rows'][
        'erfnet_init_lr01']
    assert row['init'] == {'file': str(init), 'epochs': 2,
                           'trained_on': ['folder camvid_cs19 train (6 frames)'],
                           'teacher': 'models/espnetv2_cityscapes.pt'}
    assert (f"The ERFNet rows 'from Cityscapes' start from `{init}`: trained on folder "
            "camvid_cs19 train (6 frames), teacher models/espnetv2_cityscapes.pt, 2 epochs."
            ) in (tmp_path / 'results' / 'results.md').read_text()


def test_rows_default_to_all_and_erfnet_init_rows_follow_the_init():
    bench = load_file(ROOT / 'bench' / 'camvid_transfer.py')
    init_rows = [r for r in bench.ROWS if r.startswith('erfnet_init')]
    assert init_rows
    assert bench.select_rows(None, erfnet_init=True) == list(bench.ROWS)
    without = bench.select_rows(None, erfnet_init=False)
    assert not set(init_rows) & set(without) and 'espnetv2_city_lr01' in without
    picked = bench.select_rows(' erfnet_scratch, espnet_authors ', False)
    assert picked == ['erfnet_scratch', 'espnet_authors']
    with pytest.raises(bench.ExperimentError, match='need --erfnet-init'):
        bench.select_rows('erfnet_init_lr01', erfnet_init=False)
    with pytest.raises(bench.ExperimentError, match='unknown rows'):
        bench.select_rows('erfnet_best', erfnet_init=True)
