"""What training and each loader need, checked without importing them: a login node may have the
package without torch (``pip install pyramidrepro``, torch in the ``train`` extra), and ``submit``,
``reproduce`` and ``run`` ask before anything is created."""

from __future__ import annotations

import importlib.util

#: what to do when DALI is not installed: the extra, or the tensor loader
DALI_MISSING = ("dali needs NVIDIA DALI: pip install 'pyramidrepro[dali]' (nvidia-dali-cuda130, matching torch's "
                "CUDA 13 build), or use the tensor loader: --set data.loader=torch")
#: what to do when torch is not installed and a command would train here
TORCH_MISSING = ("torch is not installed here, and without an image this command trains with this Python: "
                 "give --container IMAGE (or container.image), or pip install 'pyramidrepro[train]'")
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


def torch_missing() -> str | None:
    """The fix when torch cannot be imported here, else None."""
    return None if importable("torch") else TORCH_MISSING


def host_problem(loader: str, image: str) -> tuple[str, str] | None:
    """(key, fix) when jobs that run with this Python (no ``image``) could not train: torch, then
    ``loader``'s package; None with an image, which brings its own."""
    if image:
        return None
    if fix := torch_missing():
        return "container.image", fix
    fix = missing_for(loader)
    return ("data.loader", fix) if fix else None
