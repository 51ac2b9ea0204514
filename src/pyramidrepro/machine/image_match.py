"""Whether an image's package reads the configs this host's package writes.

``submit --container`` pickles each point's config on the login node; the image's package
unpickles and validates it.  After a ``git pull`` without a rebuild (or the reverse), a key added,
removed or retyped on one side fails every job at start, after the queue wait.  The image records
its package's config schema (:func:`..config.experiment.schema_digest`) and commit in
``IMAGE_INFO.json`` when it is built; :func:`skew_problem` compares them with this host's, once per
submission, before anything is queued.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..config.experiment import schema_digest
from .container import IMAGE_INFO, Container
from .provenance import git_commit

#: IMAGE_INFO.json's key for the image package's config schema (containers/install.sh writes it)
SCHEMA_KEY = "config_schema"


def read_image_info(box: Container) -> dict[str, Any] | None:
    """The image's ``IMAGE_INFO.json`` (a folder image's file, or through Apptainer for a SIF), or
    None when it cannot be read (an image of an older recipe, or one not on this machine)."""
    image = Path(box.image)
    try:
        if image.is_dir():
            return json.loads((image / IMAGE_INFO.lstrip("/")).read_text())
        if image.is_file() and box.runtime == "apptainer":
            r = subprocess.run([box.executable, "exec", str(image), "cat", IMAGE_INFO], capture_output=True,
                               text=True, timeout=300)
            return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return None


def skew_problem(box: Container, info: dict[str, Any] | None) -> str | None:
    """Why the image's package would fail this host's configs (its schema differs), with the fix; None
    when the schemas match or the image does not say (an image built before it recorded one)."""
    if not info or SCHEMA_KEY not in info:
        return None
    ours = schema_digest()
    if info[SCHEMA_KEY] == ours:
        return None
    commit = str(info.get("commit", "unknown"))
    return (f"{box.image}: its package (commit {commit[:12]}) reads configs of schema {info[SCHEMA_KEY]}, this "
            f"host's package (commit {git_commit()[:12]}) writes schema {ours}, so every job would fail at start: "
            f"rebuild the image from this checkout (containers/build.sh), or install the image's commit here "
            f"(git checkout {commit.removesuffix('-dirty')[:12]} && pip install -e .)")
