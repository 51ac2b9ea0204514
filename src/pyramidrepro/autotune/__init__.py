"""The autotuner: which training path a run takes when its config says ``auto``."""
