"""What the CLI makes of an exception a handler raises: one line on stderr and an exit code, or a traceback."""

from __future__ import annotations

import errno
import sys

from ..config.errors import ConfigError
from ..config.schema import EXIT_BAD_INPUT

EXIT_CTRL_C = 130
EXIT_SIGTERM = 143


def _say(text: str) -> None:
    """``pyramidrepro: TEXT`` on stderr, in one line (a tool's own lines quoted in it are joined by ``; ``)."""
    one_line = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    print(f"pyramidrepro: {one_line}", file=sys.stderr, flush=True)


def interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C, or SIGTERM in a run (its status says interrupted): say which; 130 or 143."""
    from ..machine.interrupts import RunInterrupted

    term = isinstance(exc, RunInterrupted)
    _say(f"interrupted ({'SIGTERM' if term else 'Ctrl-C'})")
    return EXIT_SIGTERM if term else EXIT_CTRL_C


def exit_code_for(exc: Exception) -> int | None:
    """The exit code of a problem the user can fix, said in one line; None: a bug (let it raise)."""
    from ..records.lock import RunFolderError
    from ..workload.data import DataError

    if isinstance(exc, (ConfigError, DataError, FileNotFoundError, RunFolderError)):
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    if isinstance(exc, PermissionError):  # someone else's campaign, reference or results folder
        _say(f"error: {exc.filename or ''}: permission denied ({exc.strerror or exc})")
        return EXIT_BAD_INPUT
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in ("torch", "torchvision"):
        _say(f"error: this command needs {exc.name.split('.')[0]}, which is not installed here (a login node's "
             "package has none; jobs train in the image): pip install 'pyramidrepro[train]'")
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # a full disk
        _say(f"error: {exc.strerror or exc}")
        return 1
    return None
