"""
ERFNet: Efficient Residual Factorized ConvNet (Romera et al., T-ITS 2018).

Module and parameter names follow the reference implementation so that the official
``erfnet_pretrained.pth`` state_dict loads key for key (after the ``module.`` prefix is
stripped): ``encoder.initial_block``, ``encoder.layers.N``, ``encoder.output_conv``,
``decoder.layers.N``, ``decoder.output_conv``.
"""

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

BN_EPS = 1e-3
# Total stride of the encoder; network input height and width must be multiples of it.
STRIDE = 8


@dataclass(frozen=True)
class ERFNetConfig:
    """Architecture hyper-parameters: the single constructor argument of :class:`ERFNet`."""

    num_classes: int = 20
    encoder_only: bool = False
    encoder_dropout_64: float = 0.03
    encoder_dropout_128: float = 0.3


class DownsamplerBlock(nn.Module):
    """3x3 stride-2 conv concatenated with 2x2 max-pool, then BN and ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        assert out_ch > in_ch, 'the conv branch adds out_ch - in_ch channels to the pooled input'
        self.conv = nn.Conv2d(in_ch, out_ch - in_ch, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.conv(x), self.pool(x)], 1)  # (B, out_ch, H/2, W/2)
        return F.relu(self.bn(y))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorised (3x1, 1x3) conv pairs, the second pair dilated."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), stride=1, padding=(d, 0), bias=True,
                                   dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), stride=1, padding=(0, d), bias=True,
                                   dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.bn2(self.conv1x3_2(y))
        if self.dropout.p != 0:
            y = self.dropout(y)
        return F.relu(y + x)  # (B, C, H, W)


class UpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed conv, BN and ReLU: doubles height and width."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # (B, out_ch, 2H, 2W)


class Encoder(nn.Module):
    """Encoder to 1/8 resolution, 128 channels; ``output_conv`` is the encoder-only head."""

    def __init__(self, cfg: ERFNetConfig) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        layers: list = [DownsamplerBlock(16, 64)]
        layers += [NonBottleneck1D(64, cfg.encoder_dropout_64, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            layers += [NonBottleneck1D(128, cfg.encoder_dropout_128, d) for d in (2, 4, 8, 16)]
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.Conv2d(128, cfg.num_classes, 1, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor, predict: bool = False) -> torch.Tensor:
        y = self.initial_block(x)  # (B, 16, H/2, W/2)
        for layer in self.layers:
            y = layer(y)  # ends at (B, 128, H/8, W/8)
        if predict:
            y = self.output_conv(y)  # (B, num_classes, H/8, W/8)
        return y


class Decoder(nn.Module):
    """Two upsampler stages with two residual blocks each, then a 2x2 stride-2 output deconv."""

    def __init__(self, cfg: ERFNetConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            UpsamplerBlock(128, 64),
            NonBottleneck1D(64, 0.0, 1),
            NonBottleneck1D(64, 0.0, 1),
            UpsamplerBlock(64, 16),
            NonBottleneck1D(16, 0.0, 1),
            NonBottleneck1D(16, 0.0, 1),
        ])
        self.output_conv = nn.ConvTranspose2d(16, cfg.num_classes, 2, stride=2, padding=0,
                                              output_padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x  # (B, 128, H/8, W/8)
        for layer in self.layers:
            y = layer(y)  # ends at (B, 16, H/2, W/2)
        return self.output_conv(y)  # (B, num_classes, H, W)


class ERFNet(nn.Module):
    """
    ERFNet for semantic segmentation; returns raw logits.

    With ``cfg.encoder_only`` the forward pass stops after the encoder and its 1x1 head and
    returns logits at 1/8 of the input resolution (the first stage of the reference schedule).
    """

    def __init__(self, cfg: ERFNetConfig) -> None:
        super().__init__()
        assert cfg.num_classes >= 1, 'num_classes must be positive'
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        if self.cfg.encoder_only:
            return self.encoder(x, predict=True)  # (B, num_classes, H/8, W/8)
        return self.decoder(self.encoder(x))  # (B, num_classes, H, W)


def check_multiple(label: str, stride: int, height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of ``stride``."""
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise ValueError(f'{label} input height and width must be positive multiples of '
                         f'{stride}, got {width}x{height} (WxH)')


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of the encoder stride."""
    check_multiple('ERFNet', STRIDE, height, width)


def count_parameters(model: nn.Module) -> int:
    """Count the trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
