"""The lock that gives a run folder one owner (:class:`RunLock`), and the error for a folder that
cannot be used as asked (:class:`RunFolderError`)."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: another process owns it, its checkpoint is for another
    config or unreadable, or the disk is full.  Nothing of the earlier run was changed."""


#: the run folders this process holds, by the lock file's (device, inode): POSIX locks belong to the
#: process, so a second lock of the same file here would succeed, and closing it would drop the first
_HELD: set[tuple[int, int]] = set()
_HELD_GUARD = threading.Lock()
#: what a file system without working locks answers (NFSv3 without lockd, Lustre mounted without flock)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class RunLock:
    """An exclusive lock on a run folder, held for the run's life by the process that writes it.

    A POSIX record lock (``fcntl`` F_SETLK, write lock on the whole file) on ``.lock`` inside the
    folder: the kind of lock NFSv4 and Lustre (mounted with ``-o flock``) keep on the server, so it
    holds between nodes, and the OS drops it when the process ends, however it ends, so a killed
    run never leaves a stale lock (only the empty file, which the next owner takes over).
    :meth:`release` removes the file while still holding it, and an owner checks that the file it
    locked is still the one at the path, so a writer that opened the removed file retries on the
    new one.  A second writer, in this process or any other, gets :class:`RunFolderError`.  POSIX
    locks end when the process closes *any* descriptor of the file: nothing else opens ``.lock``,
    and the descriptor stays open until :meth:`release`.  Where the file system gives no locks at
    all, the run goes on with a warning.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None
        self.key: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        with _HELD_GUARD:
            if self._held_here():  # checked before opening: a second descriptor closed would drop the lock
                raise self._in_use()
            for _ in range(5):  # each retry: the owner we raced with removed the file as it ended
                fd = self._lock_file()
                st = os.fstat(fd)
                if self._still_at_path(st):
                    self.fd, self.key = fd, (st.st_dev, st.st_ino)
                    _HELD.add(self.key)
                    return self
                os.close(fd)
        raise self._in_use()

    def _lock_file(self) -> int:
        """A descriptor of ``.lock``, locked (or, where the file system has no locks, with a warning)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                print(f"pyramidrepro: warning: {self.path}: the file system gives no locks ({exc.strerror}); "
                      "a second run into this folder would not be refused", file=sys.stderr, flush=True)
                return fd
            os.close(fd)  # this process holds no lock on the file: closing drops nothing
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise self._in_use() from None
            raise
        return fd

    def _still_at_path(self, st: os.stat_result) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)

    def _held_here(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) in _HELD

    def _in_use(self) -> RunFolderError:
        return RunFolderError(f"{self.folder}: in use by a run that is still going; wait for it to end, "
                              "or give another --run-id")

    def release(self) -> None:
        with _HELD_GUARD:
            if self.fd is not None:
                try:
                    os.unlink(self.path)  # removed while held: nothing is left behind
                except FileNotFoundError:
                    pass
                os.close(self.fd)  # closing the descriptor drops the lock
                _HELD.discard(self.key)  # type: ignore[arg-type]
                self.fd = self.key = None
