"""
Class maps: which classes of one class table stand for each class of another.

The source is a teacher, an --init model or a model under evaluation; the target is the
student or the dataset.

By default a target class takes the source class of the same name (case ignored, and the aliases
of ``classes.CLASS_ALIASES``, e.g. ``vehicle`` <- ``car``). A class-map file (YAML) names the
source classes of any target class; target classes it leaves out still match by name::

    car: [car, truck, bus, train]     # target class: [source classes]
    sidewalk: [sidewalk]

Distillation sums the probabilities of a target's source classes; transfer learning initialises
a head row from the first source class listed; evaluation maps each predicted source class to
its target (``ClassMap.lookup``). ``config/class_maps/`` holds the maps the project ships.
"""

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import yaml

from seg_training.base.classes import CLASS_ALIASES, ClassTable, IGNORE_INDEX
from seg_training.base.yaml_reader import ConfigError

PathLike = Union[str, os.PathLike]


def match_classes(target: ClassTable, source: ClassTable) -> Dict[int, int]:
    """
    {target index: source index} for target classes found in ``source`` by name or alias.

    Exact names win over aliases; matching ignores case. The source's void output is never used.
    """
    lookup = {n.lower(): i for i, n in enumerate(source.names) if i != source.void_index}
    rows: Dict[int, int] = {}
    for i, name in enumerate(target.names):
        for candidate in (name, *CLASS_ALIASES.get(name, ())):
            j = lookup.get(candidate.lower())
            if j is not None:
                rows[i] = j
                break
    return rows


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

    def lookup(self) -> np.ndarray:
        """(256,) uint8: source class index -> target class index (ignore for dropped classes)."""
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for s, ts in enumerate(self.sources):
            lut[list(ts)] = s
        return lut

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
