"""
Knowledge distillation: a teacher model's soft targets teach the network seg-train trains.

The teacher is any model file :func:`seg_training.checkpoint.load_model` reads, used only through
the module and the :class:`~seg_training.checkpoint.ModelInfo` it returns. It runs in eval mode
without gradients, at its own preprocessing (input size, resize, mean/std), on the same augmented
frame the student sees; its logits are resized (bilinear) to the student's logit size.

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

from dataclasses import dataclass
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F
import yaml

from seg_training import provenance
from seg_training.checkpoint import load_model, ModelFileError, ModelInfo
from seg_training.classes import ClassTable, IGNORE_INDEX
from seg_training.config import ConfigError
from seg_training.transfer import match_classes

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- class mapping

@dataclass(frozen=True)
class ClassMap:
    """Which teacher classes each student class takes (their probabilities summed)."""

    student: ClassTable
    teacher: ClassTable
    sources: Tuple[Tuple[int, ...], ...]  # per student class: its teacher class indices

    def __post_init__(self) -> None:
        assert len(self.sources) == self.student.num_classes
        used = [t for ts in self.sources for t in ts]
        assert len(used) == len(set(used)), 'a teacher class may feed one student class only'

    @property
    def covered(self) -> List[int]:
        """Student classes with at least one teacher class."""
        return [s for s, ts in enumerate(self.sources) if ts]

    @property
    def dropped(self) -> List[str]:
        """Names of the teacher classes no student class takes."""
        used = {t for ts in self.sources for t in ts}
        return [n for t, n in enumerate(self.teacher.names) if t not in used]

    @property
    def identity(self) -> bool:
        """Tell whether teacher output k is student output k for every k."""
        return (self.teacher.num_classes == self.student.num_classes
                and all(ts == (s,) for s, ts in enumerate(self.sources)))

    def matrix(self) -> torch.Tensor:
        """(Kt, Kc) float32 0/1: teacher class -> covered student class (in ``covered`` order)."""
        m = torch.zeros(self.teacher.num_classes, len(self.covered))
        for c, s in enumerate(self.covered):
            m[list(self.sources[s]), c] = 1.0
        return m

    def to_dict(self) -> Dict[str, List[str]]:
        """{student class: [teacher classes]} of the covered student classes."""
        return {self.student.names[s]: [self.teacher.names[t] for t in self.sources[s]]
                for s in self.covered}


def find_class(table: ClassTable, name: str) -> Optional[int]:
    """Index of ``name`` in ``table``: the exact name, else the one name equal but for case."""
    if name in table.names:
        return table.names.index(name)
    folded = [i for i, n in enumerate(table.names) if n.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def match_by_name(student: ClassTable, teacher: ClassTable) -> Dict[int, int]:
    """
    {student index: teacher index} by class name (:func:`transfer.match_classes`), plus void.

    The teacher's void output goes to the student's void output, or else to a student class of
    the same name; no teacher class feeds two student classes (an exact name wins an alias).
    """
    rows: Dict[int, int] = {}
    owner: Dict[int, int] = {}
    exact = {s: t for s, t in match_classes(student, teacher).items()
             if student.names[s].casefold() == teacher.names[t].casefold()}
    for s, t in [*exact.items(), *match_classes(student, teacher).items()]:
        if s not in rows and t not in owner:
            rows[s], owner[t] = t, s
    void = teacher.void_index
    if void is not None and void not in owner:
        s = (student.void_index if student.void_index is not None
             else find_class(student, teacher.names[void]))
        if s is not None and s not in rows:
            rows[s] = void
    return rows


def read_class_map(path: PathLike, student: ClassTable, teacher: ClassTable,
                   teacher_source: str) -> Dict[int, List[int]]:
    """
    {student index: [teacher indices]} of a class-map file ``student_class: [teacher_class]``.

    Errors name the file and the class: a student class the student lacks, a teacher class the
    teacher (``teacher_source``) lacks, a teacher class listed twice, a value that is no list.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{path}: teacher class map not found')
    try:
        doc = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f'{path}: teacher class map is not valid YAML: {e}') from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f'{path}: expected a mapping "student_class: [teacher_class, ...]", '
                          f'got {type(doc).__name__}')
    sources: Dict[int, List[int]] = {}
    owner: Dict[int, str] = {}
    for key, value in doc.items():
        s = find_class(student, str(key))
        if s is None:
            raise ConfigError(f'{path}: student class {str(key)!r} is not one of the student '
                              f'classes {list(student.names)}')
        if s in sources:
            raise ConfigError(f'{path}: student class {student.names[s]!r} is listed twice')
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            raise ConfigError(f'{path}: {key}: expected a list of teacher class names, '
                              f'got {value!r}')
        sources[s] = []
        for name in names:
            t = find_class(teacher, name)
            if t is None:
                raise ConfigError(f'{path}: {key}: teacher class {name!r} is not a class of '
                                  f'{teacher_source} {list(teacher.names)}')
            if t in owner:
                raise ConfigError(f'{path}: teacher class {name!r} is listed under both '
                                  f'{owner[t]!r} and {str(key)!r}')
            owner[t] = str(key)
            sources[s].append(t)
    return sources


def build_class_map(student: ClassTable, teacher: ClassTable,
                    map_file: Optional[PathLike] = None, teacher_source: str = 'the teacher',
                    student_source: str = 'the student') -> ClassMap:
    """
    Map teacher classes to student classes: ``map_file``'s entries, then names.

    ConfigError, naming both sources, when the teacher covers no student class.
    """
    sources = read_class_map(map_file, student, teacher, teacher_source) if map_file else {}
    used = {t for ts in sources.values() for t in ts}
    for s, t in match_by_name(student, teacher).items():
        if s not in sources and t not in used:
            sources[s] = [t]
            used.add(t)
    if not sources:
        raise ConfigError(f'{teacher_source}: the teacher has no class in common with the '
                          f'student ({student_source}): teacher classes {list(teacher.names)}, '
                          f'student classes {list(student.names)}; map them with '
                          '--teacher-class-map FILE')
    return ClassMap(student, teacher, tuple(tuple(sources.get(s, ()))
                                            for s in range(student.num_classes)))


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

def state_hash(model: nn.Module) -> str:
    """sha256 of a module's state_dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f'{name}:{v.dtype}:{tuple(v.shape)};'.encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        """Provenance entry of the teacher (seg_training.provenance.teacher_record)."""
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
