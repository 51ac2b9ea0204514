"""Fetching the official CIFAR-10 archive where there is internet (a login node) into the folder
that compute nodes, which have none, then read: ``pyramidrepro data fetch``.

What the reader (:func:`.data.load_cifar10`) looks for only ever appears whole: the archive is
streamed into a hidden partial file, its MD5 checked before anything is unpacked, the expected
members unpacked into a hidden folder beside the target, and both renamed into place.  An
interrupted try leaves only hidden leftovers, which the next try removes first.  urllib only, and
no torch: a login node's package has neither torch nor anything else to download with.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .cifar_files import (
    ARCHIVE_NAME,
    ARCHIVE_URL,
    BATCHES_DIR,
    META_FILE,
    OFFICIAL_MD5,
    TEST_FILES,
    TRAIN_FILES,
    DataError,
    md5_file,
)

OFFICIAL_ARCHIVE_MD5 = OFFICIAL_MD5[ARCHIVE_NAME]
#: the names a fetch writes before anything is in place: hidden, and never read by the loader
PARTIAL_ARCHIVE = f".{ARCHIVE_NAME}.part"
UNPACKING_PREFIX = f".{BATCHES_DIR}.unpacking-"
RETIRED_PREFIX = f".{BATCHES_DIR}.retired-"
#: the files of ``BATCHES_DIR/`` that a fetch unpacks (the archive's readme.html is left in it)
MEMBERS = (*TRAIN_FILES, *TEST_FILES, META_FILE)
TIMEOUT_S = 60.0
CHUNK = 1 << 20
REPORT_EVERY_S = 5.0


def fetch_cifar10(
    root: Path, url: str = ARCHIVE_URL, md5: str = OFFICIAL_ARCHIVE_MD5, progress: TextIO | None = None,
    *, force: bool = False, timeout: float = TIMEOUT_S,
) -> Path:
    """``root/cifar-10-batches-py``, complete: downloaded from ``url``, its MD5 ``md5`` checked before
    it is unpacked, the archive kept as ``root/cifar-10-python.tar.gz``.  Nothing is downloaded when
    the folder is complete already, nor when the archive in place has that MD5 (``force``: both are
    fetched again).  What it does is said on ``progress``; a problem is a DataError."""
    root = Path(root)
    folder = root / BATCHES_DIR
    with _fetch_folder(root, progress):
        if not force and complete_folder(folder):
            _say(progress, f"{folder} is complete already: nothing downloaded (--force fetches it again)")
            return folder
        archive = _verified_archive(root, url, md5.lower(), progress, timeout, reuse=not force)
        _unpack_into_place(archive, folder)
        _say(progress, f"unpacked {len(MEMBERS)} files into {folder}")
        if archive.name == PARTIAL_ARCHIVE:
            os.replace(archive, root / ARCHIVE_NAME)
        return folder


def fetch_archive(
    root: Path, url: str = ARCHIVE_URL, md5: str = OFFICIAL_ARCHIVE_MD5, progress: TextIO | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """``root/cifar-10-python.tar.gz``, downloaded and its MD5 checked, not unpacked (``data.download``)."""
    root = Path(root)
    with _fetch_folder(root, progress):
        part = root / PARTIAL_ARCHIVE
        download_verified(url, part, md5.lower(), progress, timeout)
        os.replace(part, root / ARCHIVE_NAME)
        return root / ARCHIVE_NAME


def complete_folder(folder: Path) -> bool:
    """Whether ``folder`` holds every file a fetch unpacks."""
    return all((folder / name).is_file() for name in MEMBERS)


def download_verified(url: str, dest: Path, md5: str, progress: TextIO | None = None,
                      timeout: float = TIMEOUT_S) -> None:
    """Stream ``url`` into ``dest`` and check its MD5 (lower-case hex); a failure removes ``dest``."""
    _say(progress, f"downloading {url}")
    try:
        digest = _stream(url, dest, progress, timeout)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            raise DataError(f"download of {url} failed ({_reason(exc)}); nothing was kept") from None
        raise
    if digest != md5:
        dest.unlink(missing_ok=True)
        raise DataError(f"{url}: the download has MD5 {digest}, expected {md5}; "
                        "it was removed before anything was unpacked")
    _say(progress, f"MD5 {digest} as expected")


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------


class _Meter:
    """Progress lines on ``out``: at every further tenth of ``total`` bytes, or every few seconds."""

    def __init__(self, out: TextIO | None, total: int | None) -> None:
        self.out, self.total, self.done = out, total, 0
        self._next_tenth = 1
        self._last_said = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        tenth_due = bool(self.total) and self.done * 10 >= self._next_tenth * self.total
        if tenth_due or now - self._last_said >= REPORT_EVERY_S:
            if self.total:
                self._next_tenth = self.done * 10 // self.total + 1
            self._last_said = now
            _say(self.out, f"  {self.line()}")

    def line(self) -> str:
        if not self.total:
            return f"{self.done / 1e6:.1f} MB"
        return f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB ({100 * self.done // self.total} %)"


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    try:
        return int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _stream(url: str, dest: Path, progress: TextIO | None, timeout: float) -> str:
    """Write what ``url`` serves into ``dest`` (synced to disk); its MD5, computed on the way."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        meter = _Meter(progress, _content_length(resp))
        read = getattr(resp, "read1", resp.read)  # what has arrived: a slow link still makes progress
        while chunk := read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            meter.advance(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if meter.total is not None and meter.done != meter.total:
        raise DataError(f"download of {url} ended after {meter.done} of {meter.total} bytes; nothing was kept")
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _verified_archive(root: Path, url: str, md5: str, progress: TextIO | None, timeout: float,
                      reuse: bool) -> Path:
    """The archive in place when ``reuse`` and it has ``md5``; else a download of ``url`` (verified)."""
    in_place = root / ARCHIVE_NAME
    if reuse and in_place.is_file() and md5_file(in_place) == md5:
        _say(progress, f"{in_place} is here already with MD5 {md5}: unpacking it, nothing downloaded")
        return in_place
    part = root / PARTIAL_ARCHIVE
    download_verified(url, part, md5, progress, timeout)
    return part


# ---------------------------------------------------------------------------------------------
# Unpacking and putting into place
# ---------------------------------------------------------------------------------------------


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The file name when ``member`` is a regular file ``BATCHES_DIR/<one of MEMBERS>``, else None."""
    parts = member.name.removeprefix("./").split("/")
    if member.isfile() and len(parts) == 2 and parts[0] == BATCHES_DIR and parts[1] in MEMBERS:
        return parts[1]
    return None


def _extract_members(archive: Path, into: Path) -> None:
    """Write the expected members of ``archive`` into ``into`` by their bare names; nothing else is read."""
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _member_name(member)
                source = tar.extractfile(member) if name and name not in found else None
                if source is None:
                    continue
                with source, open(into / name, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                found.add(name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{archive}: not a readable tar.gz archive ({exc}); nothing was put in place") from None
    missing = [name for name in MEMBERS if name not in found]
    if missing:
        raise DataError(f"{archive}: lacks {BATCHES_DIR}/{', '.join(missing)}; nothing was put in place")


def _unpack_into_place(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into a hidden folder beside ``folder``, then rename it to ``folder``."""
    staging = folder.parent / f"{UNPACKING_PREFIX}{os.getpid()}"
    staging.mkdir()
    try:
        _extract_members(archive, staging)
        _rename_over(staging, folder)
    except BaseException:
        _remove(staging)
        raise


def _rename_over(source: Path, target: Path) -> None:
    """Rename the folder ``source`` to ``target``; a ``target`` already there is moved aside first
    (a reader sees the old folder, then none, then the new one: never a half one) and removed."""
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    retired = target.parent / f"{RETIRED_PREFIX}{os.getpid()}"
    os.rename(target, retired)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(retired, target)
        raise
    _remove(retired)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The folder a fetch writes into
# ---------------------------------------------------------------------------------------------


def leftovers(root: Path) -> list[Path]:
    """What an interrupted fetch (or the old ``data.download``) left in ``root``: hidden, never read."""
    stale = [root / PARTIAL_ARCHIVE, root / f"{ARCHIVE_NAME}.part"]
    stale += [*root.glob(f"{UNPACKING_PREFIX}*"), *root.glob(f"{RETIRED_PREFIX}*")]
    return [path for path in stale if path.exists() or path.is_symlink()]


@contextlib.contextmanager
def _fetch_folder(root: Path, progress: TextIO | None) -> Iterator[None]:
    """``root``, made when missing, held against a second fetch and cleared of leftovers; when the fetch
    fails, its own leftovers are removed, and the folders this made when they are empty again."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is not a folder; give the folder to put CIFAR-10 in")
    made = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot make the folder {root} ({exc.strerror or exc})") from None
    with _exclusive(root):  # a second fetch is refused here, before it could clear the first one's files
        try:
            for path in leftovers(root):
                _say(progress, f"removing {path.name}, left by an interrupted fetch")
                _remove(path)
            yield
        except BaseException:
            for path in leftovers(root):
                _remove(path)
            for folder in made:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """An exclusive lock on the folder ``root`` for the block; a file system without locks goes unlocked."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another fetch is writing into {root}; let it finish (or stop it) first") from None
        except OSError:
            pass  # some network file systems refuse flock on a folder: go on without it
        yield
    finally:
        os.close(fd)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)
