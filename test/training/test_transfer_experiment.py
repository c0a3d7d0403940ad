"""The transfer-learning experiment script: a tiny run end to end, resume, the custom8 view."""

import json
from pathlib import Path

import cv2
from file_module import load_file
import numpy as np
import pytest

from seg_training.base.classes import CUSTOM8, cityscapes_table, IGNORE_INDEX
from seg_training.datasets.build import build_dataset
from seg_training.synth import generate

SCRIPT = Path(__file__).resolve().parents[2] / 'bench' / 'transfer_experiment.py'
RUN_NAMES = ('target_only', 'decoder_finetune', 'full_finetune', 'joint')
TINY = ['--quick', '--size', '64x32', '--source-train', '4', '--source-val', '2',
        '--target-train', '4', '--target-val', '2', '--epochs', '2', '--source-epochs', '1',
        '--device', 'cpu', '--threads', '1']


@pytest.fixture(scope='module')
def experiment():
    return load_file(SCRIPT)


@pytest.fixture(scope='module')
def tiny_run(experiment, tmp_path_factory):
    """Run the whole experiment once at 64x32 with four frames per domain."""
    base = tmp_path_factory.mktemp('transfer')
    work, out = base / 'work', base / 'results'
    argv = [*TINY, '--work-dir', str(work), '--output', str(out)]
    assert experiment.main(argv) == 0
    return argv, work, out


def test_tiny_experiment_writes_the_four_runs(tiny_run):
    _, work, out = tiny_run
    results = json.loads((out / 'results.json').read_text())
    assert set(RUN_NAMES) <= set(results['runs'])
    assert results['settings']['size'] == [64, 32]
    assert results['environment']['device'] == 'cpu'
    assert results['environment']['versions']['torch']
    for name in RUN_NAMES:
        run = results['runs'][name]
        for split in ('target_val', 'source_val'):
            assert 0.0 <= run[split]['miou'] <= 1.0, (name, split)
            assert set(run[split]['per_class_iou']) == set(CUSTOM8.names)
        assert run['train_time_s'] > 0
        # seg-eval on last.pt reproduces the last validation of seg-train.
        assert run['target_val']['miou'] == pytest.approx(run['seg_train_final_val_miou'],
                                                          abs=1e-6)
    # Equal target-training budgets: the joint run sees source + target for fewer epochs.
    assert results['equal_budgets']
    seen = {results['runs'][n]['budget']['samples_seen'] for n in RUN_NAMES}
    assert seen == {8}
    assert results['runs']['joint']['budget'] == {'epochs': 1, 'train_images': 8,
                                                  'samples_seen': 8, 'steps': 2}
    assert results['runs']['decoder_finetune']['freeze_encoder']
    assert results['runs']['full_finetune']['init'] == 'runs/source/best.pt'
    assert results['runs']['target_only']['init'] is None
    summary = json.loads((work / 'runs' / 'joint' / 'summary.json').read_text())
    assert summary['num_train'] == 8 and summary['init'] is None
    assert summary['config']['extra_train_roots'] == [str(work / 'data' / 'source_custom8')]
    summary = json.loads((work / 'runs' / 'decoder_finetune' / 'summary.json').read_text())
    assert summary['config']['freeze_encoder'] and summary['init']['rows']['vehicle'] == 'car'


def test_tiny_experiment_table_and_plot(tiny_run, experiment):
    _, _, out = tiny_run
    results = json.loads((out / 'results.json').read_text())
    table = (out / 'results.md').read_text()
    lines = [line for line in table.splitlines() if line.startswith('| ')]
    assert lines[0] == '| run | target val mIoU | source val mIoU | train time |'
    for name in RUN_NAMES:
        row = next(line for line in lines if line.startswith(f'| {experiment.LABELS[name]} |'))
        cells = [c.strip() for c in row.strip('|').split('|')]
        run = results['runs'][name]
        assert float(cells[1]) == pytest.approx(run['target_val']['miou'], abs=5e-4)
        assert float(cells[2]) == pytest.approx(run['source_val']['miou'], abs=5e-4)
    image = cv2.imread(str(out / 'transfer.png'))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_rerun_reuses_runs_and_refuses_other_settings(tiny_run, experiment, capsys):
    argv, work, out = tiny_run
    models = sorted(work.glob('runs/*/last.pt'))
    assert len(models) == 6  # source, four runs, the source-only reference
    before = {p: p.stat().st_mtime_ns for p in models}
    first = json.loads((out / 'results.json').read_text())
    assert experiment.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in models} == before  # nothing trained again
    again = json.loads((out / 'results.json').read_text())
    assert again['runs'] == first['runs']
    other = [a if a != '64x32' else '72x32' for a in argv]
    assert experiment.main(other) == 2
    assert 'size differ' in capsys.readouterr().err


def test_custom8_view_maps_cityscapes_classes_by_name(experiment, tmp_path):
    source = tmp_path / 'source'
    generate(source, 'cityscapes', n_train=2, n_val=2, size=(64, 32), seed=3,
             sequence_length=1)
    view = tmp_path / 'view'
    assert experiment.custom8_view(source, view) == {'train': 2, 'val': 2}
    renamed = {'car': 'vehicle', 'truck': 'vehicle', 'traffic sign': 'pole',
               'traffic light': 'pole', 'terrain': 'vegetation'}
    city = cityscapes_table().names
    expected_lut = np.full(256, IGNORE_INDEX, np.uint8)   # Cityscapes train id -> custom8
    for train_id, name in enumerate(city):
        name = renamed.get(name, name)
        if name in CUSTOM8.names:
            expected_lut[train_id] = CUSTOM8.index(name)
    for split in ('train', 'val'):
        cs = build_dataset('cityscapes', source, split)
        c8 = build_dataset('folder', view, split)
        assert c8.classes.names == CUSTOM8.names and len(c8) == len(cs) == 2
        for i in range(len(cs)):
            cs_image, train_ids = cs.load(i)
            image, mask = c8.load(i)
            assert np.array_equal(image, cs_image)
            assert np.array_equal(mask, expected_lut[train_ids])
            assert (mask != IGNORE_INDEX).mean() > 0.5


def test_update_readme_replaces_only_the_marked_block(experiment, tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\nbefore\n{experiment.README_BEGIN}\nold table\n'
                      f'{experiment.README_END}\nafter\n')
    experiment.update_readme(readme, '| run |\n|---|\n')
    assert readme.read_text() == (f'# x\n\nbefore\n{experiment.README_BEGIN}\n| run |\n|---|\n'
                                  f'{experiment.README_END}\nafter\n')
    readme.write_text('# no markers\n')
    with pytest.raises(experiment.ExperimentError, match='transfer-table'):
        experiment.update_readme(readme, 'table')
