"""The image's Python started with only the variables a run needs: ``--cleanenv``, done inside.

The container runtime starts this file with the image's Python (``-I -S``: no ``PYTHONPATH``, no
user site, nothing imported but the standard library); it keeps the variables of
:data:`PASS_PREFIXES` and :data:`PASS_NAMES` with the values they have *on the node, at that moment*
(Slurm's task variables differ per rank, which no list fixed at submit time could give), sets the
image's ``PATH`` (after ``relay/``, whose ``scontrol`` relays a requeue, when ``relay.sh`` started the task), names
what it kept in :data:`PASSED_VARIABLE`, and replaces itself with the image's Python and the
arguments that follow.  A host's ``PYTHONPATH``, ``LD_PRELOAD``, ``VIRTUAL_ENV`` or
``CONDA_*`` therefore never reach the run.  A runtime's own library path (Apptainer's ``--nv``
drivers) is kept, a host's is not.
"""

from __future__ import annotations

import os
import sys

#: variable families a run reads: Slurm and the launchers' rendezvous, NCCL/CUDA/threads, libraries
#: that tune the interconnect (UCX, libfabric), the runtimes' own, and the package's
PASS_PREFIXES = ("SLURM_", "SLURMD_", "SUBMITIT_", "NCCL_", "CUDA_", "NVIDIA_", "CUDNN_", "TORCH_", "TORCHELASTIC_",
                 "PYTORCH_", "OMP_", "MKL_", "KMP_", "DALI_", "GLOO_", "UCX_", "FI_", "APPTAINER_", "SINGULARITY_",
                 "CH_", "PYRAMIDREPRO_")
#: single variables: torch.distributed's rendezvous, the user, the locale, Python's output mode, the
#: job's node-local scratch (bound in by machine.container)
PASS_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
              "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM",
              "TZ", "HOSTNAME", "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER", "TMPDIR")
#: set inside: the names this file passed on, comma-separated (the run records them)
PASSED_VARIABLE = "PYRAMIDREPRO_CONTAINER_PASSED"
#: set by the host: more names to keep, comma-separated (the experiment's own ``container.env``)
KEEP_VARIABLE = "PYRAMIDREPRO_CONTAINER_KEEP"
IMAGE_PYTHON = "/opt/venv/bin/python"  # config.binds.IMAGE_PYTHON: this file imports nothing of the package
IMAGE_PATH = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
#: set by the host's requeue relay (relay/relay.sh): the file its ``scontrol`` writes a request to
RELAY_REQUEST_VARIABLE = "PYRAMIDREPRO_RELAY_REQUEST"
#: that ``scontrol``: the image's own copy, beside this file (no exec from the results folder needed)
RELAY_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay")
#: runtimes that set the library path themselves (their drivers' folder): kept only under them
LIBRARY_PATH_RUNTIMES = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")


def passes(name: str) -> bool:
    """Whether ``name`` is passed into the run."""
    return name in PASS_NAMES or name.startswith(PASS_PREFIXES)


def cleaned(environ: dict[str, str]) -> dict[str, str]:
    """What the run's environment becomes inside the image, from ``environ`` as it is there."""
    extra = set(filter(None, environ.get(KEEP_VARIABLE, "").split(",")))
    kept = {k: v for k, v in environ.items() if (passes(k) or k in extra) and k != PASSED_VARIABLE}
    if any(environ.get(k) for k in LIBRARY_PATH_RUNTIMES) and environ.get("LD_LIBRARY_PATH"):
        kept["LD_LIBRARY_PATH"] = environ["LD_LIBRARY_PATH"]
    kept[PASSED_VARIABLE] = ",".join(sorted(kept))
    kept["PATH"] = f"{RELAY_BIN}:{IMAGE_PATH}" if environ.get(RELAY_REQUEST_VARIABLE) else IMAGE_PATH
    return kept


if __name__ == "__main__":
    os.execve(IMAGE_PYTHON, [IMAGE_PYTHON, *sys.argv[1:]], cleaned(dict(os.environ)))
