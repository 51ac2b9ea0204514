"""pyramidrepro: reproduce and extend the PyramidNet single / DataParallel / DDP throughput study."""

import sys

if sys.version_info < (3, 10):  # noqa: UP036 - this file parses on older Pythons: one line, not a traceback
    sys.stderr.write(f"pyramidrepro: error: needs Python >= 3.10, this is {sys.version.split()[0]} "
                     f"({sys.executable}); on RHEL 9: dnf install python3.11, then python3.11 -m venv\n")
    raise SystemExit(2)

__version__ = "0.1.0"
