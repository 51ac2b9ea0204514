"""Requeue from inside an image: the host side of submitit's ``scontrol requeue``.

submitit requeues a preempted or timed-out Slurm job from the job's own process (``scontrol requeue``
once the job has checkpointed).  With ``--container`` that process runs in the image, which has no
Slurm client.  So each task's command becomes ``/bin/sh relay.sh CONTAINER_PYTHON…``: ``relay.sh``
stays on the host, puts its folder's ``scontrol`` first on the image's PATH (that one only writes the
request down), outlives Slurm's signals, and runs the request with the host's ``scontrol`` once the
run has exited.  Both scripts are copied into the submission's folder, which the nodes and the image
see, so a compute node needs nothing of the login node's Python.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

#: the scripts, shipped beside this module
SOURCE = Path(__file__).with_name("relay")
FILES = ("relay.sh", "scontrol")


def install(folder: Path) -> Path:
    """Copy the relay's scripts into ``folder`` (made if missing; it must be bound into the image) and
    return the path of ``relay.sh`` there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = folder / name
        shutil.copyfile(SOURCE / name, target)
        target.chmod(0o755)
    return folder / "relay.sh"


def relayed(command: str, relay: Path) -> str:
    """``command`` (a container's Python, as one shell string) started through ``relay``."""
    return f"/bin/sh {shlex.quote(str(relay))} {command}"
