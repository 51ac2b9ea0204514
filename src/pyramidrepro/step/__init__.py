"""One optimizer step: the executor that hides precision, DP and DDP behind ``step()``, the
speed options of a path, and the step's compute / input / all-reduce bounds."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "executor": ("StepExecutor", "StepSettings", "OptimizerSettings", "make_executor"),
    "paths": ("PathSpec", "TrainPath"),
    "bottleneck": ("Bounds", "measure_bounds"),
})
