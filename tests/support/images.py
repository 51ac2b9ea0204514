"""A folder laid out as an image of this recipe, for checks that read an image and start nothing
(dry runs, the schema comparison): the package's and Python's paths, and an ``IMAGE_INFO.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fake_image(folder: Path, info: dict[str, Any] | None = None) -> Path:
    """``folder`` with /opt/pyramidrepro/src/pyramidrepro/__init__.py, /opt/venv/bin/python and,
    when ``info`` is given, /opt/pyramidrepro/IMAGE_INFO.json holding it."""
    for part in ("opt/pyramidrepro/src/pyramidrepro/__init__.py", "opt/venv/bin/python"):
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        (folder / part).write_text("")
    if info is not None:
        (folder / "opt/pyramidrepro/IMAGE_INFO.json").write_text(json.dumps(info))
    return folder
