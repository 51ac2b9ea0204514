"""Run one experiment in this process (one rank of it when launched distributed).

``Trainer(cfg, run_dir).run()`` is the entry point every command ends in: ``run`` calls it in
this process (or in each rank that ``run --nproc`` or torchrun starts), ``submit`` and
``reproduce`` in the job a submitit executor runs (:class:`..cluster.dispatch.JobRunner`).  It builds the
run context (rank, device, run folder), then what trains (:mod:`.setup`: model, path, step
executor, loaders), hands them to the loop (:mod:`.loop`), and records the outcome once
(:mod:`..records.recorder`, with the run's :mod:`.attributes`): completed, oom and nan are results;
anything else is failed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..config.errors import ConfigError
from ..config.experiment import ExperimentConfig
from ..config.schema import EXIT_CODES, Attr, Status
from ..machine.devices import is_out_of_memory
from ..machine.interrupts import SCHEDULER_STOP, DeferredStop, interruption, interruption_reason
from ..machine.parallel import shutdown_process_group
from ..machine.slurm_job import under_submitit
from ..machine.system import node_sharing
from ..records.lock import RunFolderError, RunLock
from ..records.recorder import RunRecorder
from ..records.runs import METRICS_NAME
from ..step.bottleneck import measure_bounds
from ..workload.data import DataError
from .attributes import identity_attributes, setup_attributes
from .checkpoint import Checkpoints, Position
from .fault_injection import (
    INJECT_DELAY_VAR,
    injected_delay,
    injected_oom_step,
    injected_signal,
    raise_injected_oom,
    send_injected_signal,
)
from .loop import LoopSettings, TrainingLoop
from .setup import RunContext, build_training, open_context, review_choice
from .stop_channel import StopChannel, StopRecord


def _raise_interrupted(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise interruption(signum)


class Trainer:
    """Train one experiment in this process (or this rank) and record it in its run folder.

    ``handle_signals``: SIGTERM ends the run like Ctrl-C (status interrupted, a checkpoint if the
    run keeps them); a rank of a process group notes both and stops at its next step boundary, with
    its peers.  Off under submitit, which handles the scheduler's signals itself: there SIGTERM
    (``scancel``, or a preemption before submitit's requeue signal) saves a checkpoint if the run
    keeps them and records ``interrupted`` (:meth:`_on_scheduler_term`), and the run goes on until
    Slurm kills it or submitit requeues it; a run that still ends by itself records its own outcome.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None,
                 extra_attrs: dict[str, Any] | None = None, progress: bool | None = None,
                 out_dir: str | Path = "results/runs", handle_signals: bool = False) -> None:
        self.cfg = cfg
        self.requested_run_dir = Path(run_dir) if run_dir is not None else None
        self.out_dir = Path(out_dir)
        self.extra_attrs = dict(extra_attrs or {})
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.context: RunContext | None = None
        self.recorder: RunRecorder | None = None
        self.loop: TrainingLoop | None = None
        self.stop_channel: StopChannel | None = None
        self.identity: dict[str, Any] = {}
        self.handle_signals = handle_signals
        self.deferred = DeferredStop()  # a rank's stop signals, acted on at a step boundary
        self.lock: RunLock | None = None
        self.requeued = False  # set by prepare_requeue
        self.submitit_term: Any = None  # submitit's SIGTERM handler, called after ours

    @property
    def distributed(self) -> bool:
        """Whether this process is a rank of a process group (it then leaves through ``exit_rank``)."""
        return self.context is not None and self.context.backend is not None

    def prepare_requeue(self) -> None:
        """submitit's preemption/timeout hook (rank 0, in a signal handler): checkpoint if the loop's
        state is consistent and recorded; the exit submitit makes next records ``interrupted``, not
        ``failed``, since the requeued job resumes the run."""
        self.requeued = True
        if self.loop is not None:
            self.loop.save_if_checkpointable()

    def run(self) -> str:
        """Run to the end; returns the status (``schema.Status``)."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            if self.handle_signals:
                previous = signal.signal(signal.SIGTERM, _raise_interrupted)
            elif under_submitit():
                previous = signal.signal(signal.SIGTERM, self._on_scheduler_term)
                self.submitit_term = previous
        try:
            return self._run()
        finally:
            self.deferred.restore()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if self.lock is not None:
                self.lock.release()

    def _on_scheduler_term(self, signum: int, frame: Any) -> None:
        """SIGTERM under submitit: checkpoint if the state allows (as its requeue hook does, in this
        handler), then record ``interrupted`` from another thread (this one may be inside the
        metrics writer), and hand the signal on to submitit, which logs it and goes on."""
        if self.loop is not None and self.cfg.train.checkpoint_every_s is not None:
            self.loop.save_if_checkpointable()
        if self.recorder is not None:
            threading.Thread(target=self.recorder.note_end, name="scheduler-stop", daemon=True,
                             args=(Status.INTERRUPTED, {Attr.ERROR: SCHEDULER_STOP})).start()
        if callable(self.submitit_term):
            self.submitit_term(signum, frame)

    def _run(self) -> str:
        ctx = self.context = open_context(self.cfg, self.requested_run_dir, self.out_dir)
        self.recorder = RunRecorder(self.cfg, ctx.run_dir, ctx.is_main)
        self.identity = identity_attributes(self.cfg, ctx, self.extra_attrs)
        if dist.is_initialized() and ctx.env.world_size > 1:
            self.stop_channel = StopChannel(ctx.env.rank, ctx.env.world_size, self._on_peer_stop)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                self.deferred.install()  # raised inside a collective, a signal would leave the peers waiting
        status, info = self._outcome(ctx)
        self._finish(status, info)
        if status == Status.COMPLETED:
            if self.stop_channel is not None:
                self.stop_channel.close()
            shutdown_process_group()
        else:
            self._leave()
        if ctx.is_main:
            print(f"{status}: {ctx.run_dir / METRICS_NAME}", flush=True)
        return Status(status).value  # plain text: it travels in submitit's pickled results

    def _outcome(self, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        """Train; the outcome is the loop's, or the one an error stands for (out of memory, a peer's
        stop).  Any other error is recorded as this rank's and let out."""
        try:
            return self._train(ctx)
        except (RunFolderError, DataError, ConfigError):  # not its folder, no data, bad input: nothing written
            self._leave()
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep what is consistent, say interrupted
            if self.loop is not None and self.cfg.train.checkpoint_every_s is not None:
                self.loop.save_if_checkpointable()
            self._finish(*self._stop(Status.INTERRUPTED, {Attr.ERROR: interruption_reason(exc)}))
            raise
        except BaseException as exc:
            outcome = self._outcome_of_error(exc)
            if outcome is None:
                raise
            return outcome

    def _outcome_of_error(self, exc: BaseException) -> tuple[str, dict[str, Any]] | None:
        """The outcome ``exc`` stands for; None when it ends this rank (recorded here, then let out)."""
        if self.requeued and isinstance(exc, SystemExit):  # submitit ends this attempt; the job goes on
            self._record_requeue()
            return None
        if self.requeued and refused_requeue(exc):  # checkpointed, but Slurm would not requeue the job
            self._record_requeue(refused=True)
            return None
        if is_out_of_memory(exc):  # CUDA's, or the CPU allocator's under an emulated cap
            return self._stop(Status.OOM, {Attr.OOM_BATCH_SIZE: self.cfg.train.batch_size,
                                           Attr.ERROR: (str(exc).splitlines() or [repr(exc)])[0]})
        peer = self.stop_channel.peer_record() if self.stop_channel is not None else None
        if peer is None or isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # this rank failed: say so to the peers and in metrics.h5, then let the error out
            self._finish(*self._stop(Status.FAILED, {Attr.ERROR: f"{type(exc).__name__}: {exc}"}))
            if not isinstance(exc, SystemExit):
                self._leave()
            return None
        return peer.outcome()  # a peer stopped the run (its leaving broke this rank's collective)

    def _record_requeue(self, refused: bool = False) -> None:
        """This attempt ends requeued: the run is interrupted, and resumes in the next attempt; or
        (``refused``) Slurm refused the requeue: interrupted, with its checkpoint, for a resubmission."""
        saved = self.loop.checkpoints.saved if self.loop is not None else None
        at = f"from step {saved.step}" if saved is not None else "afresh"
        if refused:
            why = f"preempted or timed out: this site refuses requeue: resubmit to resume ({at})"
        else:
            why = "preempted or timed out: requeued, " + (f"resumes {at}" if saved is not None else "starts afresh")
        self._finish(*self._stop(Status.INTERRUPTED, {Attr.ERROR: why}))
        print(f"pyramidrepro: {why}", file=sys.stderr, flush=True)

    @staticmethod
    def _leave() -> None:
        """Leave the process group without a barrier (peers may be mid-collective)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def _train(self, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        assert self.recorder is not None
        oom_at, signal_at = injected_oom_step(ctx.env.rank), injected_signal(ctx.env.rank)
        delay_s = injected_delay()
        if delay_s and ctx.is_main:  # never silent: it slows every figure the run records
            print(f"pyramidrepro: {INJECT_DELAY_VAR}={delay_s:g}: every step waits {delay_s:g} s first (an injected "
                  "fault for tests; unset it to measure)", file=sys.stderr, flush=True)
        if oom_at == "setup":
            raise_injected_oom("setup")
        training = build_training(self.cfg, ctx)  # writes nothing in the run folder
        if ctx.is_main:  # from here the run folder is this run's alone until it ends
            self.lock = RunLock(ctx.run_dir).acquire()
        checkpoints = Checkpoints(ctx.run_dir, self.cfg.digest(), training.executor, writes=ctx.is_main)
        resumed = checkpoints.load()  # every rank reads the checkpoint rank 0 wrote; refused before any write
        self.recorder.open(self.identity, resuming=resumed is not None)

        def before_step(step: int) -> None:
            if oom_at == step:
                raise_injected_oom(f"step {step}")
            if signal_at is not None and signal_at[0] == step:
                send_injected_signal(signal_at[1])
            if delay_s:
                time.sleep(delay_s)

        settings = LoopSettings.from_config(self.cfg, world_size=ctx.env.world_size, progress=self.progress)
        self.loop = TrainingLoop(settings, training.executor, training.train_loader, training.test_loader,
                                 self.recorder, checkpoints, before_step=before_step, interrupt=self.deferred.pending)
        start = resumed or Position()
        attrs = setup_attributes(self.cfg, ctx, training, self.loop)
        if resumed is not None:
            self.recorder.rewind(start.step, start.epoch)
            attrs[Attr.RESUMED_FROM_STEP] = start.step
        self.recorder.set_attrs(flush=True, **attrs)
        status, info = self.loop.run(start)
        if status == Status.INTERRUPTED:  # a stop signal: the peers that did not see it stop too
            status, info = self._stop(status, info)
        if status == Status.COMPLETED:  # a cached auto choice the run fell far short of is dropped
            review_choice(self.cfg, ctx, training.choice, self.loop.images_per_s)
        if status == Status.COMPLETED and self.cfg.train.measure_bounds:
            self.loop.checkpointable = False  # the timed steps move the weights: no checkpoint from here
            t = self.cfg.train
            bounds = measure_bounds(training.executor, training.train_loader, t.batch_size, training.grad_bytes,
                                    t.bucket_cap_mb, ctx.env.world_size if t.mode == "ddp" else 1)
            self.recorder.set_summary(**bounds.summary())
        return status, info

    def _stop(self, status: str, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """This rank ends the run with ``status``: tell every peer (multi-rank); the outcome in force."""
        if self.stop_channel is None:
            return status, info
        return self.stop_channel.post(status, info).outcome()

    def _finish(self, status: str, info: dict[str, Any]) -> None:
        """Record the outcome (rank 0, holding the folder's lock; a folder another run holds is left alone)."""
        if self.recorder is None or self.context is None:
            return
        if self.context.is_main and self.lock is None:
            try:
                self.lock = RunLock(self.context.run_dir).acquire()
            except RunFolderError:
                return
        if self.identity and (sharing := self.identity.get(Attr.NODE_SHARING)):  # Slurm's view again, at the end
            info = {**info, Attr.NODE_SHARING: {**sharing, "end": node_sharing()}}
        self.recorder.finish(status, info, self.identity)

    def _on_peer_stop(self, record: StopRecord) -> int:
        """Called from the stop watcher when another rank stopped the run; returns this rank's exit code."""
        self._finish(*record.outcome())
        if self.context is not None and self.context.is_main:
            print(f"{record.status} (rank {record.rank}): {self.context.run_dir / METRICS_NAME}", flush=True)
        return EXIT_CODES.get(record.status, 1)


def refused_requeue(exc: BaseException) -> bool:
    """Whether ``exc`` is ``scontrol requeue`` failing under submitit's requeue (a partition or job
    that does not allow it: ``--no-requeue``, ``JobRequeue=0`` without ``--requeue``)."""
    cmd = getattr(exc, "cmd", None)
    return isinstance(exc, subprocess.CalledProcessError) and isinstance(cmd, (list, tuple)) and \
        list(cmd[:2]) == ["scontrol", "requeue"]
