"""Test-time augmentation: flip symmetry, scales, the single-run identity and option parsing."""

import pytest
import torch

from seg_training.model import ERFNet, ERFNetConfig
from seg_training.tta import parse_tta, TTA, tta_probabilities


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return ERFNet(ERFNetConfig(num_classes=5)).eval()


@pytest.mark.parametrize('scales', [(1.0,), (0.75, 1.0, 1.5)])
def test_flip_averaged_output_is_flip_invariant(net, scales):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 64)
    tta = TTA(scales, flip=True)
    with torch.inference_mode():
        a = tta_probabilities(net, x, tta)
        b = tta_probabilities(net, x.flip(-1), tta)
        plain = tta_probabilities(net, x, TTA(scales, flip=False))
    assert a.shape == (2, 5, 32, 64)
    torch.testing.assert_close(b, a.flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 32, 64), atol=1e-5, rtol=0)
    # without the flip the network (random weights) is not symmetric: the test can fail
    assert (plain.flip(-1) - tta_probabilities(net, x.flip(-1), TTA(scales, flip=False))
            ).abs().max() > 1e-3


def test_one_run_is_the_plain_softmax(net):
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        got = tta_probabilities(net, x, TTA((1.0,), flip=False))
        want = torch.softmax(net(x), dim=1)
    torch.testing.assert_close(got, want)


def test_parse_tta():
    assert parse_tta('flip') == TTA((1.0,), True)
    assert parse_tta('flip,0.75,1,1.25') == TTA((0.75, 1.0, 1.25), True)
    assert parse_tta('0.5,1').runs == 2 and parse_tta('flip,0.5,1').runs == 4
    with pytest.raises(ValueError, match='expected "flip"'):
        parse_tta('mirror')
    with pytest.raises(ValueError, match=r'\[0.25, 4\]'):
        parse_tta('flip,10')
