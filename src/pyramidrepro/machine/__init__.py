"""Where a run executes: devices and memory caps, process groups and the local launcher,
the container image, the Slurm queue's state, and what a result records about the machine."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "devices": ("machine_problem", "cap_gpu_memory", "is_out_of_memory"),
    "parallel": ("DistEnv", "detect_dist_env", "pick_device", "launch_local", "wrap_model"),
    "system": ("describe_system",),
    "provenance": ("git_commit", "versions"),
    "container": ("Container", "resolve", "run_in_image", "image_info"),
    "slurm_job": ("SlurmQueryError", "expand_nodelist", "under_submitit"),
    "interrupts": ("RunInterrupted", "DeferredStop"),
})
