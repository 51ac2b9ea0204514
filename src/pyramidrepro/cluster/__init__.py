"""Many runs: dispatch to Slurm or this machine through submitit, the campaign that repeats
points until their interval is tight, and the search for the largest batch that fits."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "dispatch": ("submit", "wait", "make_executor", "preflight", "sbatch_preview"),
    "requests": ("gpu_request", "GpuRequest", "tasks_per_node"),
    "campaign": ("Campaign", "drive"),
    "campaign_state": ("CampaignState", "Repeats", "load_state"),
    "batch_search": ("find_boundaries", "ProbeError"),
})
