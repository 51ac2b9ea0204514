"""Dispatch experiments through submitit: Slurm job arrays, local processes, or in-process debug.

``submit(cfg, ...)`` expands the sweep, gives every point a stable run id and its own folder, skips
the points whose run is done, and submits one job array per layout (submitit applies one set of sbatch
parameters to an array: DDP points need one task per GPU, single and DP points one task, and each asks
for its own GPUs, :mod:`.requests`).  The submitted callable, :class:`JobRunner`, lives in this
importable module and is checkpointable for requeue.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import os
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..config.errors import ConfigError
from ..config.experiment import ExperimentConfig, config_from_dict
from ..config.schema import Attr
from ..config.sweep import expand_sweep
from ..machine.container import resolve
from ..machine.image_match import read_image_info, skew_problem
from ..records.runs import CONFIG_NAME, is_done, run_dir_for, status_of
from ..workload.data import check_data_available
from ..workload.requirements import host_problem
from . import requeue_relay
from .follow import POLL_S, follow_jobs
from .requests import gpu_parameters, gpu_request, tasks_per_node
from .slurm_queue import Request, SlurmQueryError, node_sizes, unsatisfiable


def slurm_parameters(cfg: ExperimentConfig) -> dict[str, Any]:
    """submitit's update_parameters() arguments for one point."""
    c = cfg.cluster
    params: dict[str, Any] = {
        "name": cfg.name,
        "timeout_min": c.time_min,
        "nodes": c.nodes,
        "tasks_per_node": tasks_per_node(cfg),
        "cpus_per_task": c.cpus_per_task,
        **gpu_parameters(cfg),
    }
    if c.mem_gb:
        params["mem_gb"] = c.mem_gb
    if c.executor == "slurm":
        params.update(slurm_only_parameters(cfg))
    return params


def slurm_only_parameters(cfg: ExperimentConfig) -> dict[str, Any]:
    """The ``slurm_*`` parameters of one point: where it runs, how it is signalled, what the job sets up."""
    c = cfg.cluster
    params: dict[str, Any] = {f"slurm_{key}": getattr(c, key) for key in ("partition", "account", "qos", "constraint")
                              if getattr(c, key)}
    params["slurm_array_parallelism"] = c.array_parallelism
    params["slurm_signal_delay_s"] = c.signal_delay_s
    if c.wckey:  # else none at all: make_executor clears submitit's own --wckey=submitit
        params["slurm_wckey"] = c.wckey
    if c.exclusive:
        params["slurm_exclusive"] = True
    given = {str(k).replace("-", "_") for k in c.additional_parameters}
    requeue = {} if given & {"requeue", "no_requeue"} else {"requeue" if c.requeue else "no_requeue": True}
    params["slurm_additional_parameters"] = {**requeue, **c.additional_parameters,
                                             **({"reservation": c.reservation} if c.reservation else {})}
    port = [f"export MASTER_PORT={c.master_port}"] if c.master_port else []
    # Slurm 22.05-23.02: srun does not inherit the job's --cpus-per-task; without this each
    # rank's step gets one CPU
    params["slurm_setup"] = [f"export SRUN_CPUS_PER_TASK={c.cpus_per_task}", *port, *c.setup]
    # one rank lost (killed, its node gone) ends the others at once instead of leaving them
    # blocked in a collective until the job's time limit
    params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    return params


def request_of(cfg: ExperimentConfig) -> Request:
    """What one point of ``cfg`` asks of each Slurm node."""
    c = cfg.cluster
    gpus = gpu_request(cfg)
    return Request(nodes=c.nodes, tasks_per_node=tasks_per_node(cfg), cpus_per_task=c.cpus_per_task,
                   gpus_per_node=gpus.count, mem_mb=int(c.mem_gb * 1024) if c.mem_gb else 0,
                   partition=c.partition or "", gres=gpus.gres or "")


def preflight(cfg: ExperimentConfig, source: str) -> None:
    """Refuse (ConfigError) a Slurm request that no node of the cluster can ever hold."""
    req = request_of(cfg)
    try:
        nodes = node_sizes()
    except SlurmQueryError as exc:
        raise ConfigError(source, "cluster.executor", f"slurm: cannot read the cluster's nodes ({exc})") from None
    why = unsatisfiable(req, nodes)
    if why:
        raise ConfigError(source, "cluster", f"no node can run {req.describe()}: {why} "
                                             "(sinfo -N lists the nodes; --no-preflight submits anyway)")


def _layout(cfg: ExperimentConfig) -> tuple:
    return (tasks_per_node(cfg), cfg.cluster.nodes, gpu_request(cfg))


class JobRunner:
    """The callable a job runs: one sweep point, one run folder; requeueable."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str) -> None:
        self.cfg_dict, self.run_dir = cfg_dict, run_dir
        self.trainer = None

    def __call__(self) -> dict[str, Any]:
        import submitit

        from ..training.train import Trainer

        cfg = config_from_dict(self.cfg_dict, f"{self.run_dir}/{CONFIG_NAME}")
        job_env = submitit.JobEnvironment()
        if job_env.num_tasks > 1:
            from ..machine.parallel import rendezvous_port

            # submitit would pick a port in 20000-60000, across the ephemeral range: ours, or the experiment's
            os.environ["MASTER_PORT"] = str(rendezvous_port(cfg.cluster.master_port, job_id=job_env.job_id))
            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        elif job_env.global_rank != 0:  # pragma: no cover - non-DDP points run one task
            return {"status": "skipped", "rank": job_env.global_rank}
        # the Slurm job itself (system.slurm_attributes) and the image (container.container_attributes)
        # are recorded by every run
        attrs = {Attr.SUBMITIT_JOB_ID: job_env.job_id}
        self.trainer = Trainer(cfg, self.run_dir, extra_attrs=attrs, progress=False)
        status = self.trainer.run()
        if job_env.num_tasks > 1:
            # submitit writes the result before the interpreter exits; end the rank then without
            # running C++ teardown (see parallel.exit_rank).
            from ..machine.parallel import exit_rank

            atexit.register(exit_rank, 0)
        return {"status": status, "run_dir": self.run_dir, "rank": job_env.global_rank}

    def checkpoint(self, *args: Any, **kwargs: Any):  # noqa: ANN201 - submitit API
        """Rank 0 on preemption/timeout: checkpoint (``Trainer.prepare_requeue``) and requeue this point.

        The other ranks get no call; the requeue ends them with the job, they write nothing
        (only rank 0 writes), and on restart every rank resumes from rank 0's checkpoint.
        """
        import submitit

        if self.trainer is not None:
            self.trainer.prepare_requeue()
        return submitit.helpers.DelayedSubmission(JobRunner(self.cfg_dict, self.run_dir))


try:
    from submitit.core.utils import FailedJobError
except ImportError:  # pragma: no cover - submitit is a dependency; keep --help working without it
    FailedJobError = RuntimeError  # type: ignore[misc,assignment]


def make_executor(cfg: ExperimentConfig, folder: Path, python: str | None = None):  # noqa: ANN201
    """submitit's executor for ``cfg``; ``python`` starts each task's interpreter (a container's)."""
    import submitit

    kwargs: dict[str, Any] = {}
    cluster = cfg.cluster.executor
    if cluster == "slurm":
        kwargs["slurm_max_num_timeout"] = cfg.cluster.max_requeues
    if python and cluster in ("slurm", "local"):
        kwargs[f"{cluster}_python"] = python
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster, **kwargs)
    executor.update_parameters(**slurm_parameters(cfg))
    if cluster == "slurm" and not cfg.cluster.wckey:
        # submitit's Slurm executor sends --wckey=submitit unless its wckey is None, a value AutoExecutor
        # drops as "not set": cleared on the Slurm executor itself (sites refuse unknown wckeys)
        executor._executor.update_parameters(wckey=None)
    return executor


def sbatch_preview(cfg: ExperimentConfig, folder: Path, python: str | None, array_size: int) -> str:
    """The sbatch script submitit would write for this layout (nothing is submitted)."""
    from submitit.slurm import slurm

    as_slurm = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, executor="slurm"))
    executor = make_executor(as_slurm, folder, python)
    inner = executor._executor
    params = dict(inner.parameters)
    if array_size > 1:
        params["map_count"] = array_size
    command = " ".join([inner.python, "-u -m submitit.core._submit", shlex.quote(str(inner.folder))])
    return slurm._make_sbatch_string(command=command, folder=inner.folder, **params)


@dataclasses.dataclass(frozen=True)
class Checks:
    """What :func:`submit` checks beyond the config before anything is written: each layout's request
    against the nodes ``sinfo`` lists, and each point's CIFAR-10 under its data.root."""

    nodes: bool = True
    data: bool = True


#: hears of each job array as soon as sbatch took it: (run id, job) per point
Submitted = Callable[[list[tuple[str, Any]]], None]


def submit(cfg: ExperimentConfig, source: str, out: str | Path, dry_run: bool = False,
           stream: TextIO | None = None, points: list[tuple[str, ExperimentConfig]] | None = None,
           checks: Checks = Checks(), on_submitted: Submitted | None = None) -> list[tuple[str, Any]]:
    """Submit ``points`` as given, or every sweep point whose run is not done; returns (run id, submitit
    job) per point submitted (none for a dry run or when every run is done).

    Everything is checked before anything is written: the image, every point, Slurm's client
    (:func:`check_slurm_client`) and ``checks``. Folders made for a submission that sbatch then refuses
    are removed again; where it refuses an array after others were queued, ``on_submitted`` has heard
    of those before the ConfigError is raised."""
    out, stream = Path(out).resolve(), stream or sys.stdout  # sys.stdout now, not at import (tests redirect it)
    cfg.cluster.validate(source)
    points = not_done(expand_sweep(cfg, source), out, cfg.name, stream) if points is None else points
    if not points:
        print(f"nothing to submit: every run of {cfg.name} is done", file=stream)
        return []
    # unique per submission: a cluster restarted from scratch gives its job ids again
    folder = out / ".submitit" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    box = resolve(cfg, source, preview=dry_run)  # ConfigError before anything is written
    if box and (skew := skew_problem(box, read_image_info(box))):
        raise ConfigError(source, "container.image", skew)
    if box and cfg.cluster.executor == "debug":
        raise ConfigError(source, "cluster.executor", "debug runs the jobs in this process, which cannot run in "
                                                      f"the image {box.image}: use local or slurm")
    groups: dict[tuple, list[tuple[str, ExperimentConfig]]] = {}
    for run_id, point_cfg in points:
        groups.setdefault(_layout(point_cfg), []).append((run_id, point_cfg))
    print(f"{len(points)} point(s) of {cfg.name} -> {len(groups)} job array(s), results under "
          f"{out / cfg.name}", file=stream)
    check_before_writing(cfg, source, groups, submits_to_slurm=not dry_run and cfg.cluster.executor == "slurm",
                         checks=checks)
    new_folders = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    if box and not dry_run:
        out.mkdir(parents=True, exist_ok=True)  # bound into the image: it must exist
    python = box.python_command([out, Path(cfg.data.root).resolve()],
                                on_node=cfg.cluster.executor == "slurm") if box else None
    if python and cfg.cluster.executor == "slurm":  # submitit's requeue, from inside the image
        relay = folder / "relay" / "relay.sh"
        python = requeue_relay.relayed(python, relay if dry_run else requeue_relay.install(relay.parent),
                                       outlive_signals=not box.forwards_signals)
    if dry_run:
        for members in groups.values():
            print_preview(cfg.name, out, members, folder, python, stream)
        return []
    arrays = [(cfg.name, source, out, members, folder, python, stream) for members in groups.values()]
    return submit_arrays(arrays, new_folders, on_submitted or (lambda submitted: None))


def submit_arrays(arrays: list[tuple], new_folders: list[Path], on_submitted: Submitted) -> list[tuple[str, Any]]:
    """Each array's :func:`submit_array` in turn, ``on_submitted`` told of each; when sbatch refuses the
    first, the folders made for the submission are removed again."""
    jobs: list[tuple[str, Any]] = []
    try:
        for array in arrays:
            submitted = submit_array(*array)
            on_submitted(submitted)
            jobs += submitted
    except ConfigError:  # sbatch refused an array
        if not jobs:  # nothing queued: leave nothing behind
            remove_new_folders(new_folders)
        raise
    return jobs


def not_done(points: list[tuple[str, ExperimentConfig]], out: Path, name: str,
             stream: TextIO) -> list[tuple[str, ExperimentConfig]]:
    """The points whose run is not done (:func:`..records.runs.is_done`, as ``reproduce`` skips them); one line per
    point left out."""
    todo = []
    for run_id, point_cfg in points:
        folder = run_dir_for(out, name, run_id)
        if is_done(folder):
            print(f"skip {run_id}: done ({status_of(folder)})", file=stream)
        else:
            todo.append((run_id, point_cfg))
    return todo


def check_before_writing(cfg: ExperimentConfig, source: str, groups: dict[tuple, list[tuple[str, ExperimentConfig]]],
                         submits_to_slurm: bool, checks: Checks) -> None:
    """ConfigError for the first point that cannot be dispatched, DataError (``checks.data``) for one whose
    CIFAR-10 is not under its data.root (as ``run`` checks it, but before any job queues), and for a Slurm
    submission, a client that cannot submit or (``checks.nodes``) a layout that no node can hold."""
    for members in groups.values():
        for run_id, point_cfg in members:
            validate_dispatch(point_cfg, f"{source} ({run_id})")
    datas = {(p.data.source, p.data.root): p.data for members in groups.values() for _, p in members}
    for data in datas.values() if checks.data else ():
        check_data_available(data)
    if submits_to_slurm:
        check_slurm_client(source)
    if submits_to_slurm and checks.nodes:
        for members in groups.values():
            preflight(members[0][1], f"{source} ({members[0][0]})")


def check_slurm_client(source: str) -> None:
    """ConfigError at once when Slurm's client cannot submit: no sbatch on PATH, or ``SLURM_CONF``
    naming no readable file (Slurm's commands retry that for a minute, then fail)."""
    if shutil.which("sbatch") is None:
        raise ConfigError(source, "cluster.executor", "slurm: sbatch is not on PATH (Slurm's client tools are needed)")
    conf = os.environ.get("SLURM_CONF")
    if conf and not (os.path.isfile(conf) and os.access(conf, os.R_OK)):
        raise ConfigError(source, "cluster.executor", f"slurm: SLURM_CONF={conf} is not a readable file, so "
                                                      "Slurm's commands cannot find the cluster")


def print_preview(name: str, out: Path, members: list[tuple[str, ExperimentConfig]], folder: Path,
                  python: str | None, stream) -> None:  # noqa: ANN001
    """A dry run of one job array: its points' run folders and the sbatch script."""
    first = members[0][1]
    tasks, nodes, _ = _layout(first)
    print(f"# --- array of {len(members)} point(s): {tasks} task(s)/node x {nodes} node(s)", file=stream)
    for run_id, _ in members:
        print(f"#   {run_dir_for(out, name, run_id)}", file=stream)
    print(sbatch_preview(first, folder, python, len(members)), file=stream)


def submit_array(name: str, source: str, out: Path, members: list[tuple[str, ExperimentConfig]], folder: Path,
                 python: str | None, stream) -> list[tuple[str, Any]]:  # noqa: ANN001
    """Submit one job array (one task layout): (run id, job) per point; ConfigError with sbatch's own
    words if it refuses."""
    first = members[0][1]
    runners = [JobRunner(p.to_dict(), str(run_dir_for(out, name, run_id))) for run_id, p in members]
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(first, folder, python)
    printed = io.StringIO()  # submitit prints a refusing sbatch's stderr: it is in the one-line error instead
    try:
        with contextlib.redirect_stderr(printed), executor.batch():
            jobs = [executor.submit(r) for r in runners]
    except FailedJobError as exc:  # sbatch refused the request: its own words, not a traceback
        said = [ln.removeprefix("sbatch: error: ") for ln in str(exc).strip().splitlines()] or ["refused"]
        raise ConfigError(f"{source} ({members[0][0]})", "cluster",
                          f"sbatch refused {request_of(first).describe()}: {'; '.join(said)}") from None
    sys.stderr.write(printed.getvalue())
    for job, (run_id, _) in zip(jobs, members):
        print(f"submitted {job.job_id}: {run_dir_for(out, name, run_id)}", file=stream)
    return [(run_id, job) for job, (run_id, _) in zip(jobs, members)]


def remove_new_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first: the submission's own folder, then the parents it made),
    each parent only if it is empty."""
    for i, p in enumerate(folders):
        if i == 0:
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.rmdir()


def wait(jobs: list[Any], poll_s: float = POLL_S, stream: TextIO | None = None, on_never: str = "cancel") -> int:
    """Follow the jobs until all end (:func:`.follow.follow_jobs`: one squeue per poll, polls that slow
    down while nothing changes); returns the number that did not complete.

    A Slurm job that can never start ends the wait for it with the reason and its request; ``on_never``
    says whether it is cancelled ("cancel") or left queued ("keep"); a reason that clears is waited on."""
    return follow_jobs(jobs, poll_s=poll_s, stream=stream, on_never=on_never)


def validate_dispatch(cfg: ExperimentConfig, source: str) -> None:
    """Cluster/container checks that the schema alone cannot make; without an image, the jobs run
    with this Python, so torch and the loader's package must import here."""
    c = cfg.cluster
    if problem := host_problem(cfg.data.loader, cfg.container.image):
        raise ConfigError(source, *problem)
    if c.executor == "slurm" and c.nodes > 1 and cfg.train.mode != "ddp":
        raise ConfigError(source, "cluster.nodes", f"{c.nodes} nodes need train.mode: ddp")
    gpus = gpu_request(cfg)
    if cfg.train.mode in ("dp", "dp_balanced") and c.executor == "slurm" and gpus.count < 1:
        raise ConfigError(source, gpus.key, f"train.mode: {cfg.train.mode} needs GPUs on the node")
