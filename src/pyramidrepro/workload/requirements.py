"""What a loader needs beyond torch, checked without importing it: ``submit`` and ``reproduce`` ask on a
machine that may have no torch, before anything is created."""

from __future__ import annotations

import importlib.util

#: what to do when DALI is not installed: the extra, or the tensor loader
DALI_MISSING = ("dali needs NVIDIA DALI: pip install 'pyramidrepro[dali]' (nvidia-dali-cuda130, matching torch's "
                "CUDA 13 build), or use the tensor loader: --set data.loader=torch")
#: the package each loader imports, and the fix when it is missing
NEEDS = {
    "dali": ("nvidia.dali", DALI_MISSING),
    "torchvision": ("torchvision", "torchvision needs the torchvision package: pip install torchvision, or use "
                                   "the tensor loader: --set data.loader=torch"),
}


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here (it is not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # a parent missing, or a module set to None
        return False


def missing_for(loader: str) -> str | None:
    """The fix when ``loader``'s package cannot be imported here, else None."""
    module, fix = NEEDS.get(loader, ("", ""))
    return fix if module and not importable(module) else None
