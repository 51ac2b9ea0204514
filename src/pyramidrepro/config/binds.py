"""A container bind, ``SRC[:DEST[:ro|rw]]``, and the image's own folders that no bind may cover.

The one owner of a bind's form: the config refuses a bad one (``container.binds``, so ``validate``,
``run`` and ``submit`` all do), and :mod:`pyramidrepro.machine.container` reads binds through
:func:`parse_bind` to build the runtime's command.  The image's layout is named here (the lowest
layer that needs it); ``containers/install.sh`` builds it.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import NamedTuple

from .errors import shown

#: where the image's recipe puts its Python environment and the package
IMAGE_VENV = "/opt/venv"
IMAGE_HOME = "/opt/pyramidrepro"
IMAGE_PYTHON = f"{IMAGE_VENV}/bin/python"
#: the image's own system folders: a bind at one of them, inside one or above one (``/``, ``/opt``)
#: would hide the image's Python, package or libraries behind the host's files
IMAGE_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", IMAGE_VENV, IMAGE_HOME)
BIND_FORM = "SRC[:DEST[:ro]]"
BIND_MODES = ("", "ro", "rw")


class Bind(NamedTuple):
    """One bind: the host's ``source`` seen at ``dest`` in the image, perhaps read-only."""

    source: str
    dest: str
    read_only: bool


def parse_bind(spec: str) -> Bind:
    """``SRC[:DEST[:ro|rw]]`` as a :class:`Bind` (DEST defaults to SRC); ValueError, in one line,
    for another form or a destination that would cover one of the image's own folders."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in BIND_MODES):
        raise ValueError(f"expected {BIND_FORM}, got {shown(spec)}")
    dest = parts[1] if len(parts) > 1 and parts[1] else parts[0]
    hidden = hidden_by(dest)
    if hidden:
        raise ValueError(f"{shown(spec)} would hide the image's {hidden} behind the host's files (no bind may be "
                         f"at, inside or above {', '.join(IMAGE_FOLDERS)}); bind at a folder of its own, such as /data")
    return Bind(parts[0], dest, len(parts) == 3 and parts[2] == "ro")


def hidden_by(dest: str) -> str | None:
    """The image's own folder a bind at ``dest`` hides (``dest`` is it, inside it or above it), or None.

    A relative ``dest`` is taken from the image's root, as the runtime places it."""
    at = PurePosixPath("/" + posixpath.normpath(dest).lstrip("/"))
    if at == PurePosixPath("/"):
        return "root /"
    for folder in map(PurePosixPath, IMAGE_FOLDERS):
        if at == folder or folder in at.parents or at in folder.parents:
            return str(folder)
    return None
