"""Whether this node's NVIDIA driver can run the CUDA that torch was built for.

A driver older than a CUDA release's minimum does not fail loudly: CUDA simply sees no device, and
a job meant for a GPU dies with "no CUDA device".  The minimums are NVIDIA's (CUDA Toolkit release
notes, table "CUDA Toolkit and Minimum Required Driver Version" for Linux, minor version
compatibility): the oldest driver of each CUDA major release.  Torch-free: the version comes in as
text, so the check is testable on any machine.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the kernel module's version line: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06 ..."
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
#: CUDA major release -> the oldest Linux driver that runs it
MINIMUM_DRIVER = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}
#: the image's CUDA lines (containers/build.sh CUDA_LINE=...): line -> its CUDA major release; each
#: line's lock is containers/requirements.lock (cu130) or containers/requirements-<line>.lock
CUDA_LINES = {"cu130": 13, "cu128": 12}


def node_driver(path: Path | None = None) -> str | None:
    """This node's NVIDIA kernel-module version ("580.65.06"), or None without a driver."""
    try:
        text = (path or DRIVER_VERSION_FILE).read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def driver_problem(driver: str | None, cuda: str | None) -> str | None:
    """One line when ``driver`` (a node's version, None: no driver) is older than the one CUDA
    ``cuda`` (torch.version.cuda, None: a CPU build) needs; None when it is new enough or unknown."""
    if not driver or not cuda or not _numbers(cuda) or not _numbers(driver):
        return None
    needed = MINIMUM_DRIVER.get(_numbers(cuda)[0])
    if needed is None or _numbers(driver) >= _numbers(needed):
        return None
    return (f"this torch is built for CUDA {cuda}, which needs an NVIDIA driver >= {needed}; this node's "
            f"driver is {driver}: CUDA sees no GPU (run on nodes with a newer driver{_other_line(driver)})")


def line_for(driver: str) -> str | None:
    """The newest image line (:data:`CUDA_LINES`) whose CUDA ``driver`` runs, or None."""
    fits = [(major, line) for line, major in CUDA_LINES.items()
            if _numbers(driver) >= _numbers(MINIMUM_DRIVER[major])]
    return max(fits)[1] if fits else None


def _other_line(driver: str) -> str:
    line = line_for(driver)
    if line is None:
        return ""
    return (f", or the image's {line} line, which this driver runs: CUDA_LINE={line} bash containers/build.sh, "
            f"driver >= {MINIMUM_DRIVER[CUDA_LINES[line]]}")


def gpus_without_torch() -> int:
    """GPUs this node shows, asked of ``nvidia-smi -L`` (a host without torch: the image will use
    them); ``CUDA_VISIBLE_DEVICES`` narrows them as CUDA would.  0 without nvidia-smi."""
    import os
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(line.startswith("GPU ") for line in listed.splitlines())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return n if visible is None else min(n, len([v for v in visible.split(",") if v.strip()]))
