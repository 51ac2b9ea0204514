"""One run from start to outcome: the trainer (context, setup, record), the loop that only
iterates, checkpoints that resume a preempted run, and the injected faults the tests use."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "train": ("Trainer",),
    "loop": ("TrainingLoop", "LoopSettings"),
    "checkpoint": ("Checkpoints", "Position"),
    "stop_channel": ("StopChannel",),
})
