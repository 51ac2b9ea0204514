"""One rank of a job on the Slurm test cluster: one epoch of each loader named on the command line,
with the package's own rank layout (``detect_dist_env``) and gloo process group; the labels are the
sample indices, so rank 0 can write every rank's samples (and host) to the JSON file OUT.

    srun --nodes=2 --ntasks-per-node=1 python shard_job.py OUT dali torch
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist

from pyramidrepro.machine.parallel import detect_dist_env, init_process_group
from pyramidrepro.workload.data import ImageSet
from pyramidrepro.workload.loaders import make_loader
from pyramidrepro.workload.loaders.base import Shard

N, BATCH, EPOCH = 1024, 128, 1


def main(out: str, kinds: list[str]) -> None:
    env = detect_dist_env()
    init_process_group(env, "gloo", torch.device("cpu"), 120)
    data = ImageSet(np.zeros((N, 3, 32, 32), dtype=np.uint8), np.arange(N, dtype=np.int64))
    result: dict = {"hosts": [None] * env.world_size}
    dist.all_gather_object(result["hosts"], socket.gethostname())
    for kind in kinds:
        loader = make_loader(kind, data, BATCH, torch.device("cpu"), shard=Shard(env.rank, env.world_size, seed=7),
                             num_workers=1)
        loader.set_epoch(EPOCH)
        mine = [int(i) for _, y in loader for i in y]
        everyone: list = [None] * env.world_size
        dist.all_gather_object(everyone, mine)
        result[kind] = everyone
    if env.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
