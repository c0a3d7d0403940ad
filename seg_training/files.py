"""Files that appear whole or not at all: write to a temporary name, sync, then rename."""

from contextlib import contextmanager
import os
from pathlib import Path
import tempfile
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_path(path: PathLike, suffix: str = '.tmp') -> Iterator[Path]:
    """
    Yield a temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary file is synced to disk and made readable by all (0644) before the rename, so a
    reader never sees a half-written file, even when the writer is killed; on an error it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
