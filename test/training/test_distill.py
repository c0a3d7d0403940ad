"""Knowledge distillation: the KD loss, class maps, the teacher's own preprocessing, seg-train."""

import csv
import math
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from seg_training.base.classes import ClassTable, cityscapes_table, CUSTOM8, IGNORE_INDEX
from seg_training.base.yaml_reader import ConfigError
from seg_training.datasets.class_map import build_class_map
from seg_training.datasets.formats import CAMVID
from seg_training.datasets.segmentation import read_image
from seg_training.nets import provenance
from seg_training.nets.checkpoint import (build_model, load_model, ModelInfo, Normalization,
                                          read_file, save_model)
from seg_training.nets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from seg_training.nets.preprocess import Resize
from seg_training.training.config import load_config
from seg_training.training.distill import DistillLoss, kd_loss, state_hash, Teacher
from seg_training.training.loop import main
from training_data import write_folder

TINY = ['--batch-size', '2', '--workers', '0', '--no-plots', '--lr', '0.003']


def _table(*names: str, void: bool = False) -> ClassTable:
    return ClassTable(tuple(names), tuple((i, i, i) for i in range(len(names))),
                      len(names) - 1 if void else None)


def _softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


# ----------------------------------------------------------------------------- the loss

def test_kd_loss_is_hintons_soft_target_kl_times_t_squared():
    s = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]], [[-1.0, 3.0]]]])  # (1, 3, 1, 2)
    t = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.5]]]])
    temperature = 2.0
    expected = 0.0
    for px in range(2):
        q = _softmax([t[0, k, 0, px].item() / temperature for k in range(3)])
        p = _softmax([s[0, k, 0, px].item() / temperature for k in range(3)])
        expected += sum(qk * math.log(qk / pk) for qk, pk in zip(q, p)) / 2  # mean over pixels
    expected *= temperature ** 2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_t_squared_keeps_the_gradient_scale_at_any_temperature():
    # At a high T the gradient of KL(q || p) is (s - t) / (K T^2) (zero-mean logits, Hinton
    # et al. 2015, section 2.1): the T^2 factor makes it (s - t) / K whatever T is.
    torch.manual_seed(0)
    k = 5
    s0 = torch.randn(1, k, 1, 1)
    t = torch.randn(1, k, 1, 1)
    s0, t = s0 - s0.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    grads = {}
    for temperature in (50.0, 100.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, temperature).backward()
        grads[temperature] = s.grad
    for g in grads.values():
        assert torch.allclose(g, (s0 - t) / k, rtol=0.05, atol=1e-3)


def test_mapped_classes_sum_teacher_probabilities_and_weigh_the_dropped_mass(tmp_path):
    teacher = _table('a', 'b', 'c', 'void', void=True)
    student = _table('x', 'c', 'extra')  # x <- a + b; extra: no teacher class; void dropped
    path = tmp_path / 'map.yaml'
    path.write_text('x: [a, b]\n')
    cmap = build_class_map(student, teacher, path)
    assert cmap.to_dict() == {'x': ['a', 'b'], 'c': ['c']}
    assert cmap.covered == [0, 1] and cmap.dropped == ['void'] and not cmap.identity
    t = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.0]], [[-1.0, 0.0]], [[0.0, 30.0]]]])  # (1, 4, 1, 2)
    s = torch.tensor([[[[0.2, 4.0]], [[1.0, -4.0]], [[9.0, 9.0]]]])  # (1, 3, 1, 2)
    temperature = 3.0
    matrix = cmap.matrix()
    covered = torch.tensor(cmap.covered)
    got = kd_loss(s, t, temperature, matrix, covered).item()
    expected = 0.0
    for px in range(2):
        tv = [t[0, j, 0, px].item() for j in range(4)]
        pt = _softmax([v / temperature for v in tv])
        q = [pt[0] + pt[1], pt[2]]
        q = [v / sum(q) for v in q]
        w = sum(_softmax(tv)[:3])  # the teacher's belief in a mapped class
        p = _softmax([s[0, 0, 0, px].item() / temperature, s[0, 1, 0, px].item() / temperature])
        expected += w * sum(qk * math.log(qk / pk) for qk, pk in zip(q, p)) / 2
    assert got == pytest.approx(expected * temperature ** 2, rel=1e-5)
    # The second pixel is void to the teacher: it teaches (almost) nothing there.
    void_only = kd_loss(s[..., 1:], t[..., 1:], temperature, matrix, covered).item()
    assert 0.0 <= void_only < 1e-9


# ----------------------------------------------------------------------------- class maps

def test_classes_map_by_name_and_the_teacher_void_is_dropped():
    city = cityscapes_table(with_void=True)
    cmap = build_class_map(CUSTOM8, city)
    assert cmap.to_dict() == {'road': ['road'], 'sidewalk': ['sidewalk'],
                              'building': ['building'], 'pole': ['pole'],
                              'vegetation': ['vegetation'], 'sky': ['sky'],
                              'person': ['person'], 'vehicle': ['car']}
    assert 'void' in cmap.dropped and 'truck' in cmap.dropped
    # A student with a void output of its own keeps the teacher's.
    assert build_class_map(city, city).identity
    keeps = build_class_map(_table('Road', 'void', void=True), city)
    assert keeps.to_dict() == {'Road': ['road'], 'void': ['void']}
    named = build_class_map(_table('road', 'void'), city)  # no void_index, the same name
    assert named.to_dict() == {'road': ['road'], 'void': ['void']}


def test_a_class_map_file_sums_teacher_classes_and_names_take_the_rest(tmp_path):
    path = tmp_path / 'camvid_from_cityscapes.yaml'
    path.write_text('Building: [building, wall]\nTree: [vegetation]\n'
                    'Sign: [traffic sign, traffic light]\nCar: [car, truck, bus, train]\n'
                    'Pedestrian: [person]\nBicyclist: [rider, bicycle, motorcycle]\n')
    city = cityscapes_table(with_void=True)
    cmap = build_class_map(CAMVID, city, path)
    assert cmap.to_dict() == {
        'sky': ['sky'], 'building': ['building', 'wall'], 'pole': ['pole'], 'road': ['road'],
        'sidewalk': ['sidewalk'], 'tree': ['vegetation'],
        'sign': ['traffic sign', 'traffic light'], 'fence': ['fence'],
        'car': ['car', 'truck', 'bus', 'train'], 'pedestrian': ['person'],
        'bicyclist': ['rider', 'bicycle', 'motorcycle']}
    assert sorted(cmap.dropped) == ['terrain', 'void']
    m = cmap.matrix()  # (20, 11): each teacher class feeds at most one student class
    assert m.shape == (20, 11) and m.sum(1).max() == 1 and m.sum() == 18


@pytest.mark.parametrize('text, message', [
    ('Lorry: [car]\n', "student class 'Lorry' is not one of the student classes"),
    ('car: [car, lorry]\n', "car: teacher class 'lorry' is not a class of city.pt"),
    ('Car: [car]\ncar: [truck]\n', "student class 'car' is listed twice"),
    ('car: [car]\nbicyclist: [car]\n', "teacher class 'car' is listed under both 'car' and "
                                       "'bicyclist'"),
    ('car: 3\n', 'car: expected a list of teacher class names, got 3'),
    ('car: [car\n', 'not valid YAML'),
    ('- car\n', 'expected a mapping "student_class: [teacher_class, ...]"'),
])
def test_bad_class_map_files_name_the_file_and_the_class(tmp_path, text, message):
    path = tmp_path / 'map.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        build_class_map(CAMVID, cityscapes_table(with_void=True), path, 'city.pt')
    assert str(e.value).startswith(f'{path}: ') and message in str(e.value)


def test_a_teacher_without_a_common_class_is_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"teacher.pt: the teacher has no class in common with "
                       r"the student \(classes.yaml\).*--teacher-class-map"):
        build_class_map(_table('lane', 'curb'), CUSTOM8, None, 'teacher.pt', 'classes.yaml')


# ----------------------------------------------------------------------------- the teacher

class Recorder(nn.Module):
    """A teacher of no known architecture: a 1x1 conv that records its input and mode."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.detach().clone(), self.training, torch.is_grad_enabled()))
        return self.conv(x)


def test_the_teacher_sees_the_students_frame_at_its_own_preprocessing():
    torch.manual_seed(0)
    info = ModelInfo(classes=CUSTOM8, input_size=(48, 24),
                     normalization=Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
                     resize=Resize('bilinear', True))
    rec = Recorder(CUSTOM8.num_classes)
    teacher = Teacher(rec, info, 'recorder', build_class_map(CUSTOM8, CUSTOM8),
                      torch.device('cpu'))
    frame = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = ((torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    crit = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    kd = DistillLoss(crit, teacher, 2.0, 0.25, IMAGENET_MEAN, IMAGENET_STD)
    student = torch.randn(1, 8, 32, 64, requires_grad=True)
    unlabelled = torch.full((1, 32, 64), IGNORE_INDEX)
    loss, parts = kd(student, unlabelled, images)

    seen, training, grad = rec.seen[0]
    assert not training and not grad
    assert seen.shape == (1, 3, 24, 48)
    assert torch.allclose(seen[0], info.preprocessing().image(frame), atol=1e-4)
    with torch.no_grad():
        t = F.interpolate(rec.conv(seen), size=(32, 64), mode='bilinear', align_corners=False)
    assert set(parts) == {'kd'}  # no label: KD alone
    assert loss.item() == pytest.approx(kd_loss(student, t, 2.0).item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None and rec.conv.weight.grad is None

    labels = torch.randint(0, 8, (1, 32, 64))
    loss, parts = kd(student, labels, images)
    assert set(parts) == {'ce', 'kd'}
    assert loss.item() == pytest.approx(0.75 * crit(student, labels).item()
                                        + 0.25 * parts['kd'].item(), rel=1e-6)


def test_config_checks_the_distillation_options():
    for bad, message in [({'kd_temperature': 0.0}, 'kd_temperature must be positive'),
                         ({'kd_weight': 1.5}, r'kd_weight must be in \[0, 1\]'),
                         ({'teacher_class_map': 'm.yaml'}, 'teacher_class_map needs a teacher'),
                         ({'dataset': 'images'}, 'give --teacher MODEL'),
                         ({'dataset': 'images', 'teacher': 't.pt'},
                          'give --val-dataset KIND --val-data-root DIR'),
                         ({'val_dataset': 'images'}, 'val_dataset')]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=bad)


# ----------------------------------------------------------------------------- seg-train

@pytest.fixture(scope='module')
def labelled(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('data') / 'f', n_train=8, n_val=2, size=(96, 48))


@pytest.fixture(scope='module')
def frames(labelled, tmp_path_factory):
    """Copy the training frames, without their masks, into a sub-folder of a folder."""
    root = tmp_path_factory.mktemp('frames') / 'frames'
    shutil.copytree(labelled / 'images' / 'train', root / 'drive1')
    return root


@pytest.fixture(scope='module')
def teacher_file(labelled, tmp_path_factory):
    """Train a small model at 96x48 with its own normalisation (the student: 64x32, ImageNet)."""
    out = tmp_path_factory.mktemp('teacher')
    config = out / 'teacher.yaml'
    config.write_text('mean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n')
    assert main(['--dataset', 'folder', '--data-root', str(labelled), '--output-dir',
                 str(out / 'run'), '--config', str(config), '--size', '96x48', '--epochs', '8',
                 *TINY]) == 0
    return out / 'run' / 'best.pt'


def _labels(model_file: Path, paths, size=None) -> torch.Tensor:
    """(N, h, w) argmax of a model file on ``paths`` at its own preprocessing."""
    model, info = load_model(model_file)
    prep = info.preprocessing()
    with torch.no_grad():
        logits = torch.cat([model(prep.image(read_image(p))[None]) for p in paths])
    if size is not None:
        logits = F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
    return logits.argmax(1)


def test_distillation_alone_on_frames_moves_the_student_toward_the_teacher(
        labelled, frames, teacher_file, tmp_path):
    _, tinfo = load_model(teacher_file)
    assert tinfo.input_size == (96, 48) and tinfo.normalization.mean == (0.5, 0.5, 0.5)

    def student(epochs: int) -> Path:
        out = tmp_path / f'student{epochs}'
        assert main(['--dataset', 'images', '--data-root', str(frames), '--val-dataset',
                     'folder', '--val-data-root', str(labelled), '--teacher', str(teacher_file),
                     '--kd-temperature', '1', '--size', '64x32', '--epochs', str(epochs),
                     '--output-dir', str(out), '--seed', '1', *TINY]) == 0
        return out

    start, trained = student(0), student(6)
    paths = sorted(frames.rglob('*.png'))
    teacher = _labels(teacher_file, paths, (32, 64))
    before = (_labels(start / 'last.pt', paths) == teacher).float().mean().item()
    after = (_labels(trained / 'last.pt', paths) == teacher).float().mean().item()
    assert after > before + 0.1, (before, after)

    with open(trained / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r['train_ce'] == '' for r in rows)  # no labels: KD alone
    assert [float(r['train_kd']) for r in rows] == [float(r['train_loss']) for r in rows]
    assert float(rows[-1]['train_kd']) < float(rows[0]['train_kd'])
    prov = read_file(trained / 'best.pt')['provenance']
    rec = prov['teacher']
    assert rec['source'] == str(teacher_file)
    assert rec['state_sha256'] == state_hash(load_model(teacher_file)[0])
    assert rec['class_map'] == {n: [n] for n in CUSTOM8.names}
    assert rec['provenance'] == read_file(teacher_file)['provenance']
    train = [d for d in prov['datasets'] if d['role'] == 'train']
    assert [(d['dataset'], d['images'], d['root']) for d in train] == [('images', 8, str(frames))]
    assert 'distilled from' in provenance.describe(prov)


def test_real_images_come_from_the_teacher_too(tmp_path):
    synth = {'role': 'train', 'dataset': 'images', 'synthetic': True}
    real = provenance.teacher_record('city.pt', 'ab', {}, {'real_images': True})
    fake = provenance.teacher_record('synth.pt', 'ab', {}, {'real_images': False})
    unknown = provenance.teacher_record('old.pt', 'ab', {}, None)
    synth_init = provenance.init_record('synth.pt', {'real_images': False})
    assert provenance.real_images([synth], None, real) is True
    assert provenance.real_images([synth], synth_init, real) is True
    assert provenance.real_images([synth], synth_init, fake) is False
    assert provenance.real_images([synth], synth_init, unknown) is None
    # frames in a sub-folder of seg-synth's output are synthetic
    (tmp_path / provenance.SYNTH_MARKER).write_text('{}')
    (tmp_path / 'images' / 'train').mkdir(parents=True)
    assert provenance.dataset_is_synthetic(tmp_path / 'images' / 'train', within=True)
    assert not provenance.dataset_is_synthetic(tmp_path / 'images' / 'train')


def test_bad_teacher_input_gives_an_error_naming_it(labelled, frames, teacher_file, tmp_path,
                                                    capsys):
    def run(*extra: str) -> str:
        assert main(['--dataset', 'folder', '--data-root', str(labelled), '--output-dir',
                     str(tmp_path / 'out'), '--size', '64x32', '--epochs', '1', *TINY,
                     *extra]) == 2
        return capsys.readouterr().err

    missing = tmp_path / 'nowhere.pt'
    assert f'teacher {missing}: model file not found' in run('--teacher', str(missing))
    text = tmp_path / 'notes.pt'
    text.write_text('not a model')
    assert f'teacher {text}: cannot be loaded' in run('--teacher', str(text))
    other = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(3)}, other)
    assert f'teacher {other}: not a seg_perception model file' in run('--teacher', str(other))
    bad_map = tmp_path / 'map.yaml'
    bad_map.write_text('vehicle: [lorry]\n')
    err = run('--teacher', str(teacher_file), '--teacher-class-map', str(bad_map))
    assert f"{bad_map}: vehicle: teacher class 'lorry' is not a class of {teacher_file}" in err
    lanes = tmp_path / 'lanes.pt'
    info = ModelInfo(classes=_table('lane', 'curb'), input_size=(64, 32))
    save_model(build_model(info), info, lanes)
    err = run('--teacher', str(lanes))
    assert f'{lanes}: the teacher has no class in common with the student (the classes of ' \
        f'{labelled})' in err
    assert 'give --teacher MODEL' in run('--dataset', 'images', '--data-root', str(frames))
    assert not (tmp_path / 'out' / 'last.pt').exists()
