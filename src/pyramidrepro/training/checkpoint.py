"""A run's checkpoint: where a resume starts (``checkpoint.pt`` in the run folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..records.lock import RunFolderError
from ..records.runs import CHECKPOINT_NAME
from ..records.storage import ensure_space
from ..step.executor import StepExecutor


@dataclass(frozen=True)
class Position:
    """Where training stands: the epoch, the steps done, and the batches done in that epoch."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0


class Checkpoints:
    """Rank 0 writes atomically (a temporary file, then rename); every rank reads the same file.

    A checkpoint records the config digest: one written for another config is refused.
    """

    def __init__(self, run_dir: Path, config_digest: str, executor: StepExecutor, writes: bool) -> None:
        self.path = Path(run_dir) / CHECKPOINT_NAME
        self.config_digest, self.executor, self.writes = config_digest, executor, writes
        self.saved: Position | None = None  # what checkpoint.pt holds
        self._writes = 0

    def save(self, at: Position) -> None:
        """Write the training state at ``at`` (once per position; ranks other than 0 write nothing).

        ``saved`` moves only once the file is in place: a save interrupted by a signal whose handler
        saves too (submitit's preemption hook) writes its own file instead of trusting the one half done.
        """
        if not self.writes or self.saved == at:
            return
        state = {**self.executor.state_dict(), "epoch": at.epoch, "step": at.step,
                 "batch_in_epoch": at.batch_in_epoch, "torch_rng": torch.get_rng_state(),
                 "config_digest": self.config_digest}
        self._writes += 1
        tmp = self.path.with_name(f"{self.path.name}.{self._writes}.tmp")  # nested saves never share one
        try:
            size = sum(t.numel() * t.element_size() for t in _tensors(state))
            ensure_space(self.path.parent, 2 * size, self.path)  # the new file beside the old one
            torch.save(state, tmp)
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self.saved = at

    def load(self) -> Position | None:
        """Restore the state a checkpoint holds; its position, or None when there is none."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=self.executor.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, corrupted or not a checkpoint at all
            raise RunFolderError(f"{self.path}: unreadable checkpoint ({type(exc).__name__}: truncated, "
                                 "corrupted or not a checkpoint); move it away to start the run afresh") from None
        if not isinstance(state, dict) or state.get("config_digest") != self.config_digest:
            raise RunFolderError(f"{self.path}: checkpoint belongs to a different config; move it away, "
                                 "or give another --run-id")
        self.executor.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"].cpu())
        self.saved = Position(state["epoch"], state["step"], state["batch_in_epoch"])
        return self.saved


def _tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in a nested state (model, optimizer, scaler)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []
