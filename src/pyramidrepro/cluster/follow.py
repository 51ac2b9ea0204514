"""Following submitted jobs to their end (``submit --wait``, :func:`follow_jobs`).

Each poll asks the controller once for every job (``squeue``); ``sinfo`` and ``scontrol`` are asked
only for a job pending for a reason that needs them, and their answers are kept.  Polls come every
``poll_s`` and slow down while nothing changes.  A line is printed per change: the jobs' states with
the time elapsed, each pending reason with what it waits for; at the end what each job came to, and
the log files of each that ended badly.  A job pending for a reason that never clears ends the wait
for it (:class:`NeverStartWatch`); any other reason is waited on.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..config.schema import FINISHED, Status
from .slurm_queue import (
    NEVER_REASONS,
    NODE_REASONS,
    SIZE_REASONS,
    Node,
    Request,
    SlurmQueryError,
    failed_tasks,
    job_request,
    never_starts,
    node_sizes,
    node_states,
    queue_states,
    reason_code,
    waits_for,
)

TERMINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED", "INTERRUPTED"}
ENDED = TERMINAL_BAD | {"COMPLETED"}
#: seconds between polls by default (``submit --poll``)
POLL_S = 30.0
#: the default for jobs of the local executor: following them asks no scheduler
LOCAL_POLL_S = 1.0
#: after this long without a change the interval grows ``BACKOFF`` times a poll, up to ``MAX_POLL_S``
QUIET_S = 300.0
BACKOFF = 1.5
MAX_POLL_S = 120.0
#: the nodes (sinfo) are read again at most once per this many polls
NODES_EVERY = 10


def job_state(job: Any) -> str:
    try:
        return str(job.state).split()[0].upper()
    except Exception:  # noqa: BLE001 - a state query can fail transiently
        return "UNKNOWN"


def where_it_failed(job: Any, ended: bool = True, settle_s: float = 5.0) -> str:
    """`` on node3 (task 2: Killed)``: the first task srun reported failing in the job's log, or ''.

    srun writes its lines as the job step ends, which can be just after rank 0's result: unless the
    job has ``ended``, the log is read again for up to ``settle_s``."""
    deadline = time.monotonic() + (0.0 if ended else settle_s)
    while True:
        try:
            failed = failed_tasks(Path(job.paths.stderr).read_text(errors="replace"))
        except (OSError, AttributeError):
            failed = []
        if failed or time.monotonic() > deadline:
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


@dataclass
class PollClock:
    """Seconds to the next poll: ``base_s`` while something changes; after ``QUIET_S`` without a
    change, ``BACKOFF`` times longer each poll up to ``MAX_POLL_S`` (or ``base_s`` if larger)."""

    base_s: float
    interval_s: float = 0.0
    quiet_since: float = field(default_factory=time.monotonic)

    def next_interval(self, changed: bool, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if changed or not self.interval_s:
            self.quiet_since, self.interval_s = now, self.base_s
        elif now - self.quiet_since >= QUIET_S:
            self.interval_s = min(max(MAX_POLL_S, self.base_s), self.interval_s * BACKOFF)
        return self.interval_s


class NodeCache:
    """The cluster's nodes (sinfo), read when first asked for and again at most once per ``every`` polls."""

    def __init__(self, every: int = NODES_EVERY) -> None:
        self.every = every
        self.nodes: list[Node] = []
        self.read_at: int | None = None

    def at(self, poll: int) -> list[Node]:
        if self.read_at is None or poll - self.read_at >= self.every:
            self.read_at = poll
            try:
                self.nodes = node_sizes()
            except SlurmQueryError:  # keep the last answer; ask again in ``every`` polls
                pass
        return self.nodes


class NeverStartWatch:
    """Sorts the PENDING Slurm jobs: a reason that never clears, held for ``confirm_s``, ends the wait
    for the job; any other reason is reported once per change and waited on."""

    def __init__(self, confirm_s: float = 4.0) -> None:
        self.confirm_s = confirm_s
        self.first_seen: dict[str, float] = {}
        self.requests: dict[str, Request] = {}  # per array: its elements share one request
        self.nodes = NodeCache()
        self.said: dict[str, str] = {}  # the reason last reported per job
        self.polls = 0

    def check(self, queue: dict[str, tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
        """({job id: why it never starts, with its request}, report lines) for the jobs of ``queue``
        (queue_states): the never-starting confirmed, and a line per reason newly held by some job."""
        self.polls += 1
        queued = {jid: reason for jid, (state, reason) in queue.items() if state == "PENDING"}
        for jid in set(self.said) - set(queued):
            del self.said[jid]
        never: dict[str, str] = {}
        fresh: dict[str, list[str]] = {}
        now = time.monotonic()
        try:
            for jid, reason in queued.items():
                why = self._never(jid, reason)
                if why is None:
                    self.first_seen.pop(jid, None)
                    if self.said.get(jid) != reason and reason_code(reason) != "None":
                        fresh.setdefault(reason, []).append(jid)
                    self.said[jid] = reason
                elif now - self.first_seen.setdefault(jid, now) >= self.confirm_s:
                    never[jid] = f"{why}; request: {self.request(jid).describe()}"
        except SlurmQueryError:  # the controller busy or restarting: look again at the next poll
            return {}, []
        return never, [self.pending_line(jids, reason) for reason, jids in fresh.items()]

    def _never(self, jid: str, reason: str) -> str | None:
        """Why the job pending for ``reason`` never starts (None: it may); asks Slurm only when needed."""
        code = reason_code(reason)
        if code not in NEVER_REASONS | SIZE_REASONS:
            return None
        return never_starts(reason, self.request(jid), self.nodes.at(self.polls) if code in SIZE_REASONS else [])

    def request(self, jid: str) -> Request:
        array = jid.split("_")[0]
        if array not in self.requests:
            self.requests[array] = job_request(jid)
        return self.requests[array]

    def pending_line(self, jids: list[str], reason: str) -> str:
        """``[wait] 81_0, 81_1 pending (REASON; node3 drain): waits for ...``."""
        states = node_states(reason, self.nodes.at(self.polls)) if reason_code(reason) in NODE_REASONS else ""
        shown = ", ".join(jids[:6]) + (f" and {len(jids) - 6} more" if len(jids) > 6 else "")
        return f"[wait] {shown} pending ({reason}{'; ' + states if states else ''}): waits for {waits_for(reason)}"


def slurm_queue(jobs: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The controller's (state, reason) of the Slurm jobs among ``jobs`` ({} if it cannot say): one
    squeue call, fresher than submitit's own state (sacct, at intervals that grow with a job's age)."""
    from submitit.slurm.slurm import SlurmJob

    ids = [jid for jid, job in jobs.items() if isinstance(job, SlurmJob)]
    try:
        return queue_states(ids)
    except SlurmQueryError:
        return {}


def final_state(job: Any, state: str) -> str | None:
    """The state a job ended in, or None while it runs.

    ``state`` is the controller's for a job it lists ('' for one it does not): such a job has ended
    when the controller says so or rank 0's result file is there (it may still say COMPLETING), and
    submitit is not asked.  Any other job is submitit's to judge (its result file, else its state)."""
    if state in ENDED:
        return state
    if state:
        return state if Path(job.paths.result_pickle).exists() else None
    if job.done():
        return job_state(job)
    return None


def ended_outcome(job: Any, state: str) -> str:
    """What a job that ended in ``state`` came to: its rank 0's status, or how and where it failed."""
    ended = state in ENDED
    if ended and not result_written(job):
        return f"{state}{where_it_failed(job)}: the job ended before rank 0 returned a result"
    try:
        result = job.results()[0]  # rank 0's answer (the one that wrote metrics)
        status = result.get("status", "?") if isinstance(result, dict) else str(result)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the waiter
        return f"{state if state in TERMINAL_BAD else 'FAILED'}{where_it_failed(job, ended)}: {error_line(str(exc))}"
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


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def timing(elapsed_s: float, done: int, total: int) -> str:
    """``2m10s elapsed, about 4m20s left at the rate so far`` (no estimate before a job has ended)."""
    text = f"{duration(elapsed_s)} elapsed"
    if 0 < done < total:
        text += f", about {duration(elapsed_s / done * (total - done))} left at the rate so far"
    return text


def log_files(job: Any) -> str:
    """``; logs: OUT ERR``: the log files the job's rank 0 wrote ('' if it wrote none: it never started)."""
    try:
        paths = [Path(job.paths.stdout), Path(job.paths.stderr)]
    except AttributeError:
        return ""
    written = [str(p) for p in paths if p.exists()]
    return f"; logs: {' '.join(written)}" if written else ""


@dataclass
class Follow:
    """The state of one ``--wait``: the jobs not ended, what the others came to, the clocks."""

    jobs: list[Any]
    on_never: str
    pending: dict[str, Any] = field(init=False)
    outcome: dict[str, str] = field(default_factory=dict)
    watch: NeverStartWatch = field(default_factory=NeverStartWatch)
    started: float = field(default_factory=time.monotonic)
    last: str = ""

    def __post_init__(self) -> None:
        self.pending = {j.job_id: j for j in self.jobs}

    def poll(self) -> list[str]:
        """One look at the jobs (one squeue call for all); the lines that say what changed."""
        queue = slurm_queue(self.pending)
        for jid, job in list(self.pending.items()):
            state = final_state(job, queue.get(jid, ("", ""))[0])
            if state is not None:
                self.outcome[jid] = ended_outcome(job, state)
                del self.pending[jid]
        never, lines = self.watch.check({j: q for j, q in queue.items() if j in self.pending})
        for jid, why in never.items():
            self.outcome[jid] = never_starts_outcome(self.pending.pop(jid), why, self.on_never)
        line = progress_line(len(self.outcome), len(self.jobs), self.pending, queue)
        if line != self.last:
            self.last = line
            lines.insert(0, f"{line}; {timing(time.monotonic() - self.started, len(self.outcome), len(self.jobs))}")
        return lines

    def report(self, stream: Any) -> int:
        """A line per job with what it came to (and its logs if it ended badly); the number that did not complete."""
        bad = 0
        for jid, text in self.outcome.items():
            ok = text.startswith("COMPLETED")
            logs = "" if ok else log_files(next(j for j in self.jobs if j.job_id == jid))
            print(f"{jid}: {text}{logs}", file=stream)
            bad += not ok
        return bad


def follow_jobs(jobs: list[Any], poll_s: float = POLL_S, stream: TextIO | None = None, on_never: str = "cancel") -> int:
    """Follow ``jobs`` until all end, printing a line per change; returns the number that did not complete.

    A Slurm job that can never start ends the wait for it with the reason and its request; ``on_never``
    says whether it is cancelled ("cancel") or left queued ("keep"); ``stream`` (default: ``sys.stdout``
    as it is at the call) hears the lines."""
    stream = stream or sys.stdout
    follow, clock = Follow(jobs, on_never), PollClock(poll_s)
    while follow.pending:
        lines = follow.poll()
        for line in lines:
            print(line, file=stream, flush=True)
        if follow.pending:
            time.sleep(clock.next_interval(changed=bool(lines)))
    return follow.report(stream)
