"""Many runs: dispatch to Slurm or this machine through submitit, the campaign that repeats
points until their interval is tight, and the search for the largest batch that fits."""
