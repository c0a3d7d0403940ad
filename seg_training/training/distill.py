"""
Knowledge distillation: a teacher model's soft targets teach the network seg-train trains.

The teacher is any model file :func:`seg_training.nets.checkpoint.load_model` reads, used only
through the module and the :class:`~seg_training.nets.checkpoint.ModelInfo` it returns. It runs in
eval mode without gradients, at its own preprocessing (input size, resize, mean/std), on the
same augmented frame the student sees; its logits are resized (bilinear) to the student's logit
size.

Classes (:class:`ClassMap`): each student class takes the summed probability of its teacher
classes. By default a student class takes the teacher class of the same name (case ignored, and
the aliases of ``classes.CLASS_ALIASES``, e.g. ``vehicle`` <- ``car``); the teacher's void output
(``ClassTable.void_index``, e.g. index 19 of the 20-output Cityscapes models) goes to the
student's void output or same-named class if it has one; every other teacher class is dropped.
A class-map file (YAML) names the teacher classes of any student class; student classes it
leaves out still take a teacher class of their own name::

    Car: [car, truck, bus, train]     # student class: [teacher classes], probabilities summed
    Pavement: [sidewalk]

Loss (Hinton et al., 2015), per pixel, over the student classes the teacher covers::

    q  = softmax(t / T) summed into the covered student classes, renormalised
    KD = T^2 * w * KL(q || softmax(s / T))   (s: the student's logits of the covered classes)
    w  = softmax(t) summed over the mapped teacher classes: the teacher's belief that the pixel
         is one of the student's classes (1 when no teacher class is dropped)

KD is the mean over every pixel, ignore labels included. With labels the loss is
``(1 - a) * CE + a * KD``; a batch without a labelled pixel (a folder of images) trains on KD
alone.
"""

import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from seg_training.base.classes import ClassTable, IGNORE_INDEX
from seg_training.base.yaml_reader import ConfigError
from seg_training.datasets.class_map import build_class_map, ClassMap
from seg_training.nets import provenance
from seg_training.nets.checkpoint import load_model, ModelFileError, ModelInfo, state_hash

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- the loss

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            matrix: Optional[torch.Tensor] = None,
            covered: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Hinton's soft-target loss ``T^2 * KL(q || softmax(s / T))``, mean over all pixels.

    ``student_logits`` (B, Ks, h, w) and ``teacher_logits`` (B, Kt, h, w) at the same size.
    Without ``matrix`` teacher class k is student class k. With it, ``matrix`` (Kt, Kc) sums the
    teacher's probabilities into the student classes ``covered`` (Kc,) (the student's softmax
    runs over those alone) and each pixel weighs the teacher's mass on mapped classes (module
    docstring).
    """
    t = teacher_logits.float()
    s = student_logits.float()
    if covered is not None:
        s = s.index_select(1, covered)  # (B, Kc, h, w)
    q = F.softmax(t / temperature, dim=1)  # (B, Kt, h, w)
    weight = None
    if matrix is not None:
        q = torch.einsum('bkhw,kc->bchw', q, matrix)  # (B, Kc, h, w)
        q = q / q.sum(1, keepdim=True).clamp_min(1e-12)
        weight = torch.einsum('bkhw,kc->bhw', F.softmax(t, dim=1), matrix)  # (B, h, w)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), q, reduction='none').sum(1)  # (B, h, w)
    if weight is not None:
        kl = kl * weight
    return kl.mean() * temperature ** 2


# ----------------------------------------------------------------------------- the teacher

class Teacher:
    """A model file run as a teacher: eval mode, no gradients, its own preprocessing."""

    def __init__(self, model: nn.Module, info: ModelInfo, source: str, class_map: ClassMap,
                 device: torch.device, channels_last: bool = False) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.info = info
        self.source = source
        self.class_map = class_map
        self.device = device
        self.channels_last = channels_last
        self.prep = info.preprocessing()
        self.constants = self.prep.constants(device)
        self.state_sha256 = state_hash(self.model)

    @torch.no_grad()
    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, Kt, h, w) teacher logits of (B, 3, H, W) float RGB images in 0..255."""
        x = self.prep(rgb, self.constants)  # (B, 3, h_t, w_t) the teacher's own input
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 \
                or out.shape[1] != self.info.num_classes:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelFileError(f'teacher {self.source}: expected logits (B, '
                                 f'{self.info.num_classes}, h, w), got {got}')
        return out

    def record(self) -> Dict:
        """Provenance entry of the teacher (seg_training.nets.provenance.teacher_record)."""
        return provenance.teacher_record(self.source, self.state_sha256,
                                         self.class_map.to_dict(), self.info.provenance)


def load_teacher(path: PathLike, student: ClassTable, device: torch.device,
                 class_map_file: Optional[PathLike] = None, student_source: str = 'the student',
                 channels_last: bool = False) -> Teacher:
    """Load the teacher model file at ``path`` and map its classes to ``student``'s."""
    try:
        with torch.random.fork_rng(devices=[]):  # the student's initial weights stay the same
            model, info = load_model(path, device)
    except ModelFileError as e:
        raise ModelFileError(f'teacher {e}') from None
    cmap = build_class_map(student, info.classes, class_map_file, str(path), student_source)
    teacher = Teacher(model, info, str(path), cmap, device, channels_last)
    w, h = info.input_size
    _logger.info('teacher %s (weights sha256 %s): %d classes at %dx%d; %d/%d student classes '
                 'from it%s', path, teacher.state_sha256[:12], info.num_classes, w, h,
                 len(cmap.covered), student.num_classes,
                 f'; teacher classes dropped: {cmap.dropped}' if cmap.dropped else '')
    for name, sources in cmap.to_dict().items():
        if sources != [name]:
            _logger.info('  student %s <- teacher %s', name, ' + '.join(sources))
    return teacher


def check_resumed_teacher(teacher: Teacher, saved_provenance: Optional[Dict],
                          last: PathLike) -> None:
    """Raise ConfigError unless ``teacher`` has the weights the run in ``last`` started with."""
    saved = ((saved_provenance or {}).get('teacher') or {}).get('state_sha256')
    if saved != teacher.state_sha256:
        raise ConfigError(f'--resume: teacher {teacher.source} differs from the one the run '
                          f'started with (weights sha256 {teacher.state_sha256[:12]}, {last} '
                          f'records {saved[:12] if saved else "none"}); resume with that teacher')


class DistillLoss:
    """
    ``(1 - a) * CE + a * KD`` where a batch has labels, KD alone where it has none.

    ``mean``/``std``: the student's input normalisation, undone to give the teacher the frame.
    """

    def __init__(self, criterion: Loss, teacher: Teacher, temperature: float, weight: float,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.criterion = criterion
        self.teacher = teacher
        self.temperature = float(temperature)
        self.weight = float(weight)
        device = teacher.device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        cmap = teacher.class_map
        self.matrix = None if cmap.identity else cmap.matrix().to(device)
        self.covered = (None if cmap.identity
                        else torch.tensor(cmap.covered, dtype=torch.long, device=device))

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """
        Loss of student ``logits`` (B, K, h, w) against ``target`` (B, h, w) and the teacher.

        ``images`` (B, 3, H, W) are the student's inputs; returns (loss, {'ce', 'kd'} detached,
        'ce' only where the batch has a labelled pixel).
        """
        rgb = ((images.float() * self.std + self.mean) * 255.0).clamp(0.0, 255.0)  # (B, 3, H, W)
        t = self.teacher.logits(rgb)  # (B, Kt, h_t, w_t), under the caller's autocast
        with torch.autocast(device_type=logits.device.type, enabled=False):  # the loss in fp32
            t = F.interpolate(t.float(), size=logits.shape[-2:], mode='bilinear',
                              align_corners=False)  # (B, Kt, h, w)
            kd = kd_loss(logits.float(), t, self.temperature, self.matrix, self.covered)
        parts = {'kd': kd.detach()}
        if not bool((target != IGNORE_INDEX).any()):
            return kd, parts
        ce = self.criterion(logits, target)
        parts['ce'] = ce.detach()
        return (1.0 - self.weight) * ce + self.weight * kd, parts
