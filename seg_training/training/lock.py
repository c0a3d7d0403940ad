"""
One process at a time in a folder: an OS lock (``flock``) on a file inside it.

The kernel releases the lock when its holder ends, however it ends (SIGKILL, the OOM killer), so
nothing is ever left stuck; the file also records the holder's PID for the error message.
"""

from contextlib import contextmanager
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Union

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
LOCK_NAME = '.seg-train.lock'


class FolderLockError(RuntimeError):
    """A folder that cannot be locked (made, or its lock file written); the message names it."""


class FolderBusyError(FolderLockError):
    """The folder is locked by another process; the message names the folder and its PID."""


def _holder(path: Path) -> Optional[int]:
    """PID written in the lock file by its holder, if readable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def folder_lock(folder: PathLike, what: str = 'a seg-train run',
                name: str = LOCK_NAME) -> Iterator[Path]:
    """
    Hold an exclusive lock on ``folder`` (made if missing) while the block runs.

    Raises :class:`FolderBusyError` at once, naming the folder and the holder's PID, when
    another process holds it; :class:`FolderLockError` when the folder or its lock file cannot
    be made. Afterwards the lock file is removed, and the folder too if this call made it and
    it is still empty.
    """
    folder = Path(folder)
    made = not folder.exists()
    path = folder / name
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise FolderLockError(f'{path}: cannot be made: {e.strerror}') from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = _holder(path)
            raise FolderBusyError(
                f'{folder}: in use by {what} (PID {pid if pid is not None else "unknown"}); '
                'wait for it to end, or choose another folder') from None
        try:  # a holder that was ending may have removed the file we opened: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        yield path
    finally:
        try:
            path.unlink()  # while still holding it: a waiting opener sees a new inode
        except OSError as e:
            _logger.debug('%s: not removed: %s', path, e)
        os.close(fd)
        if made:
            try:
                folder.rmdir()  # only when nothing else was written there
            except OSError:
                pass
