"""Stop signals: Ctrl-C (SIGINT) and SIGTERM end a run as ``interrupted``, in one process or in ranks.

One process raises at once (:func:`interruption`).  A rank of a process group notes the signal
instead (:class:`DeferredStop`) and stops at its next step boundary: an exception raised inside a
collective would leave its peers waiting there.  The local launcher forwards both signals to its
ranks and ends as they did (:func:`ended_interrupted`).  Under submitit, which logs SIGTERM and goes
on (it requeues on its own signal, USR2), SIGTERM saves a checkpoint and notes the stop in the run's
file (:data:`SCHEDULER_STOP`): Slurm kills a cancelled job once its ``KillWait`` has passed.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from ..config.schema import EXIT_CODES, Status

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: a second stop signal this long after the first raises at once (a rank that does not reach a
#: step boundary; the terminal's Ctrl-C and the launcher's copy of it arrive together)
FORCE_AFTER_S = 2.0


#: the error a run records when the scheduler's SIGTERM reaches it under submitit
SCHEDULER_STOP = ("SIGTERM from the scheduler: the job was cancelled (scancel) or is being preempted; "
                  "a preempted job is requeued and resumes")


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (what schedulers send) turned into an exception, handled like Ctrl-C."""


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal stands for: KeyboardInterrupt (SIGINT) or RunInterrupted (SIGTERM)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return RunInterrupted(signal.Signals(signum).name)


def interruption_reason(exc: KeyboardInterrupt) -> str:
    """What ``metrics.h5`` records as the error of an interrupted run."""
    return f"{type(exc).__name__} {exc}".strip()


def ended_interrupted(code: int) -> bool:
    """Whether a process's exit code says a stop signal ended it: a run recorded interrupted (143),
    Ctrl-C (130), or killed by SIGINT or SIGTERM."""
    return code in {EXIT_CODES[Status.INTERRUPTED], *(128 + s for s in STOP_SIGNALS), *(-s for s in STOP_SIGNALS)}


class DeferredStop:
    """SIGINT and SIGTERM noted instead of raised, for a rank to stop at its next step boundary.

    A second stop signal more than ``FORCE_AFTER_S`` after the first raises at once, as in one process.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.received_at = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Note the stop signals from now on (main thread only)."""
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)

    def restore(self) -> None:
        """The handlers in force before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def pending(self) -> KeyboardInterrupt | None:
        """The interruption a noted signal stands for, or None."""
        return None if self.received is None else interruption(self.received)

    def _note(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
        elif time.monotonic() - self.received_at > FORCE_AFTER_S:
            self.restore()
            raise interruption(signum)
