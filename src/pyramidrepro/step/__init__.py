"""One optimizer step: the executor that hides precision, DP and DDP behind ``step()``, the
speed options of a path, and the step's compute / input / all-reduce bounds."""
