"""Requeue from inside an image: the host side of submitit's ``scontrol requeue``.

submitit requeues a preempted or timed-out Slurm job from the job's own process (``scontrol requeue``
once the job has checkpointed).  With ``--container`` that process runs in the image, which has no
Slurm client.  So each task's command becomes ``/bin/sh relay.sh CONTAINER_PYTHON…``: ``relay.sh``
starts a watcher on the host and replaces itself with the container command; in the image,
``machine/relay/scontrol`` (put first on the PATH by :mod:`..machine.clean_env`) writes the request down, the watcher
runs it with the node's ``scontrol`` at once and hands back its exit status.  ``relay.sh`` is copied
into the submission's folder, which the nodes see, so a compute node needs nothing of the login
node's Python; it is run by ``/bin/sh``, so that folder need not allow exec.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

#: the host's half, shipped beside this module
RELAY_SH = Path(__file__).with_name("relay.sh")
#: the image's half: the ``scontrol`` stub in :mod:`..machine.clean_env`'s folder (the image runs its own copy)
STUB_DIR = Path(__file__).parents[1] / "machine" / "relay"


def install(folder: Path) -> Path:
    """Copy ``relay.sh`` into ``folder`` (made if missing; the nodes must see it) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(RELAY_SH, folder / "relay.sh"))


def relayed(command: str, relay: Path, outlive_signals: bool) -> str:
    """``command`` (a container's Python, as one shell string) started through ``relay``;
    ``outlive_signals`` for a runtime that forwards none (``Container.forwards_signals``)."""
    flag = " --outlive-signals" if outlive_signals else ""
    return f"/bin/sh {shlex.quote(str(relay))}{flag} {command}"
