"""Following submitted jobs to their end: their state, what each came to, where a failed one
failed, and the Slurm jobs that can never start (:func:`.dispatch.wait` drives these)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ..machine.slurm_state import (
    Request,
    SlurmQueryError,
    failed_tasks,
    job_request,
    never_starts,
    node_sizes,
    queue_states,
)
from ..spec.schema import FINISHED, Status

TERMINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", "INTERRUPTED"}


def job_state(job: Any) -> str:
    try:
        return str(job.state).split()[0].upper()
    except Exception:  # noqa: BLE001 - a state query can fail transiently
        return "UNKNOWN"


def where_it_failed(job: Any, settle_s: float = 5.0) -> str:
    """`` on node3 (task 2: Killed)``: the first task srun reported failing in the job's log, or ''.

    srun writes its lines as the job step ends, which can be just after rank 0's result: the log
    is read again for up to ``settle_s`` while the job has not ended."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            failed = failed_tasks(Path(job.paths.stderr).read_text(errors="replace"))
        except (OSError, AttributeError):
            failed = []
        if failed or time.monotonic() > deadline or job_state(job) in TERMINAL_BAD | {"COMPLETED"}:
            break
        time.sleep(0.5)
    if not failed:
        return ""
    node, task, what = failed[0]
    others = sorted({n for n, _, _ in failed[1:]} - {node})
    return f" on {node} (task {task}: {what})" + (f"; also {', '.join(others)}" if others else "")


def result_written(job: Any, grace_s: float = 3.0) -> bool:
    """Whether the job's rank 0 wrote its result file, allowing ``grace_s`` for a slow file system.

    submitit itself waits 15-30 s for a result that a killed job will never write."""
    deadline = time.monotonic() + grace_s
    while not Path(job.paths.result_pickle).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def error_line(text: str) -> str:
    """The line that says what went wrong in a job's exception text (``ValueError: ...``), else its last."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", ln)]
    return (said or lines or [""])[-1]


class NeverStartWatch:
    """Finds Slurm jobs PENDING for a reason that never clears, after it held for ``confirm_s``."""

    def __init__(self, confirm_s: float = 4.0) -> None:
        self.confirm_s = confirm_s
        self.first_seen: dict[str, float] = {}
        self.requests: dict[str, Request] = {}  # a queued job's request does not change: ask once

    def check(self, queue: dict[str, tuple[str, str]]) -> dict[str, str]:
        """{job id: why it never starts, with its request} for the jobs of ``queue`` (queue_states)
        confirmed so."""
        queued = {jid: reason for jid, (state, reason) in queue.items() if state == "PENDING"}
        try:
            nodes = node_sizes() if queued else []
            found: dict[str, str] = {}
            for jid, reason in queued.items():
                if jid not in self.requests:
                    self.requests[jid] = job_request(jid)
                req = self.requests[jid]
                why = never_starts(reason, req, nodes)
                if why is None:
                    self.first_seen.pop(jid, None)
                elif time.monotonic() - self.first_seen.setdefault(jid, time.monotonic()) >= self.confirm_s:
                    found[jid] = f"{why}; request: {req.describe()}"
            return found
        except SlurmQueryError:  # the controller busy or restarting: look again at the next poll
            return {}


def slurm_queue(jobs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The controller's (state, reason) of the Slurm jobs among ``jobs`` ({} if it cannot say).

    submitit's own state comes from sacct at intervals that grow with the job's age (up to a
    minute), so an ended job is seen here first."""
    from submitit.slurm.slurm import SlurmJob

    ids = [jid for jid, job in jobs.items() if isinstance(job, SlurmJob)]
    try:
        return queue_states(ids)
    except SlurmQueryError:
        return {}


def final_state(job: Any, state: str) -> str | None:
    """The state a job ended in (submitit told of it too), or None while it runs.

    ``state`` is the controller's (or submitit's) state now; when submitit saw the end first, the
    controller may still say COMPLETING, and submitit's state is the one returned."""
    if state in TERMINAL_BAD or state == "COMPLETED":
        job.done(force_check=True)  # let submitit see it too before asking for results
        return state
    if job.done():
        return job_state(job)
    return None


def ended_outcome(job: Any, state: str) -> str:
    """What a job that ended in ``state`` came to: its rank 0's status, or how and where it failed."""
    if state in TERMINAL_BAD and not result_written(job):
        return f"{state}{where_it_failed(job)}: the job ended before rank 0 returned a result"
    try:
        result = job.results()[0]  # rank 0's answer (the one that wrote metrics)
        status = result.get("status", "?") if isinstance(result, dict) else str(result)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the waiter
        return f"{state if state in TERMINAL_BAD else 'FAILED'}{where_it_failed(job)}: {error_line(str(exc))}"
    if status == Status.COMPLETED:
        return "COMPLETED"
    return f"COMPLETED ({status})" if status in FINISHED else f"FAILED ({status})"


def never_starts_outcome(job: Any, why: str, on_never: str) -> str:
    """A job that can never start, cancelled (``on_never`` "cancel") or left queued."""
    if on_never == "cancel":
        job.cancel(check=False)
    return f"NEVER STARTS ({'cancelled' if on_never == 'cancel' else 'left queued'}): {why}"


def progress_line(done: int, total: int, pending: dict[str, Any], queue: dict[str, tuple[str, str]]) -> str:
    """``[wait] 3/8 done, 2 pending, 3 running``: the jobs ended and the states of the others."""
    states: dict[str, int] = {}
    for jid, job in pending.items():
        s = (queue.get(jid, ("", ""))[0] or job_state(job)).replace("UNKNOWN", "SUBMITTED")
        states[s] = states.get(s, 0) + 1
    return f"[wait] {done}/{total} done" + "".join(f", {n} {s.lower()}" for s, n in sorted(states.items()))
