"""
Training machinery: devices, DDP, stages, optimiser, one epoch, validation, resume state.

Devices and the torchrun process group, trainable parameters per stage, the optimiser with its
poly schedule, one training epoch, validation, and the checkpoint state that makes resume exact.

Nothing here writes files; train.py decides what goes where.
"""

from dataclasses import dataclass
import logging
import math
import os
import random
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
import torch.nn.functional as F
from tqdm import tqdm

from seg_training.base.cli import resolve_device
from seg_training.evaluation import metrics
from seg_training.nets import architectures
from seg_training.nets.model import ERFNet
from seg_training.training.config import TrainConfig

_logger = logging.getLogger(__name__)

STAGES = ('encoder', 'full')
PARTS = ('ce', 'kd')  # parts of a distillation loss, logged per epoch
# (logits, targets, images) -> (loss, {part: detached value}):
# seg_training.training.distill.DistillLoss
PartsLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                     Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


# ----------------------------------------------------------------------------- devices and DDP

@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Tuple[DistInfo, torch.device]:
    """
    Join the process group torchrun describes (env:// variables); one process otherwise.

    Backend: nccl on CUDA, gloo on the CPU.
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_name, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo',
                                init_method='env://')
    _logger.info('DDP rank %d/%d on %s (%s)', rank, world, device, dist.get_backend())
    return DistInfo(rank, world, local_rank), device


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Derive a 32-bit seed for the data pipeline of one epoch on one rank, a pure function."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class ShardSampler(torch.utils.data.Sampler):
    """
    Indices ``rank, rank + world, ...`` in order: every sample exactly once over all ranks.

    (DistributedSampler pads with repeated samples, which would bias validation metrics.)
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- stages

class EncoderOnly(nn.Module):
    """The encoder and its 1x1 head: logits at 1/8 resolution (first stage of the recipe)."""

    def __init__(self, net: ERFNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(x, predict=True)  # (B, K, H/8, W/8)


def _arch(net: nn.Module) -> architectures.Architecture:
    return architectures.get(architectures.config_of(net)[0])


def stage_module(net: nn.Module, stage: str) -> nn.Module:
    """Return the module whose forward the stage ``stage`` trains."""
    assert stage in STAGES, stage
    if stage == 'encoder' and not _arch(net).two_stage:
        raise ValueError(f'{_arch(net).name} has no encoder-only stage')
    return EncoderOnly(net) if stage == 'encoder' else net


def set_trainable(net: nn.Module, stage: str, freeze_encoder: bool) -> None:
    """
    requires_grad per stage: only what the stage's forward uses (DDP needs that).

    encoder stage: the encoder with its head; full stage: the encoder body (unless frozen) and
    the decoder (ERFNet's encoder head is unused and kept as is).
    """
    arch = _arch(net)
    for name, p in net.named_parameters():
        if stage == 'encoder':
            p.requires_grad_(name.startswith(arch.encoder_prefix))
        elif arch.encoder_head_prefix and name.startswith(arch.encoder_head_prefix):
            p.requires_grad_(False)
        elif name.startswith(arch.encoder_prefix):
            p.requires_grad_(not freeze_encoder)
        else:
            p.requires_grad_(True)


def set_train_mode(net: nn.Module, freeze_encoder: bool) -> None:
    """Training mode, with a frozen encoder kept in eval mode (BN statistics and dropout fixed)."""
    net.train()
    if freeze_encoder:
        getattr(net, _arch(net).encoder_prefix.rstrip('.')).eval()


def param_groups(net: nn.Module, lr: float, encoder_lr_scale: float) -> List[Dict[str, Any]]:
    """Parameter groups: the encoder at ``lr * encoder_lr_scale``, the rest at ``lr``."""
    prefix = _arch(net).encoder_prefix
    enc = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith(prefix)]
    rest = [p for n, p in net.named_parameters()
            if p.requires_grad and not n.startswith(prefix)]
    groups = []
    if enc:
        groups.append({'params': enc, 'lr': lr * encoder_lr_scale, 'name': 'encoder'})
    if rest:
        groups.append({'params': rest, 'lr': lr, 'name': 'decoder'})
    if not groups:
        raise ValueError('no trainable parameters in this stage')
    return groups


def poly_factor(epoch: int, epochs: int, power: float = 0.9) -> float:
    """Poly learning-rate factor ``(1 - epoch / epochs) ** power`` (epoch counted from 0)."""
    if epochs <= 0:
        return 1.0
    return max(0.0, 1.0 - epoch / epochs) ** power


def build_optimizer(net: ERFNet, cfg: TrainConfig, stage_epochs: int
                    ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """
    Return the configured optimiser over the trainable parameters and its poly decay.

    Adam with L2 weight decay is the ERFNet recipe; AdamW decouples the decay; SGD uses Nesterov
    momentum.
    """
    groups = param_groups(net, cfg.lr, cfg.encoder_lr_scale)
    if cfg.optimizer == 'sgd':
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.AdamW if cfg.optimizer == 'adamw' else torch.optim.Adam
        opt = cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                  weight_decay=cfg.weight_decay)
    power = cfg.poly_power
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: poly_factor(e, stage_epochs, power))
    return opt, sched


# ----------------------------------------------------------------------------- one epoch

@dataclass
class Precision:
    """Autocast settings: active on CUDA only."""

    amp: bool = False
    dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, device: torch.device) -> 'Precision':
        cuda = device.type == 'cuda'
        if cfg.amp and not cuda:
            _logger.warning('--amp applies to CUDA only; training on %s in fp32', device)
        dtype = torch.float16 if cfg.amp_dtype == 'fp16' else torch.bfloat16
        return cls(cfg.amp and cuda, dtype, cfg.channels_last and cuda)

    def scaler(self) -> Optional[torch.amp.GradScaler]:
        """Return a GradScaler for fp16 autocast, None otherwise (bf16 needs none)."""
        if self.amp and self.dtype == torch.float16:
            return torch.amp.GradScaler('cuda')
        return None


def resize_target(target: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels resized to ``size`` (h, w) by nearest neighbour (ignore 255 kept)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    t = F.interpolate(target.unsqueeze(1).float(), size=size, mode='nearest')  # (B, 1, h, w)
    return t.squeeze(1).long()


def _all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def train_one_epoch(module: nn.Module, loader: Iterable, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: Precision = Precision(),
                    scaler: Optional[torch.amp.GradScaler] = None,
                    desc: str = 'train', progress: bool = True,
                    distill: Optional[PartsLoss] = None) -> Dict[str, float]:
    """
    One pass over ``loader``; returns the mean losses per sample over all ranks.

    ``module`` returns logits (B, K, h, w); targets are resized to (h, w) by nearest neighbour when
    the logits are smaller (the encoder stage trains against labels at 1/8 resolution).
    ``distill`` (seg_training.training.distill.DistillLoss), if given, replaces ``criterion``: it
    also sees the images and returns the loss with its parts. The result holds ``loss`` and each
    part (``ce``, ``kd``) averaged over the samples of the batches that had it.
    """
    sums: Dict[str, float] = {'loss': 0.0}
    counts: Dict[str, float] = {'loss': 0.0}
    bar = tqdm(loader, desc=desc, unit='batch', leave=False, disable=not progress,
               dynamic_ncols=True)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)  # (B, 3, H, W)
        targets = targets.to(device, non_blocking=True)  # (B, H, W)
        if precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=precision.dtype,
                            enabled=precision.amp):
            logits = module(images)  # (B, K, h, w)
            target = resize_target(targets, logits.shape[-2:])  # (B, h, w)
            if distill is None:
                loss, parts = criterion(logits.float(), target), {}
            else:
                loss, parts = distill(logits.float(), target, images)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'{desc}: loss is {loss.item()}; lower the learning rate '
                                     'or check the labels')
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = images.shape[0]
        for key, value in {'loss': loss, **parts}.items():
            sums[key] = sums.get(key, 0.0) + value.item() * n
            counts[key] = counts.get(key, 0.0) + n
        bar.set_postfix(loss=f'{sums["loss"] / counts["loss"]:.4f}')
    keys = ['loss', *PARTS] if distill is not None else ['loss']  # the same on every rank
    reduced = _all_reduce_sum([sums.get(k, 0.0) for k in keys]
                              + [counts.get(k, 0.0) for k in keys], device)
    means = {}
    for i, k in enumerate(keys):
        total, count = reduced[i], reduced[len(keys) + i]
        means[k] = total / count if count else (0.0 if k == 'loss' else math.nan)
    return means


def sync_buffers(net: nn.Module, src: int = 0) -> None:
    """
    Copy rank ``src``'s buffers (BatchNorm statistics) to every rank; no-op without DDP.

    DDP broadcasts buffers before each training forward, so after the last step every rank
    holds statistics updated by its own batch; validation must use the ones that get saved.
    """
    if dist.is_available() and dist.is_initialized():
        for buf in net.buffers():
            dist.broadcast(buf, src)


def validate(net: ERFNet, stage: str, loader: Iterable, num_classes: int, device: torch.device,
             void_index: Optional[int] = None, amp: bool = False,
             progress: bool = False) -> Tuple[Dict[str, Any], metrics.ConfusionMatrix]:
    """Compute validation metrics of the stage's forward at full label resolution, all ranks."""
    return metrics.evaluate(stage_module(net, stage), loader, num_classes, device,
                            void_index=void_index, amp=amp, progress=progress)


@torch.no_grad()
def predict_batch(net: ERFNet, stage: str, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) argmax labels of normalised (B, 3, H, W) images (for sample plots)."""
    was = net.training
    net.eval()
    try:
        return metrics.predict_labels(stage_module(net, stage), images)
    finally:
        net.train(was)


# ----------------------------------------------------------------------------- resume state

def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy and torch (and CUDA) generator states as weights-only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': {'version': int(version), 'state': [int(v) for v in internal],
                   'gauss_next': gauss},
        'numpy': {'kind': str(kind), 'keys': torch.from_numpy(keys.astype(np.int64)),
                  'pos': int(pos), 'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state['python']
    random.setstate((py['version'], tuple(py['state']), py['gauss_next']))
    npy = state['numpy']
    np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


@dataclass
class Progress:
    """Where a run stands between epochs; all of it goes into ``last.pt``."""

    epoch: int = 0                # epochs completed
    stage: str = 'full'           # stage of the last completed epoch
    best_miou: float = float('-inf')
    best_epoch: int = 0
    best_metrics: Optional[Dict[str, Any]] = None
    bad_epochs: int = 0           # epochs since the best one (early stopping)
    time_s: float = 0.0           # time in epochs (train + validate), over all sessions
    wall_s: float = 0.0           # all of every session: start-up, epochs, saving, plots
    stopped_early: bool = False
    init: Optional[Dict[str, Any]] = None  # what --init / --pretrained-encoder did

    def to_dict(self) -> Dict[str, Any]:
        return {'epoch': self.epoch, 'stage': self.stage, 'best_miou': self.best_miou,
                'best_epoch': self.best_epoch, 'best_metrics': self.best_metrics,
                'bad_epochs': self.bad_epochs, 'time_s': self.time_s, 'wall_s': self.wall_s,
                'stopped_early': self.stopped_early, 'init': self.init}

    def record(self, epoch: int, stage: str, miou: float, patience: int) -> bool:
        """
        Note a completed, validated epoch; return True if it is the best so far.

        Only epochs of the whole network compete for best (the encoder stage predicts at 1/8
        resolution); ``patience`` > 0 sets ``stopped_early`` after that many epochs without a
        strictly better mIoU.
        """
        self.epoch, self.stage = epoch, stage
        if stage != 'full':
            return False
        improved = miou > self.best_miou  # NaN never improves
        if improved:
            self.best_miou, self.best_epoch, self.bad_epochs = miou, epoch, 0
        else:
            self.bad_epochs += 1
        if patience and self.bad_epochs >= patience:
            self.stopped_early = True
        return improved

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'Progress':
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def training_state(progress: Progress, optimizer: Optional[torch.optim.Optimizer],
                   scheduler: Optional[Any], scaler: Optional[torch.amp.GradScaler],
                   config: Dict[str, Any], class_weights: Optional[torch.Tensor],
                   interrupted: bool = False) -> Dict[str, Any]:
    """Build the ``training_state`` entry of ``last.pt`` (weights-only loadable)."""
    return {
        'progress': progress.to_dict(),
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'scheduler': scheduler.state_dict() if scheduler is not None else None,
        'scaler': scaler.state_dict() if scaler is not None else None,
        'rng': capture_rng_state(),
        'config': config,
        'class_weights': class_weights.detach().cpu() if class_weights is not None else None,
        'interrupted': interrupted,
    }
