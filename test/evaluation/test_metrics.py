"""Confusion-matrix metrics: hand-checked cases and the official Cityscapes evaluator."""

import math
from pathlib import Path

from cityscapesscripts.helpers.labels import labels as cs_labels
import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn
import torch.distributed as dist
import torch.multiprocessing as mp

from seg_training.base.classes import cityscapes_label_to_train_id, cityscapes_table
from seg_training.evaluation.metrics import cityscapes_evaluator, ConfusionMatrix, evaluate
from seg_training.nets.model import ERFNet, ERFNetConfig


def _same(a, b, tol=1e-9):
    """Equal floats, NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def test_hand_checked_small_case():
    # target: 0 0 1 1 2 | pred: 0 1 1 1 0  ->  matrix [t, p]
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.matrix.dtype == torch.int64
    m = cm.compute()
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    assert np.allclose(m['per_class_iou'], [1 / 3, 2 / 3, 0.0])
    assert m['miou'] == pytest.approx(1 / 3)
    assert m['pixel_accuracy'] == pytest.approx(3 / 5)
    assert np.allclose(m['per_class_accuracy'], [0.5, 1.0, 0.0])
    assert m['mean_accuracy'] == pytest.approx(0.5)
    assert m['fw_iou'] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3 + 1 / 5 * 0.0)
    assert np.allclose(m['dice'], [0.5, 0.8, 0.0])
    assert m['mean_dice'] == pytest.approx(1.3 / 3)
    assert m['num_pixels'] == 5


def test_nan_skip_for_absent_classes():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([[0, 0], [1, 1]]), torch.tensor([[0, 0], [1, 0]]))
    m = cm.compute()
    # classes 2 and 3 appear nowhere: NaN and not averaged
    assert math.isnan(m['per_class_iou'][2]) and math.isnan(m['per_class_iou'][3])
    assert math.isnan(m['dice'][3]) and math.isnan(m['per_class_accuracy'][2])
    assert m['miou'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a class only predicted is present with IoU 0 and pulls the mean down
    cm.update(torch.tensor([3]), torch.tensor([1]))
    m = cm.compute()
    assert m['per_class_iou'][3] == 0.0
    assert math.isnan(m['per_class_accuracy'][3])  # no target pixels: accuracy undefined
    assert m['miou'] == pytest.approx((2 / 3 + 1 / 3 + 0.0) / 3)


def test_empty_matrix_is_all_nan():
    m = ConfusionMatrix(2).compute()
    assert math.isnan(m['miou']) and math.isnan(m['pixel_accuracy']) and math.isnan(m['fw_iou'])
    assert m['num_pixels'] == 0


def test_ignore_index_and_out_of_range_targets_are_skipped():
    target = torch.tensor([[0, 255, 1], [7, 1, 255]])
    pred = torch.tensor([[0, 1, 1], [0, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert cm.compute()['num_pixels'] == 3
    other = ConfusionMatrix(3, ignore_index=1)
    other.update(pred, target)
    assert other.matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_void_column_counts_against_classes_and_void_row_is_dropped():
    # 3 outputs, index 2 = void: a real pixel predicted void is a miss of its class
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 2, 1, 0, 1, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    m = cm.compute(void_index=2)
    assert math.isnan(m['per_class_iou'][2]) and math.isnan(m['dice'][2])
    # class 0: tp 1, fn 1 (predicted void), fp 1 -> 1/3; class 1: tp 1, fn 1, fp 0 (the void
    # target row does not count) -> 1/2
    assert np.allclose(m['per_class_iou'][:2], [1 / 3, 1 / 2])
    assert m['miou'] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m['pixel_accuracy'] == pytest.approx(2 / 4)
    assert m['num_pixels'] == 4
    with pytest.raises(ValueError, match='void_index'):
        cm.compute(void_index=3)


def test_batches_accumulate_and_reset():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 8, 16), generator=g)
    pred = torch.randint(0, 5, (3, 8, 16), generator=g)
    target[0, :2] = 255
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    parts = ConfusionMatrix(5)
    for i in range(3):
        parts.update(pred[i], target[i])
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == 3 * 8 * 16 - 2 * 16
    brute = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            brute[t, p] += 1
    assert whole.matrix.numpy().tolist() == brute.tolist()
    whole.reset()
    assert int(whole.matrix.sum()) == 0


def test_bad_inputs_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match='shape'):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='0..2'):
        cm.update(torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_all_reduce_is_a_no_op_without_a_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.all_reduce()
    assert cm.matrix.tolist() == [[1, 1], [0, 0]]


def _rank_data(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randint(0, 4, (2, 6, 8), generator=g),
            torch.randint(0, 4, (2, 6, 8), generator=g))


def _reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    try:
        pred, target = _rank_data(rank)
        cm = ConfusionMatrix(4)
        cm.update(pred, target)
        cm.all_reduce()
        torch.save(cm.matrix, Path(out_dir) / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_all_reduce_sums_over_two_gloo_processes(tmp_path):
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2,
             join=True)
    expected = ConfusionMatrix(4)
    for rank in range(2):
        expected.update(*_rank_data(rank))
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert torch.equal(got, expected.matrix)
    single = ConfusionMatrix(4)
    single.update(*_rank_data(0))
    assert not torch.equal(single.matrix, expected.matrix)  # the reduce really added rank 1


# --- the official Cityscapes evaluator ---------------------------------------------------------

def _train_to_label_id(with_void: bool) -> np.ndarray:
    """Train id -> Cityscapes labelId for writing predictions; void (19) -> 'unlabeled' (0)."""
    lut = np.zeros(20 if with_void else 19, dtype=np.uint8)
    for lb in cs_labels:
        if 0 <= lb.trainId < 19 and not lb.ignoreInEval:
            lut[lb.trainId] = lb.id
    return lut


def _write_cityscapes_pairs(root: Path, with_void: bool, seed: int):
    """
    GT labelId PNGs and labelId predictions in the Cityscapes layout; returns train-id arrays.

    GT uses every labelId (ignored ones included) except 'train' and 'bus'; predictions never
    use 'train' (absent everywhere: NaN) but do use 'bus' (false positives only: IoU 0).
    """
    rng = np.random.default_rng(seed)
    to_train = cityscapes_label_to_train_id()
    to_label = _train_to_label_id(with_void)
    gt_ids = [lb.id for lb in cs_labels if lb.id >= 0 and lb.name not in ('train', 'bus')]
    pred_choices = [t for t in range(len(to_label)) if cityscapes_table(True).names[t] != 'train']
    targets, preds = [], []
    for i, city in enumerate(('aachen', 'aachen', 'bochum')):
        h, w = 48, 96
        blocks = rng.choice(gt_ids, size=(h // 8, w // 8))
        gt = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)  # (H, W)
        noise = rng.integers(0, len(gt_ids), size=(h, w))
        flip = rng.random((h, w)) < 0.1
        gt[flip] = np.asarray(gt_ids, dtype=np.uint8)[noise[flip]]
        train = to_train[gt].astype(np.int64)  # (H, W), 255 = ignore
        pred = np.where(train < 255, train, 0)
        wrong = rng.random((h, w)) < 0.35
        pred[wrong] = rng.choice(pred_choices, size=int(wrong.sum()))
        stem = f'{city}_{i:06d}_000019'
        gt_dir = root / 'gtFine' / 'val' / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(gt_dir / f'{stem}_gtFine_labelIds.png')
        res_dir = root / 'results'
        res_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_label[pred]).save(res_dir / f'{stem}_pred.png')
        targets.append(torch.from_numpy(train))
        preds.append(torch.from_numpy(pred))
    return preds, targets


def _official_scores(root: Path):
    """Run cityscapesscripts' pixel-level evaluator on the files under ``root``."""
    gts = sorted(str(p) for p in (root / 'gtFine' / 'val').glob('*/*_gtFine_labelIds.png'))
    assert len(gts) == 3
    return cityscapes_evaluator(gts, str(root / 'results'))


@pytest.mark.parametrize('with_void', [False, True], ids=['19-classes', '20-with-void'])
def test_agrees_with_official_cityscapes_evaluator(tmp_path, with_void):
    preds, targets = _write_cityscapes_pairs(tmp_path, with_void, seed=3 + with_void)
    official = _official_scores(tmp_path)
    table = cityscapes_table(with_void=with_void)
    cm = ConfusionMatrix(table.num_classes)
    for p, t in zip(preds, targets):
        cm.update(p, t)
    ours = cm.compute(void_index=table.void_index)
    for name, iou in zip(table.names, ours['per_class_iou']):
        if name == 'void':
            assert math.isnan(iou)
            continue
        assert _same(iou, official['classScores'][name], 1e-6), name
    assert math.isnan(ours['per_class_iou'][table.index('train')])
    assert ours['per_class_iou'][table.index('bus')] == 0.0
    assert _same(ours['miou'], official['averageScoreClasses'], 1e-6)
    assert 0.2 < ours['miou'] < 0.9
    # the counted pixels are the official matrix restricted to evaluated labels
    conf = np.asarray(official['confMatrix'], dtype=np.int64)
    to_label = _train_to_label_id(False)
    ours_m = cm.matrix.numpy()
    assert ours_m[:19, :19].tolist() == conf[np.ix_(to_label, to_label)].tolist()


# --- evaluate() -----------------------------------------------------------------------------

class _LowResHead(nn.Module):
    """Logits at 1/4 resolution, like the encoder-only training stage."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))  # (B, K, H/4, W/4)


def _loader(num_classes: int, n: int = 4):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 16, 32, generator=g)
    targets = torch.randint(0, num_classes, (n, 16, 32), generator=g)
    targets[:, :2] = 255
    data = torch.utils.data.TensorDataset(images, targets)
    return torch.utils.data.DataLoader(data, batch_size=2)


def test_evaluate_matches_direct_computation_and_restores_mode():
    torch.manual_seed(0)
    model = ERFNet(ERFNetConfig(num_classes=5)).train()
    loader = _loader(5)
    metrics, cm = evaluate(model, loader, 5, 'cpu')
    assert model.training  # mode restored
    model.eval()
    expected = ConfusionMatrix(5)
    with torch.no_grad():
        for x, t in loader:
            expected.update(model(x).argmax(1), t)
    assert torch.equal(cm.matrix, expected.matrix)
    assert metrics['miou'] == pytest.approx(expected.compute()['miou'])
    assert metrics['num_pixels'] == 4 * 14 * 32


def test_evaluate_upsamples_low_resolution_logits():
    torch.manual_seed(0)
    model = _LowResHead(3)
    loader = _loader(3)
    metrics, cm = evaluate(model, loader, 3, 'cpu')
    expected = ConfusionMatrix(3)
    with torch.no_grad():
        for x, t in loader:
            up = nn.functional.interpolate(model(x), size=t.shape[-2:], mode='bilinear',
                                           align_corners=False)
            expected.update(up.argmax(1), t)
    assert torch.equal(cm.matrix, expected.matrix)
    assert int(cm.matrix.sum()) == 4 * 14 * 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_evaluate_on_cuda_with_amp_counts_on_the_device():
    torch.manual_seed(0)
    model = ERFNet(ERFNetConfig(num_classes=5))
    loader = _loader(5)
    cpu_metrics, cpu_cm = evaluate(model, loader, 5, 'cpu')
    metrics, cm = evaluate(model.cuda(), loader, 5, 'cuda', amp=True)
    assert cm.matrix.is_cuda
    assert torch.equal(cm.matrix.sum(1).cpu(), cpu_cm.matrix.sum(1))  # same targets counted
    assert abs(metrics['miou'] - cpu_metrics['miou']) < 0.05  # fp16 may flip a few argmaxes
