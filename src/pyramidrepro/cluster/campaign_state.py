"""A campaign's state on disk: ``OUT/<experiment>/campaign.json``, the one record of what it submitted.

It holds what a later process needs to take the campaign over (``follow``, ``status``, ``submit``
again): the experiment's resolved config and where it came from, the repeats rule, the executor, the
run ids of every pass, and every job submitted for each run (submitit's job id and folder, the time
and the pass).  submitit keeps the rest in that folder (the pickled callable, the logs, the result), so
a job is rebuilt from its id and folder (:func:`slurm_job`), never copied here.  Every change is written
atomically: a reader sees the state before or after it, never half of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError
from ..records.lock import RunFolderError, RunLock
from ..records.storage import write_atomically

STATE_NAME = "campaign.json"
#: the format's version; a state of another version is refused with its path
STATE_VERSION = 1
#: a run is submitted at most this often (its first job included): a run whose job keeps vanishing
#: (its node failing, someone cancelling it) is then left failed instead of resubmitted without end
MAX_SUBMISSIONS = 3


@dataclasses.dataclass(frozen=True)
class Repeats:
    """How often a point runs: at least ``minimum`` times, again while its images/s interval is wider
    than ``ci_target`` (a fraction of the mean; None: never), at most ``maximum`` times."""

    minimum: int = 1
    maximum: int = 1
    ci_target: float | None = None


@dataclasses.dataclass(frozen=True)
class Submission:
    """One job submitted for one run: submitit's job id and folder, when, in which pass, through which
    executor (slurm, local, debug), and its tasks (every rank's result is read, to say where one failed)."""

    job_id: str
    folder: str
    executor: str
    submitted_at: float
    pass_number: int
    tasks: int = 1


@dataclasses.dataclass
class CampaignState:
    """What a campaign has planned and submitted so far (see the module's docstring)."""

    experiment: str
    source: str
    config: dict[str, Any]
    repeats: Repeats
    executor: str
    ddp_ranks: int = 0  # the local executor's DDP ranks (0: the experiment's own layout)
    rerun_done: bool = False  # runs done before the campaign count only once it submitted them again
    created_at: float = dataclasses.field(default_factory=time.time)
    #: where it was submitted from: jobs start there, and a relative data.root is read from there
    workdir: str = dataclasses.field(default_factory=os.getcwd)
    passes: list[list[str]] = dataclasses.field(default_factory=list)
    submissions: dict[str, list[Submission]] = dataclasses.field(default_factory=dict)

    def last_job(self, run_id: str) -> Submission | None:
        """The latest job submitted for ``run_id``, or None."""
        jobs = self.submissions.get(run_id)
        return jobs[-1] if jobs else None

    def run_ids(self) -> list[str]:
        """Every run the campaign planned, pass by pass."""
        return [run_id for runs in self.passes for run_id in runs]

    def record(self, run_id: str, submission: Submission) -> None:
        self.submissions.setdefault(run_id, []).append(submission)

    def jobs_submitted(self) -> int:
        return sum(len(jobs) for jobs in self.submissions.values())

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["version"] = STATE_VERSION
        return d


def state_path(experiment_dir: str | Path) -> Path:
    """``OUT/<experiment>/campaign.json``."""
    return Path(experiment_dir) / STATE_NAME


def save_state(experiment_dir: str | Path, state: CampaignState) -> None:
    """Write the state atomically (the folder is made if need be)."""
    path = state_path(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n").encode())


def load_state(experiment_dir: str | Path) -> CampaignState | None:
    """The campaign's state, None when the folder has none; ConfigError naming the file when it cannot
    be read or is not a campaign state of this version."""
    path = state_path(experiment_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise ValueError(f"not a campaign state of version {STATE_VERSION}")
        return _from_json(raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(str(path), "campaign state", f"cannot be read ({exc}); move it away to start "
                                                       "the campaign afresh (finished runs are kept)") from None


def _from_json(raw: dict[str, Any]) -> CampaignState:
    fields = {f.name for f in dataclasses.fields(CampaignState)}
    d = {k: v for k, v in raw.items() if k in fields}
    d["repeats"] = Repeats(**d["repeats"])
    d["submissions"] = {run_id: [Submission(**s) for s in jobs] for run_id, jobs in d.get("submissions", {}).items()}
    d["passes"] = [list(p) for p in d.get("passes", [])]
    return CampaignState(**d)


class CampaignLock(RunLock):
    """The campaign's one driver: held on ``OUT/<experiment>/.lock`` by the process that submits and
    follows it (``submit``, ``follow``, ``reproduce``), from before it reads the state to its end, so two
    of them never submit the same runs twice; ``status`` reads without it.  A POSIX lock, as a run
    folder's (:class:`..records.lock.RunLock`): it holds between login nodes on NFSv4, and on Lustre where the
    file system is mounted with ``-o flock`` (``localflock`` locks per node only)."""

    def _in_use(self) -> RunFolderError:
        return RunFolderError(f"{self.folder}: another process drives this campaign (a submit --wait or a "
                              f"follow, here or on another login node); pyramidrepro status {self.folder} "
                              "shows where it stands")


def driven(folder: str | Path) -> bool:
    """Whether a process holds the campaign's lock now (a submit --wait, follow or reproduce drives it);
    asked without taking it (the lock file is only opened, never made or removed)."""
    import errno
    import fcntl

    try:
        fd = os.open(Path(folder) / ".lock", os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody drives it
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def campaign_held(folder: str | Path) -> Iterator[Path]:
    """``folder`` (OUT/<experiment>, made if need be) with the campaign's lock held for the block; the
    folders it made are removed again when the block leaves them empty (a refused submission)."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    lock = CampaignLock(folder).acquire()
    try:
        yield folder
    finally:
        lock.release()
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty


def point_of(run_id: str) -> str:
    """The point a run belongs to: its run id without the ``-rN`` of a repeat."""
    return re.sub(r"-r[0-9]+$", "", run_id)


def repeat_id(run_id: str, repeat: int) -> str:
    """The run id of a point's ``repeat``-th run (the first keeps the point's own)."""
    return run_id if repeat == 1 else f"{run_id}-r{repeat}"


def slurm_job(submission: Submission) -> Any:
    """submitit's own job object for a Slurm job submitted earlier, rebuilt from its id and folder."""
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=submission.folder, job_id=submission.job_id, tasks=tuple(range(submission.tasks)))
