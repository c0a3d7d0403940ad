"""
ESPNetv2 for semantic segmentation (Mehta et al., CVPR 2019), the second architecture.

Module and parameter names follow the authors' layer layout (github.com/sacmehta/EdgeNets,
``model/segmentation/espnetv2.py``, MIT) so that their published Cityscapes state_dicts
(``espnetv2_s_{0.5,1.0,1.5,2.0}_city_1024x512.pth``) load key for key: the ImageNet backbone
under ``base_net.*`` without its classifier and last level, a bottom-up decoder of four
efficient pyramid-pooling blocks (``bu_dec_l1..4``), three encoder-decoder merges
(``merge_enc_dec_l2..4``) with their BN + PReLU (``bu_br_l2..4``). The class head is the last 1x1
conv of the last pyramid block, ``bu_dec_l4.merge_layer.3``.

The network was trained on RGB in [0, 1] normalised with the ImageNet mean and std, resized with
PIL bilinear; the total stride is 16, so input height and width must be multiples of 16.
"""

from dataclasses import dataclass
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from seg_training.nets.model import check_multiple

# Total stride of the encoder: four halvings; decoder merges need exact halves.
STRIDE = 16
# Output channels of the backbone's levels 1..4 for each width scale (the authors' table).
LEVEL_CHANNELS: Dict[float, Tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
BRANCHES = 4                          # parallel dilated branches in every EESP unit
LEVEL3_UNITS, LEVEL4_UNITS = 3, 7     # EESP units after the level-3 and level-4 down-samplers
RECEPTIVE_LIMITS = (13, 11, 9, 7)     # largest kernel-equivalent per level (level2_0 first)
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
DECODER_BASE = 16                     # decoder width for Cityscapes (the authors' 'city')


@dataclass(frozen=True)
class ESPNetv2Config:
    """Architecture hyper-parameters: the single constructor argument of :class:`ESPNetv2`."""

    num_classes: int = 20
    scale: float = 2.0
    proj_planes: Optional[int] = None  # pyramid width; None: min(num_classes // 2, 16)

    def pyramid_width(self) -> int:
        if self.proj_planes is not None:
            return self.proj_planes
        return min(self.num_classes // 2, DECODER_BASE)


class PReLU(nn.PReLU):
    """
    ``nn.PReLU`` exported to ONNX as ``Relu(x) + a * Clip(x, max=0)``: PReLU's values, bit for bit.

    onnxruntime's CPU PRelu with one slope per channel took 28 % of ESPNetv2's fp32 time at
    1024x512 on the 2-core CPU measured; with the two-op form the whole network ran 1.11x
    (1024x512) and 1.17x (512x256) as fast there (``bench/bench_prelu.py``). Parameters and
    state_dict keys are ``nn.PReLU``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        slope = self.weight
        if slope.numel() > 1:  # one slope per channel (dim 1)
            slope = slope.view(1, -1, *([1] * (x.dim() - 2)))
        # relu(x) + 0 for x > 0 and 0 + a * x otherwise: exactly PReLU's values.
        return F.relu(x) + slope * torch.clamp(x, max=0.0)


class ConvBNAct(nn.Module):
    """Conv (no bias), BN and PReLU as attributes ``conv``, ``bn``, ``act``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.act = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """Conv (no bias) and BN as attributes ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BNAct(nn.Module):
    """BN and PReLU as attributes ``bn``, ``act``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.act = PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DepthwiseDilated(nn.Module):
    """3x3 depth-wise conv with a dilation, as attribute ``conv``."""

    def __init__(self, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, dilation, dilation=dilation,
                              bias=False, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SeqBNAct(nn.Module):
    """BN, PReLU as a Sequential under ``br`` (the decoder's naming)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class SeqConvBNAct(nn.Module):
    """Conv (no bias), BN, PReLU as a Sequential under ``cbr`` (the decoder's naming)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False,
                                           groups=groups),
                                 nn.BatchNorm2d(cout), PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class EESP(nn.Module):
    """
    Extremely efficient spatial pyramid unit: reduce, split into dilated branches, fuse, expand.

    Grouped 1x1 projection to ``cout / k`` channels, ``k`` depth-wise 3x3 branches with growing
    dilation summed hierarchically, concatenation, BN + PReLU, grouped 1x1 expansion. With
    stride 1 and equal widths the input is added back before the final PReLU; with stride 2 the
    expansion is returned as it is (the down-sampler adds its other branches).
    """

    def __init__(self, cin: int, cout: int, stride: int, r_lim: int, k: int = BRANCHES) -> None:
        super().__init__()
        n = cout // k
        assert n * k == cout, f'EESP output {cout} must be a multiple of its {k} branches'
        self.stride = stride
        self.proj_1x1 = ConvBNAct(cin, n, 1, groups=k)
        # Kernel sizes 3, 5, 7, ... capped at r_lim (above it: plain 3x3), as dilations of 3x3.
        ksizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.spp_dw = nn.ModuleList(DepthwiseDilated(n, stride, (ks - 1) // 2) for ks in ksizes)
        self.conv_1x1_exp = ConvBN(cout, cout, 1, groups=k)
        self.br_after_cat = BNAct(cout)
        self.module_act = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)  # (B, n, H, W)
        branches: List[torch.Tensor] = [self.spp_dw[0](reduced)]
        for conv in self.spp_dw[1:]:
            branches.append(conv(reduced) + branches[-1])  # hierarchical fusion
        y = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))  # (B, cout, H/s, W/s)
        if self.stride == 2:
            return y
        if y.shape == x.shape:
            y = y + x
        return self.module_act(y)


class DownSampler(nn.Module):
    """Stride-2 EESP next to a 3x3 average pool, plus a shortcut from the down-sized image."""

    def __init__(self, cin: int, cout: int, r_lim: int) -> None:
        super().__init__()
        self.eesp = EESP(cin, cout - cin, 2, r_lim)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(ConvBNAct(3, 3, 3), ConvBN(3, cout, 1))
        self.act = PReLU(cout)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``image`` is the network input average-pooled to this block's output size."""
        y = torch.cat([self.avg(x), self.eesp(x)], 1)  # (B, cout, H/2, W/2)
        return self.act(y + self.inp_reinf(image))


class Backbone(nn.Module):
    """The ImageNet ESPNetv2 up to level 4 (stride 16), as ``base_net`` of the segmentation net."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        c1, c2, c3, c4 = LEVEL_CHANNELS[scale]
        r2, r3, r4, r5 = RECEPTIVE_LIMITS
        self.level1 = ConvBNAct(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, r2)
        self.level3_0 = DownSampler(c2, c3, r3)
        self.level3 = nn.ModuleList(EESP(c3, c3, 1, r4) for _ in range(LEVEL3_UNITS))
        self.level4_0 = DownSampler(c3, c4, r4)
        self.level4 = nn.ModuleList(EESP(c4, c4, 1, r5) for _ in range(LEVEL4_UNITS))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Features at 1/2, 1/4, 1/8 and 1/16 of the input."""
        pooled = [x]
        for _ in range(4):  # the image at 1/2 .. 1/16, each from the previous one
            pooled.append(F.avg_pool2d(pooled[-1], 3, stride=2, padding=1))
        l1 = self.level1(x)  # (B, c1, H/2, W/2)
        l2 = self.level2_0(l1, pooled[2])  # (B, c2, H/4, W/4)
        l3 = self.level3_0(l2, pooled[3])  # (B, c3, H/8, W/8)
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, pooled[4])  # (B, c4, H/16, W/16)
        for unit in self.level4:
            l4 = unit(l4)
        return l1, l2, l3, l4


def _window_bounds(n_in: int, n_out: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start and end indices and sizes of adaptive pooling's windows along one axis."""
    starts = [(i * n_in) // n_out for i in range(n_out)]
    ends = [-((-(i + 1) * n_in) // n_out) for i in range(n_out)]  # ceil
    sizes = [e - s for s, e in zip(starts, ends)]
    return torch.tensor(starts), torch.tensor(ends), torch.tensor(sizes, dtype=torch.float32)


def _pool_axis(x: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """Adaptive average pooling of ``x`` along ``dim`` as differences of a cumulative sum."""
    n_in = int(x.shape[dim])
    if n_in % n_out == 0:  # equal windows: a plain average pool
        k = n_in // n_out
        kernel = (k, 1) if dim == 2 else (1, k)
        return F.avg_pool2d(x, kernel, kernel)
    starts, ends, sizes = (t.to(x.device) for t in _window_bounds(n_in, n_out))
    pad = (0, 0, 1, 0) if dim == 2 else (1, 0)
    cs = F.pad(torch.cumsum(x, dim), pad)  # zero before the first element along ``dim``
    total = cs.index_select(dim, ends) - cs.index_select(dim, starts)
    shape = [1, 1, n_out, 1] if dim == 2 else [1, 1, 1, n_out]
    return total / sizes.to(x.dtype).view(shape)


def adaptive_avg_pool(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """
    ``F.adaptive_avg_pool2d``; while exporting, the same averages from cumulative sums.

    ONNX has no adaptive pooling to sizes that do not divide the input; the network's input size
    is fixed at export, so the windows become constant indices.
    """
    if not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
        return F.adaptive_avg_pool2d(x, size)
    return _pool_axis(_pool_axis(x, 2, size[0]), 3, size[1])  # (B, C, h, w)


class Shuffle(nn.Module):
    """Channel shuffle over ``groups`` groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2)
        return y.reshape(b, c, h, w)


class PyramidPool(nn.Module):
    """
    Efficient pyramid pooling: project, depth-wise 3x3 at five scales, shuffle, merge, expand.

    Scales above 1 upsample (bilinear, aligned corners) before the conv and average back; scales
    below 1 average down (at least 5 pixels) and upsample after it.
    """

    def __init__(self, cin: int, proj: int, cout: int, last: bool = False) -> None:
        super().__init__()
        self.projection_layer = SeqConvBNAct(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, 1, 1, bias=False, groups=proj)
                                    for _ in PYRAMID_SCALES)
        n = len(PYRAMID_SCALES)
        self.merge_layer = nn.Sequential(
            SeqBNAct(proj * n), Shuffle(n), SeqConvBNAct(proj * n, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=last))
        self.last = last
        if not last:
            self.br = SeqBNAct(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)  # (B, proj, H, W)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        outs = []
        for scale, conv in zip(PYRAMID_SCALES, self.stages):
            size = (max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale)))
            if scale < 1.0:
                y = conv(adaptive_avg_pool(x, size))
                y = F.interpolate(y, (h, w), mode='bilinear', align_corners=True)
            elif scale > 1.0:
                y = F.interpolate(x, size, mode='bilinear', align_corners=True)
                y = adaptive_avg_pool(conv(y), (h, w))
            else:
                y = conv(x)
            outs.append(y)  # (B, proj, H, W)
        y = self.merge_layer(torch.cat(outs, 1))  # (B, cout, H, W)
        return y if self.last else self.br(y)


class GatedMerge(nn.Module):
    """Encoder features to decoder width: grouped 3x3 CBR scaled by a global sigmoid gate."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = SeqConvBNAct(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)  # (B, cout, H, W)


class ESPNetv2(nn.Module):
    """ESPNetv2 segmentation network; returns raw logits at the input size."""

    def __init__(self, cfg: ESPNetv2Config) -> None:
        super().__init__()
        if cfg.scale not in LEVEL_CHANNELS:
            raise ValueError(f'ESPNetv2 scale {cfg.scale} not in {sorted(LEVEL_CHANNELS)}')
        assert cfg.num_classes >= 1, 'num_classes must be positive'
        self.cfg = cfg
        c1, c2, c3, c4 = LEVEL_CHANNELS[cfg.scale]
        proj = cfg.pyramid_width()
        d1, d2, d3 = 4 * DECODER_BASE, 3 * DECODER_BASE, 2 * DECODER_BASE
        self.base_net = Backbone(cfg.scale)
        self.bu_dec_l1 = PyramidPool(c4, proj, d1)
        self.bu_dec_l2 = PyramidPool(d1, proj, d2)
        self.bu_dec_l3 = PyramidPool(d2, proj, d3)
        self.bu_dec_l4 = PyramidPool(d3, proj, cfg.num_classes, last=True)
        self.merge_enc_dec_l2 = GatedMerge(c3, d1)
        self.merge_enc_dec_l3 = GatedMerge(c2, d2)
        self.merge_enc_dec_l4 = GatedMerge(c1, d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), PReLU(d3))
        self._init_weights()

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _up2(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        l1, l2, l3, l4 = self.base_net(x)
        y = self.bu_dec_l1(l4)  # (B, 64, H/16, W/16)
        y = self.bu_dec_l2(self.bu_br_l2(self._up2(y) + self.merge_enc_dec_l2(l3)))  # 1/8
        y = self.bu_dec_l3(self.bu_br_l3(self._up2(y) + self.merge_enc_dec_l3(l2)))  # 1/4
        y = self.bu_dec_l4(self.bu_br_l4(self._up2(y) + self.merge_enc_dec_l4(l1)))  # 1/2
        return F.interpolate(y, size=x.shape[-2:], mode='bilinear',
                             align_corners=True)  # (B, K, H, W)


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of :data:`STRIDE`."""
    check_multiple('ESPNetv2', STRIDE, height, width)


def scale_of_state_dict(sd: Dict[str, torch.Tensor]) -> Optional[float]:
    """Return the width scale whose level widths fit ``sd`` (keys without prefix), or None."""
    l1 = sd.get('base_net.level1.conv.weight')
    l2 = sd.get('base_net.level2_0.act.weight')
    if l1 is None or l2 is None:
        return None
    for scale, chans in LEVEL_CHANNELS.items():
        if (chans[0], chans[1]) == (int(l1.shape[0]), int(l2.shape[0])):
            return scale
    return None
