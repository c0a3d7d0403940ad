"""Losses: ENet class weights, cross-entropy / focal / Dice with ignore 255."""

import math

import pytest
import torch
import torch.nn.functional as F

from seg_training.training.losses import build_loss, DiceLoss, enet_class_weights, FocalLoss


def test_enet_weights_follow_the_formula():
    hist = [900, 90, 10, 0]
    w = enet_class_weights(hist, c=1.10)
    total = sum(hist)
    for k, count in enumerate(hist):
        assert w[k].item() == pytest.approx(1.0 / math.log(1.10 + count / total), rel=1e-6)
    assert w.dtype == torch.float32
    # Rarer classes weigh more; an absent class gets the bound 1 / ln(1.10).
    assert w[0] < w[1] < w[2] < w[3]
    assert w[3].item() == pytest.approx(1.0 / math.log(1.10), rel=1e-6)


def test_enet_weights_refuse_empty_histograms():
    with pytest.raises(ValueError, match='no labelled pixel'):
        enet_class_weights([0, 0, 0])
    with pytest.raises(ValueError, match='c must be > 1'):
        enet_class_weights([1, 2], c=1.0)


def _batch(k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 6, 5, generator=g)  # (B, K, H, W)
    target = torch.randint(0, k, (2, 6, 5), generator=g)  # (B, H, W)
    target[0, :2] = 255
    return logits, target


@pytest.mark.parametrize('name', ['ce', 'focal', 'dice'])
def test_ignored_pixels_do_not_matter(name):
    logits, target = _batch()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = build_loss(name, weight)
    base = loss(logits, target)
    changed = logits.clone()
    changed[0, :, :2] = torch.randn_like(changed[0, :, :2]) * 10  # only ignored pixels change
    assert torch.allclose(loss(changed, target), base)
    other = logits.clone()
    other[1, :, 3] += torch.randn_like(other[1, :, 3]) * 10
    assert not torch.allclose(loss(other, target), base)


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    logits, target = _batch()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    focal0 = FocalLoss(weight, gamma=0.0)(logits, target)
    assert focal0.item() == pytest.approx(ce.item(), rel=1e-5)
    # Focusing down-weights easy pixels: the loss shrinks as gamma grows.
    assert FocalLoss(weight, gamma=2.0)(logits, target) < ce


def test_dice_is_zero_for_a_perfect_prediction_and_large_for_a_wrong_one():
    _, target = _batch()
    safe = target.clone()
    safe[safe == 255] = 0
    perfect = F.one_hot(safe, 4).permute(0, 3, 1, 2).float() * 100.0  # (B, K, H, W)
    wrong = F.one_hot((safe + 1) % 4, 4).permute(0, 3, 1, 2).float() * 100.0
    dice = DiceLoss()
    assert dice(perfect, target).item() < 1e-3
    assert dice(wrong, target).item() > 0.7


@pytest.mark.parametrize('name', ['ce', 'focal', 'dice'])
def test_losses_give_gradients(name):
    logits, target = _batch()
    logits.requires_grad_(True)
    build_loss(name)(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert (logits.grad[0, :, :2] == 0).all()  # ignored pixels get no gradient


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match='unknown loss'):
        build_loss('hinge')
