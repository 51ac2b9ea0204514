"""Writing to a disk that may be full: check before writing, never leave a half-written file."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: free space kept in reserve below every write (HDF5 metadata, a checkpoint's pickling overhead)
SPACE_RESERVE_BYTES = 1 << 20


def ensure_space(folder: Path, nbytes: int, path: Path) -> None:
    """OSError(ENOSPC) naming ``path`` unless ``nbytes`` plus the reserve fit on ``folder``'s disk."""
    free = shutil.disk_usage(folder).free
    if free < nbytes + SPACE_RESERVE_BYTES:
        raise OSError(errno.ENOSPC, f"no space left on device writing {path} ({free:,} bytes free, "
                                    f"{nbytes + SPACE_RESERVE_BYTES:,} needed)")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename; on any failure the old file stands."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ensure_space(path.parent, len(data), path)
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
