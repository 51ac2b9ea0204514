"""Parallel setup: who am I (rank discovery), process groups, model wrapping, local launcher.

The same entry point runs under ``torchrun`` (env://), under Slurm ``srun`` / submitit
(SLURM_* variables, master address from the node list, port from the job id), and under the
project's own launcher ``pyramidrepro run --nproc N``.  Nothing assumes a single node.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .interrupts import STOP_SIGNALS, ended_interrupted, interruption
from .slurm_job import expand_nodelist


@dataclass
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # none | env (torchrun / pyramidrepro --nproc) | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"


#: the ports :func:`port_from_job_id` derives, both included: below Linux's ephemeral range (32768-60999 by
#: default, net.ipv4.ip_local_port_range), from which the kernel takes the local port of every outgoing
#: connection, so a busy node has not already given the port to one (EADDRINUSE); above the ports of
#: common services.  ``cluster.master_port`` sets one port instead.
DERIVED_PORTS = (15000, 32767)


def port_from_job_id(job_id: str | int) -> int:
    """A master port derived from the Slurm job id, so concurrent jobs on a node do not clash."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    low, high = DERIVED_PORTS
    return low + int(digits) % (high - low + 1)


def rendezvous_port(configured: int | None = None, environ: Mapping[str, str] | None = None,
                    job_id: str | int = 0) -> int:
    """The master port of a job's ranks: ``configured`` (``cluster.master_port``), else the environment's
    MASTER_PORT, else derived from SLURM_JOB_ID (or ``job_id``): every rank of a job computes the same."""
    env = os.environ if environ is None else environ
    if configured:
        return configured
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    return port_from_job_id(env.get("SLURM_JOB_ID") or job_id)


def detect_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the rank layout from torchrun/launcher variables, else from Slurm, else single."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="env",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        ntasks = int(env["SLURM_NTASKS"])
        nnodes = max(1, len(expand_nodelist(nodelist)))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=ntasks,
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
            or max(1, ntasks // nnodes),
            master_addr=env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
            master_port=rendezvous_port(environ=env),
            launcher="slurm",
        )
    return DistEnv()


def pick_device(requested: str, env: DistEnv) -> torch.device:
    """CUDA (this rank's local GPU) when present and allowed, else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("devices.device: cuda requested but no CUDA device is available")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_process_group(env: DistEnv, backend: str, device: torch.device, timeout_s: float) -> str:
    """Join the job's process group; ``backend`` auto means NCCL on GPUs, gloo on CPU."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise RuntimeError("train.backend: nccl needs a GPU for every rank; use gloo on CPU")
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    # env:// everywhere: under torchrun the agent's store is reused (its port is taken), and
    # Slurm / the local launcher export the same four variables first.
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(env.rank), str(env.world_size)
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return backend


def shutdown_process_group() -> None:
    """Leave the process group cleanly: a barrier, then destroy it while all peers are alive.

    The barrier keeps any rank (rank 0 hosts the TCP store) from tearing down connections a
    peer still uses.  See :func:`exit_rank` for the other half of a clean exit.
    """
    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


class ModelWithLoss(nn.Module):
    """Model + criterion as one module, for the balanced DataParallel.

    Each replica computes the loss on its own slice and returns only three numbers (loss sum,
    correct count, sample count), so the master GPU gathers scalars instead of all the logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = nn.CrossEntropyLoss(reduction="sum")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        loss_sum = self.criterion(logits.float(), y)
        correct = (logits.argmax(1) == y).sum().to(loss_sum.dtype)
        count = torch.ones_like(loss_sum) * y.shape[0]
        return torch.stack([loss_sum, correct.detach(), count]).unsqueeze(0)


class AutocastForward(nn.Module):
    """Runs the wrapped module's forward under autocast with a fixed dtype, in whatever thread.

    ``nn.DataParallel`` calls each replica in a worker thread of its own (``parallel_apply``),
    which re-enters autocast there without a dtype; autocast's dtype is thread-local and the
    CUDA default is fp16, so a bf16 run would compute its replicas in fp16 (with no GradScaler).
    Entering autocast inside the replica's forward makes the configured dtype hold everywhere.
    """

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args)


def wrap_model(
    model: nn.Module, mode: str, device: torch.device, *, allow_cpu_dp: bool = False,
    gradient_as_bucket_view: bool = True, static_graph: bool = False, bucket_cap_mb: float = 25.0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, list[int]]:
    """Wrap the model for ``mode``; returns the module to call and the GPU ids it spans.

    ``autocast_dtype`` (DP modes): the reduced precision each replica computes in.
    """
    if mode == "single":
        return model, [device.index or 0] if device.type == "cuda" else []
    if mode in ("dp", "dp_balanced"):
        inner = ModelWithLoss(model) if mode == "dp_balanced" else model
        if autocast_dtype is not None:
            inner = AutocastForward(inner, device.type, autocast_dtype)
        if device.type != "cuda":
            if not allow_cpu_dp:
                raise RuntimeError(
                    f"train.mode: {mode} needs CUDA GPUs (DataParallel scatters over GPUs); "
                    "set train.allow_cpu_dp: true to run the degenerate one-device CPU case"
                )
            return _CpuDataParallel(inner), []
        ids = list(range(torch.cuda.device_count()))
        return nn.DataParallel(inner, device_ids=ids, output_device=ids[0]), ids
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DDP(
            model, device_ids=ids, gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph, bucket_cap_mb=bucket_cap_mb,
        )
        return wrapped, ids or []
    raise ValueError(f"unknown train.mode {mode!r}")


class _CpuDataParallel(nn.Module):
    """The degenerate DataParallel on CPU: one replica, the module called as it is."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.module(*args)


def exit_rank(code: int) -> None:
    """End a rank process now, after its results are written and its process group is gone.

    Letting the interpreter tear itself down after a gloo job ran lets C++ static destructors
    run in an unspecified order; in about 1 run in 20 here one of them destroyed a thread
    object that was still joinable, and ``std::terminate`` aborted the rank with SIGABRT
    ("terminate called without an active exception") although every result was written.
    There is nothing left to tear down at this point, so the rank flushes its streams and
    leaves with ``os._exit``: no destructor runs, and the exit code is the run's.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Local launcher: pyramidrepro run --nproc N
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a rank, before exec: the kernel sends SIGKILL when the launcher dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own handlers still stop the ranks
        pass


def launch_local(cfg: Any, run_dir: Path, nproc: int, progress: bool = True, grace_s: float = 10.0,
                 rank_args: list[str] | None = None) -> int:
    """Run ``cfg`` as ``nproc`` DDP ranks on this machine (each ``python -m pyramidrepro run``).

    The ranks read the config from a file beside the run folder (the folder is rank 0's to write
    once it owns it).  When a rank fails or is killed, the launcher says which, gives the others
    ``grace_s`` seconds, then terminates them.  SIGTERM or Ctrl-C to the launcher reaches every rank
    at once; they stop at their next step boundary and record the run interrupted, and the launcher
    then raises what the signal stands for (:func:`.interrupts.interruption`: 130 or 143 at the CLI).
    ``grace_s`` is for ranks that do not stop.  If the launcher itself is killed, the kernel kills the
    ranks.  Returns 0 when every rank exits 0, else the first failing rank's code.  ``rank_args`` go on
    each rank's ``run`` command line.
    """
    import tempfile

    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd, config_file = tempfile.mkstemp(prefix=f".{run_dir.name}.", suffix=".yaml", dir=run_dir.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(cfg.to_yaml())
    argv = ["run", config_file, "--run-dir", str(run_dir), *(rank_args or [])] + ([] if progress else ["--no-progress"])
    port = free_port()
    procs: list[subprocess.Popen] = []
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        """Every stop signal to every rank now (a Ctrl-C at a terminal reaches them too: they note one)."""
        forwarded.append(signum)
        for p in procs:
            if p.returncode is None:
                p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        for rank in range(nproc):
            if forwarded:  # stopped while starting: the ranks started have the signal
                break
            env = dict(os.environ)
            env.update(
                RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            )
            procs.append(subprocess.Popen([sys.executable, "-m", "pyramidrepro", *argv], env=env,
                                          preexec_fn=_die_with_parent))
        failed = _supervise(procs, grace_s, forwarded)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
        Path(config_file).unlink(missing_ok=True)
    return _launcher_exit_code(failed, forwarded)


def _supervise(procs: list[subprocess.Popen], grace_s: float, forwarded: list[int]) -> tuple[int, int] | None:
    """Wait for the ranks; after the first failure (or a forwarded signal), give the rest ``grace_s``.

    Returns the first failure, (rank, exit code), or None when every rank exited 0.
    """
    failed: tuple[int, int] | None = None
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        if failed is None:
            failed = _first_failure(codes)
            if failed is not None and not (forwarded and ended_interrupted(failed[1])):
                _say_rank_ended(*failed)
        if (failed is not None or forwarded) and deadline is None:
            deadline = time.monotonic() + grace_s
        if all(c is not None for c in codes):
            return failed
        if deadline is not None and time.monotonic() > deadline:
            _stop_ranks(procs)
        time.sleep(0.1)


def _first_failure(codes: list[int | None]) -> tuple[int, int] | None:
    """(rank, exit code) of the first rank that ended other than with 0, or None."""
    for rank, code in enumerate(codes):
        if code not in (None, 0):
            return rank, code
    return None


def _say_rank_ended(rank: int, code: int) -> None:
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    print(f"pyramidrepro: rank {rank} ended ({how}); stopping the other ranks", file=sys.stderr, flush=True)


def _stop_ranks(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every rank still running, then SIGKILL to those still running 2 s later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    time.sleep(2)
    for p in procs:
        if p.poll() is None:
            p.kill()


def _launcher_exit_code(failed: tuple[int, int] | None, forwarded: list[int]) -> int:
    """0 when every rank exited 0 (the run completed, signal or not); the failing rank's code (128 + N
    for a signal N).  Ranks a forwarded signal stopped raise what the first such signal stands for."""
    if failed is None:
        return 0
    if forwarded and ended_interrupted(failed[1]):
        raise interruption(forwarded[0])
    return failed[1] if failed[1] > 0 else 128 - failed[1]
