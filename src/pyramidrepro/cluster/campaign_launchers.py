"""How a campaign's runs reach machines: one point at a time here, or a pass's points as Slurm job arrays.

Both submit through :func:`.dispatch.submit` (submitit's executors) and record every job in the
campaign's state before waiting on it, so another process can see and follow it.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from typing import Any

from ..config.experiment import ExperimentConfig
from ..config.schema import EXIT_CODES, FINISHED, Status
from ..records.runs import run_dir_for, status_of
from . import dispatch
from .campaign import Campaign, Launcher, Progress
from .campaign_state import CampaignState, Submission, point_of, save_state, slurm_job
from .campaign_view import RunView
from .follow import POLL_S, follow_jobs
from .requests import tasks_per_node


def local_point(cfg: ExperimentConfig, ddp_ranks: int) -> ExperimentConfig:
    """A point as the local executor runs it: DDP with ``ddp_ranks`` processes on this machine."""
    cluster = dataclasses.replace(cfg.cluster, executor="local", tasks_per_node=ddp_ranks, nodes=1)
    return dataclasses.replace(cfg, cluster=cluster)


def submission_of(job: Any, cfg: ExperimentConfig, number: int) -> Submission:
    """What the state keeps of a job submitit returned for a point of ``cfg``: its id, its folder (``%j``
    unresolved) and its tasks."""
    return Submission(str(job.job_id), str(job.paths.folder.parent / "%j"), cfg.cluster.executor, time.time(), number,
                      tasks_per_node(cfg) * cfg.cluster.nodes)


class LocalLauncher(Launcher):
    """One run at a time through the local (or debug) executor, each waited for before the next starts,
    so each has the machine to itself; ``ddp_ranks``: run DDP points with that many processes here
    (0: the experiment's own layout)."""

    synchronous = True

    def __init__(self, ddp_ranks: int = 0, on_progress: Callable[[Progress], None] | None = None,
                 checks: dispatch.Checks = dispatch.Checks()) -> None:
        self.ddp_ranks, self.checks = ddp_ranks, checks
        self.tell = on_progress or (lambda progress: None)

    def launch(self, c: Campaign, state: CampaignState, number: int, due: list[RunView]) -> None:
        planned = state.passes[-1]
        for view in due:
            point = planned.index(view.run_id) + 1
            self.run_one(c, state, number, view.run_id, f"[{point}/{len(planned)}]")
            self.tell(Progress(number, point, len(planned)))

    def run_one(self, c: Campaign, state: CampaignState, number: int, run_id: str, counter: str) -> None:
        """One run to its end; a line when it starts and one with its outcome and time."""
        cfg = c.points[point_of(run_id)]
        cfg = local_point(cfg, self.ddp_ranks) if self.ddp_ranks else cfg
        c.say(f"{counter} {run_id}: running ...")
        t0 = time.monotonic()
        ((_, job),) = dispatch.submit(cfg, c.source, c.out, stream=io.StringIO(), points=[(run_id, cfg)],
                                      checks=self.checks)
        state.record(run_id, submission_of(job, cfg, number))
        save_state(c.folder, state)
        error = ""
        try:
            job.results()
        except Exception as exc:  # noqa: BLE001 - the point failed; the campaign goes on
            error = "\n".join(str(exc).strip().splitlines()[-5:])
        status = status_of(run_dir_for(c.out, c.cfg.name, run_id)) or Status.FAILED
        code = 0 if status in FINISHED and not error else EXIT_CODES.get(status, 1) or 1
        outcome = status if code == 0 else f"{status} (exit {code})"
        c.say(f"{counter} {run_id}: {outcome} in {time.monotonic() - t0:.1f} s "
              f"(elapsed {time.monotonic() - c.started:.0f} s)")
        if error:
            c.say(f"    {error}")


class SlurmLauncher(Launcher):
    """A pass's due runs as job arrays (one per task layout, :func:`.dispatch.submit`), followed with
    one ``squeue`` per poll (:func:`.follow.follow_jobs`)."""

    synchronous = False

    def __init__(self, poll_s: float = POLL_S, on_never: str = "cancel",
                 checks: dispatch.Checks = dispatch.Checks()) -> None:
        self.poll_s, self.on_never, self.checks = poll_s, on_never, checks

    def launch(self, c: Campaign, state: CampaignState, number: int, due: list[RunView]) -> None:
        """Submit the due runs; each array's jobs are in the state as soon as sbatch took it (a later
        array refused leaves no queued job unrecorded)."""
        for view in due:
            if view.job is not None:
                c.say(f"resubmit {view.run_id}: {view.reason}")

        def record(submitted: list[tuple[str, Any]]) -> None:
            for run_id, job in submitted:
                state.record(run_id, submission_of(job, c.points[point_of(run_id)], number))
            save_state(c.folder, state)

        points = [(v.run_id, c.points[point_of(v.run_id)]) for v in due]
        dispatch.submit(c.cfg, c.source, c.out, stream=c.stream, points=points, checks=self.checks,
                        on_submitted=record)

    def follow(self, c: Campaign, state: CampaignState, waiting: list[RunView]) -> None:
        c.say(f"following {len(waiting)} job(s) of pass {len(state.passes)}")
        follow_jobs([slurm_job(v.job) for v in waiting if v.job], poll_s=self.poll_s, stream=c.stream,
                    on_never=self.on_never)
