"""Where a result came from: the source commit and the versions of everything that shapes it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: written into the package by an image build (containers/), where the source has no .git
BUILD_INFO = Path(__file__).resolve().parents[1] / "BUILD_COMMIT"


def git_commit() -> str:
    """The commit of the package's source tree, or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if BUILD_INFO.is_file():
        return BUILD_INFO.read_text().strip() or "unknown"
    return os.environ.get("PYRAMIDREPRO_GIT_COMMIT", "unknown")


def versions() -> dict[str, Any]:
    """Versions of everything that shapes a result."""
    import h5py
    import numpy as np
    import torch

    from .. import __version__
    from ..workload.loaders.dali import dali_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "dali": dali_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "pyramidrepro": __version__,
    }
