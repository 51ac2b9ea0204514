"""An interpreter as a machine without some packages has it: a ``sitecustomize`` that refuses to import
them (as if not installed), put first on ``PYTHONPATH`` of the processes a test starts."""

from __future__ import annotations

from pathlib import Path

HIDER = '''
import sys

HIDDEN = {hidden!r}


class _Hidden:
    """Refuse the packages this machine is taken not to have, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: {{sorted(HIDDEN)}} are not installed)",
                                      name=name)
        return None


sys.meta_path.insert(0, _Hidden())
'''


def hiding_env(folder: Path, hidden: set[str], pythonpath: str = "") -> dict[str, str]:
    """The environment variables under which a Python started by a test cannot import ``hidden``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDER.format(hidden=sorted(hidden)))
    return {"PYTHONPATH": f"{folder}:{pythonpath}" if pythonpath else str(folder)}
