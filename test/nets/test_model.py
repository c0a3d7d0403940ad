"""ERFNet: shapes, parameter count and the structure of the reference implementation."""

import pytest
import torch
from torch import nn

from seg_training.nets.model import (count_parameters, DownsamplerBlock, ERFNet, ERFNetConfig,
                                     NonBottleneck1D, UpsamplerBlock)


def conv_params(c_in: int, c_out: int, kh: int, kw: int) -> int:
    """Weights plus biases of a (transposed) convolution."""
    return c_in * c_out * kh * kw + c_out


def bn_params(c: int) -> int:
    """Affine weight and bias of a batch-norm layer (running statistics are buffers)."""
    return 2 * c


def erfnet_params(num_classes: int, encoder_only: bool = False) -> int:
    """Parameter count from the paper's layer table (Romera et al. 2018, Table 1)."""
    def down(c_in, c_out):  # 3x3 stride-2 conv to c_out - c_in channels, concat pool, BN
        return conv_params(c_in, c_out - c_in, 3, 3) + bn_params(c_out)

    def nb1d(c):  # two (3x1, 1x3) conv pairs, a BN after each pair
        return 2 * (conv_params(c, c, 3, 1) + conv_params(c, c, 1, 3)) + 2 * bn_params(c)

    def up(c_in, c_out):  # 3x3 stride-2 transposed conv and BN
        return conv_params(c_in, c_out, 3, 3) + bn_params(c_out)

    encoder = down(3, 16) + down(16, 64) + 5 * nb1d(64) + down(64, 128) + 8 * nb1d(128)
    encoder_head = conv_params(128, num_classes, 1, 1)
    decoder = (up(128, 64) + 2 * nb1d(64) + up(64, 16) + 2 * nb1d(16)
               + conv_params(16, num_classes, 2, 2))
    # The reference Encoder always owns its 1x1 head, so full models carry it too.
    return encoder + encoder_head + decoder


@pytest.fixture(scope='module')
def model20():
    torch.manual_seed(0)
    return ERFNet(ERFNetConfig(num_classes=20)).eval()


def test_output_shape_full_resolution(model20):
    with torch.no_grad():
        y = model20(torch.rand(2, 3, 32, 64))
    assert y.shape == (2, 20, 32, 64)
    assert torch.isfinite(y).all()


def test_encoder_only_outputs_one_eighth():
    model = ERFNet(ERFNetConfig(num_classes=7, encoder_only=True)).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 48, 80))
    assert y.shape == (1, 7, 6, 10)


@pytest.mark.parametrize('num_classes', [20, 8])
def test_parameter_count_matches_layer_table(num_classes):
    model = ERFNet(ERFNetConfig(num_classes=num_classes))
    assert count_parameters(model) == erfnet_params(num_classes)


def test_parameter_count_is_about_2_06_million(model20):
    assert 2.05e6 < count_parameters(model20) < 2.07e6


def test_downsampler_concatenates_conv_and_pool():
    block = DownsamplerBlock(16, 64)
    assert block.conv.out_channels == 48 and block.conv.stride == (2, 2)
    assert block.conv.kernel_size == (3, 3)
    assert isinstance(block.pool, nn.MaxPool2d)
    # With a silent conv branch and identity BN, the last 16 channels are the 2x2 max-pool.
    nn.init.zeros_(block.conv.weight)
    nn.init.zeros_(block.conv.bias)
    block.eval()
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    scale = 1.0 / (1.0 + block.bn.eps) ** 0.5
    pooled = x.reshape(1, 16, 4, 2, 4, 2).amax(dim=(3, 5))  # (1, 16, 4, 4)
    torch.testing.assert_close(y[:, 48:], pooled * scale)
    assert torch.count_nonzero(y[:, :48]) == 0


def test_batch_norm_eps_everywhere(model20):
    bns = [m for m in model20.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 + 13 * 2 + 2 + 4 * 2  # downsamplers, encoder blocks, upsamplers, decoder
    assert all(bn.eps == 1e-3 for bn in bns)


def test_encoder_structure_dropout_and_dilations(model20):
    layers = list(model20.encoder.layers)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == (['DownsamplerBlock'] + ['NonBottleneck1D'] * 5 + ['DownsamplerBlock']
                     + ['NonBottleneck1D'] * 8)
    blocks64, blocks128 = layers[1:6], layers[7:]
    assert all(b.conv3x1_1.in_channels == 64 for b in blocks64)
    assert all(b.conv3x1_1.in_channels == 128 for b in blocks128)
    assert [b.dropout.p for b in blocks64] == [0.03] * 5
    assert [b.dropout.p for b in blocks128] == [0.3] * 8
    assert [b.conv3x1_2.dilation[0] for b in blocks128] == [2, 4, 8, 16] * 2
    assert [b.conv1x3_2.dilation[1] for b in blocks128] == [2, 4, 8, 16] * 2
    assert all(b.conv3x1_2.dilation == (1, 1) for b in blocks64)


def test_decoder_structure(model20):
    layers = list(model20.decoder.layers)
    assert [type(m) for m in layers] == [UpsamplerBlock, NonBottleneck1D, NonBottleneck1D] * 2
    assert [layers[0].conv.out_channels, layers[3].conv.out_channels] == [64, 16]
    assert all(m.dropout.p == 0 for m in layers if isinstance(m, NonBottleneck1D))
    head = model20.decoder.output_conv
    assert isinstance(head, nn.ConvTranspose2d)
    assert head.kernel_size == (2, 2) and head.stride == (2, 2) and head.out_channels == 20


def test_dropout_only_in_training_mode():
    model = ERFNet(ERFNetConfig(num_classes=4)).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # eval: deterministic
        model.train()
        torch.manual_seed(1)
        a = model.encoder(x)
        torch.manual_seed(2)
        b = model.encoder(x)
    assert not torch.equal(a, b)


@pytest.mark.parametrize('h, w', [(30, 64), (32, 60), (0, 64)])
def test_input_not_multiple_of_8_is_a_clear_error(model20, h, w):
    with pytest.raises(ValueError, match=rf'multiples of 8.*{w}x{h}'):
        model20(torch.rand(1, 3, h, w))


def test_gradients_reach_the_first_layer():
    model = ERFNet(ERFNetConfig(num_classes=4)).train()
    loss = model(torch.rand(2, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    g = model.encoder.initial_block.conv.weight.grad
    assert g is not None and torch.count_nonzero(g) > 0
