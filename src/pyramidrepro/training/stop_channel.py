"""When one rank has to stop, every rank stops: the stop channel every rank watches.

A DDP rank that hits an out-of-memory error (or any other failure) cannot just leave: its peers
would block in the next collective until the process group's timeout (NCCL: then a watchdog
abort), and rank 0, which owns ``metrics.h5``, would never learn why.  So the rank posts a
:class:`StopRecord` to the job's key-value store (the TCP store at ``MASTER_ADDR:MASTER_PORT``
that the process group was built on, reached here through a connection of our own), and every
rank watches that key from a daemon thread.  A rank that sees a peer's record hands it to its
``on_peer_stop`` callback (rank 0 records the outcome in ``metrics.h5``), acknowledges it and
ends its process with the exit code the callback returned.  The posting rank waits (bounded)
until every rank knows; ranks that stop together (a stop signal, or failures) each count themselves
as knowing.  Then each rank but 0 says it is done with the store, its last request, and rank 0, whose
process hosts the store under the local launcher and Slurm, leaves only once the others are done
(bounded): no rank's request is cut off by the host's leaving.

Tests stop runs at exact points through :mod:`.fault_injection`.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import Attr


@dataclass
class StopRecord:
    """Why the run stops: the rank that stopped it, its status and what goes with the status."""

    rank: int
    status: str
    info: dict[str, Any] = field(default_factory=dict)

    def outcome(self) -> tuple[str, dict[str, Any]]:
        """The run's final status and the attributes that go with it, the stopping rank included."""
        return self.status, {**self.info, Attr.STOP_RANK: self.rank}


class StopChannel:
    """Posts and watches the job's stop record over the job's TCP store."""

    def __init__(self, rank: int, world_size: int, on_peer_stop: Callable[[StopRecord], int],
                 poll_s: float = 0.25, connect_timeout_s: float = 30.0) -> None:
        from torch.distributed import TCPStore

        prefix = f"pyramidrepro/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.key, self.acks_key, self.done_key = f"{prefix}/stop", f"{prefix}/stop_acks", f"{prefix}/stop_done"
        self.rank, self.world_size, self.poll_s = rank, world_size, poll_s
        self.on_peer_stop = on_peer_stop
        self.store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=datetime.timedelta(seconds=connect_timeout_s), wait_for_workers=False,
        )
        self._closed = threading.Event()
        self._ack_lock = threading.Lock()
        self._acknowledged = False
        self._thread = threading.Thread(target=self._watch, name="pyramidrepro-stop-watch", daemon=True)
        self._thread.start()

    def post(self, status: str, info: dict[str, Any], ack_timeout_s: float = 10.0) -> StopRecord:
        """Tell every peer to stop, wait (at most ``ack_timeout_s``) until they have read it, and leave
        the store (see the module's docstring).

        The first record posted wins; the one in force is returned.
        """
        self.close()  # this rank's own decision stands: stop watching for others' (no request of its left)
        mine = json.dumps({"rank": self.rank, "status": status, "info": info})
        deadline = time.monotonic() + ack_timeout_s
        try:
            record = _decode(self.store.compare_set(self.key, "", mine))
            self._acknowledge()
            self._wait_for(self.acks_key, self.world_size, deadline)
            self._leave_store(deadline)
        except RuntimeError:  # the store's host is gone: the peers are too
            record = StopRecord(self.rank, status, info)
        return record

    def peer_record(self) -> StopRecord | None:
        """A stop record posted by another rank, if there is one now."""
        try:
            if self.store.check([self.key]):
                record = _decode(self.store.get(self.key))
                return record if record.rank != self.rank else None
        except RuntimeError:
            pass
        return None

    def close(self) -> None:
        """Stop watching (before a clean shutdown, while every peer's store is still up)."""
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_s):
            try:
                posted = self.store.check([self.key])
            except RuntimeError:  # the store's host left (a clean end elsewhere, or a crash)
                return
            if not posted or self._closed.is_set():
                continue
            record = _decode(self.store.get(self.key))
            if record.rank == self.rank:
                return
            code = self.on_peer_stop(record)
            try:
                self._acknowledge()
                self._leave_store(time.monotonic() + 10.0)
            except RuntimeError:  # the store's host is gone: nobody waits for this rank
                pass
            from ..machine.parallel import exit_rank

            exit_rank(code)

    def _leave_store(self, deadline: float) -> None:
        """The last request: done with the store (ranks but 0), or wait until the others are (rank 0)."""
        if self.rank == 0:
            self._wait_for(self.done_key, self.world_size - 1, deadline)
        else:
            self.store.add(self.done_key, 1)

    def _wait_for(self, key: str, count: int, deadline: float) -> None:
        """Until the counter ``key`` reaches ``count``, or ``deadline``."""
        while self.store.add(key, 0) < count and time.monotonic() < deadline:
            time.sleep(self.poll_s / 2)

    def _acknowledge(self) -> None:
        with self._ack_lock:
            if not self._acknowledged:
                self._acknowledged = True
                self.store.add(self.acks_key, 1)


def _decode(blob: bytes) -> StopRecord:
    d = json.loads(blob)
    return StopRecord(int(d["rank"]), str(d["status"]), dict(d.get("info", {})))
