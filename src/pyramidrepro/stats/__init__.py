"""Numbers from measurements: throughput with its confidence interval (measure) and the DDP
all-reduce model that predicts scaling (scaling). Plain Python, no torch."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "measure": ("Estimate", "mean_ci", "throughput", "pool", "compare"),
    "scaling": ("Link", "DeviceStep", "Fabric", "parse_link", "predict", "ddp_buckets", "fit_ring"),
})
