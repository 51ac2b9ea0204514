"""Where a run executes: devices and memory caps, process groups and the local launcher,
the container image, the Slurm queue's state, and what a result records about the machine."""
