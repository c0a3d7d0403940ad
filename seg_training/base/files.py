"""Files that appear whole or not at all: write to a temporary name, sync, then rename."""

from contextlib import contextmanager
import errno
import json
import logging
import os
from pathlib import Path
import re
import shutil
import tempfile
import time
from typing import Any, Iterator, List, Optional, Union

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# tempfile.mkstemp/mkdtemp put 8 of these characters between prefix and suffix.
_TEMP_RANDOM = r'[a-z0-9_]{8}'
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A write that failed for lack of disk space (or quota); the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


class UnwritableError(OSError):
    """A path that no file can be written to; the message names it."""

    def __str__(self) -> str:
        return str(self.strerror)


def no_space_error(path: Path, existed: bool) -> NoSpaceError:
    """Return the NoSpaceError saying what happened to ``path`` and the space left there."""
    try:
        free = f'{shutil.disk_usage(path.parent).free / 2 ** 20:.1f} MiB free'
    except OSError:
        free = 'free space unknown'
    kept = f'the previous {path.name} is unchanged' if existed else 'nothing was written'
    return NoSpaceError(errno.ENOSPC, f'{path}: no space left on device ({free} on '
                                      f'{path.parent}); {kept}')


def check_writable(path: PathLike) -> None:
    """
    Raise OSError naming ``path`` unless a file can be written there; for before long work.

    ``path`` must not be a folder, and its nearest existing parent must be a folder this
    process may write in (folders still missing are made when the file is written).
    """
    path = Path(path)
    if path.is_dir():
        raise UnwritableError(errno.EISDIR, f'{path}: is a folder')
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UnwritableError(errno.ENOTDIR, f'{path}: {parent} is not a folder')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UnwritableError(errno.EACCES, f'{path}: cannot write in {parent}')


def temporary_pattern(path: Path, suffix: str) -> 're.Pattern[str]':
    """Names of the temporaries :func:`atomic_path` makes for ``path`` with ``suffix``."""
    return re.compile(re.escape(f'.{path.name}.') + _TEMP_RANDOM + re.escape(suffix))


def remove_leftovers(folder: Path, pattern: 're.Pattern[str]', before: float) -> List[Path]:
    """
    Remove what killed writers left in ``folder``; return what was removed.

    Files and folders whose names match ``pattern`` and that are unchanged since ``before`` (a
    ``time.time()``) go, so a writer still at work keeps its file. Failures are logged.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not pattern.fullmatch(p.name):
            continue
        try:
            if _newest_mtime(p) >= before:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError as e:
            _logger.warning('%s: leftover of an interrupted write not removed: %s', p, e)
    if removed:
        _logger.info('removed %d leftovers of interrupted writes in %s: %s', len(removed),
                     folder, ', '.join(p.name for p in removed))
    return removed


def _disk_full_cause(e: BaseException) -> Optional[OSError]:
    """Return the ENOSPC/EDQUOT OSError that ``e`` is or that led to it, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def _newest_mtime(p: Path) -> float:
    """Last modification time of ``p`` or of anything inside it (a folder)."""
    newest = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        for q in p.rglob('*'):
            newest = max(newest, q.lstat().st_mtime)
    return newest


@contextmanager
def atomic_path(path: PathLike, suffix: str = '.tmp') -> Iterator[Path]:
    """
    Yield a temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary file is synced to disk and made readable by all (0644) before the rename, so a
    reader never sees a half-written file, even when the writer is killed; on an error it is
    removed and ``path`` is left as it was. A full disk is a :class:`NoSpaceError` that says so.
    After a success, the temporaries of earlier writers of ``path`` that were killed are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    started = time.time()
    try:
        fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise no_space_error(path, existed) from e
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except Exception as e:  # writers may wrap the OSError (torch.save: 'unexpected pos')
        cause = _disk_full_cause(e)
        if cause is not None and not isinstance(e, NoSpaceError):
            raise no_space_error(path, existed) from cause
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    remove_leftovers(path.parent, temporary_pattern(path, suffix), started)


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + '\n')
    return Path(path)
