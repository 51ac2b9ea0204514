"""``pyramidrepro --version``: the package, its commit and, inside an image, what the image was built from."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def version_text() -> str:
    """The package's version and commit, and, inside an image, what the image was built from."""
    from .. import __version__
    from ..machine.container import image_info
    from ..machine.provenance import git_commit

    text = f"pyramidrepro {__version__} (commit {git_commit()}, Python {sys.executable})"
    info = image_info()
    if info:
        text += (f"\nimage: commit {info.get('commit', '?')}, recipe {info.get('recipe', '?')}, "
                 f"built {info.get('built', '?')}")
    return text


class VersionAction(argparse.Action):
    """``--version``, worked out only when asked for (it runs git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version, commit and image, then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()
