"""Where each run of a campaign stands: read from its folder, the campaign's state and one ``squeue``.

:func:`look` sorts the runs of a pass into done (a result: ``schema.FINISHED``), waiting (its job still
queued or running), due (never submitted, or its job gone without a result: cancelled, its node failed)
and failed (no result, and not to be submitted again now).  The campaign engine acts on it; ``status``
prints it.  Nothing here imports torch or submitit: a login node reads it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from ..config.schema import FINISHED
from ..records.runs import run_dir_for, status_of
from .campaign_state import MAX_SUBMISSIONS, CampaignState, Submission
from .follow import ENDED
from .slurm_queue import SlurmQueryError, queue_states

#: a job this process followed to its end (it is not asked about again)
ENDED_HERE = "ENDED"
#: the states in which a job has ended for good: Slurm's (:data:`.follow.ENDED`, which it lists in
#: ``squeue -t all`` for a while) and ours; a held job (SPECIAL_EXIT, REQUEUE_HOLD) has not
ENDED_STATES = ENDED | {ENDED_HERE}
#: what a job is said to be in when the controller did not answer: it is neither resubmitted nor given up
NO_ANSWER = "UNKNOWN"


class Kind(str, Enum):
    DONE = "done"
    WAITING = "waiting"
    DUE = "due"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class RunView:
    """One run as the campaign sees it now."""

    run_id: str
    kind: Kind
    status: str | None  # what the run's metrics.h5 says (None: no metrics yet)
    job: Submission | None  # its latest job
    submissions: int = 0
    queue_state: str = ""  # the controller's, for a job it still lists
    reason: str = ""  # the pending reason, or why a run is due / failed

    @property
    def completed(self) -> bool:
        return self.kind is Kind.DONE and self.status == "completed"


def runs_queue(state: CampaignState, run_ids: Iterable[str],
               known: dict[str, tuple[str, str]] | None = None) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} of the latest Slurm job of each run, in one ``squeue`` call for those not
    ``known`` already (none when all are); None when the controller did not answer (then no job is taken
    for gone)."""
    known = known or {}
    ids = [s.job_id for s in (state.last_job(r) for r in run_ids) if s and s.executor == "slurm"]
    try:
        return {**queue_states([i for i in ids if i not in known]), **{i: known[i] for i in ids if i in known}}
    except SlurmQueryError:
        return None


def look(state: CampaignState, out: str | Path, run_ids: list[str] | None = None,
         given_up: frozenset[str] = frozenset(), known: dict[str, tuple[str, str]] | None = None) -> list[RunView]:
    """Each of ``run_ids`` (default: every run the campaign planned) sorted (see the module's docstring),
    their jobs asked about in one ``squeue`` call (:func:`runs_queue`, ``known`` ones not); ``given_up``:
    runs this process followed to an end without a result, not submitted again by it."""
    run_ids = state.run_ids() if run_ids is None else run_ids
    queue = runs_queue(state, run_ids, known)
    return [classify(state, out, run_id, queue, given_up) for run_id in run_ids]


def classify(state: CampaignState, out: str | Path, run_id: str, queue: dict[str, tuple[str, str]] | None,
             given_up: frozenset[str] = frozenset()) -> RunView:
    """Where one run stands (see :func:`look`)."""
    status = status_of(run_dir_for(out, state.experiment, run_id))
    job = state.last_job(run_id)
    count = len(state.submissions.get(run_id, []))
    view = functools.partial(RunView, run_id, status=status, job=job, submissions=count)
    if status in FINISHED and (job is not None or not state.rerun_done):
        return view(Kind.DONE)
    if job is not None and job.executor == "slurm":
        queued, reason = (NO_ANSWER, "the controller did not answer") if queue is None else queue.get(job.job_id,
                                                                                                     ("", ""))
        if queued and queued not in ENDED_STATES:
            return view(Kind.WAITING, queue_state=queued, reason=reason)
    if run_id in given_up:
        return view(Kind.FAILED, reason="its job ended without a result")
    if state.passes and run_id not in state.passes[-1]:
        return view(Kind.FAILED, reason=f"its pass ended without a result (job {job.job_id if job else 'none'})")
    if count >= MAX_SUBMISSIONS:
        return view(Kind.FAILED, reason=f"submitted {count} times without a result: not submitted again")
    return view(Kind.DUE, reason=why_due(job, status))


def why_due(job: Submission | None, status: str | None) -> str:
    """Why a run is to be submitted: never was, or its job is gone without a result."""
    if job is None:
        return "not submitted yet"
    return f"job {job.job_id} is gone and the run {'has no metrics' if status is None else 'is ' + status}"
