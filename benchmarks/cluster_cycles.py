"""Cycle the multi-node Slurm test cluster: start it, run a 2-node gloo all-reduce job, stop it.

    python benchmarks/cluster_cycles.py --cycles 10 [--nodes 3]

Each cycle is up (slurm/dev/cluster.sh start) -> one job across 2 nodes (srun, one rank per node,
torch.distributed gloo all-reduce of each rank's number; the job must answer from node1 and node2
with the right sum) -> down (stop, namespaces removed).  Prints one line per cycle with the three
times and a summary; exits 1 at the first cycle that fails (how many passed in a row is printed).
Needs root (network namespaces) and the cluster's Debian packages; nothing else may be using the
cluster's state folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ["bash", str(ROOT / "slurm" / "dev" / "cluster.sh")]

ALL_REDUCE = """
import os, socket, torch, torch.distributed as dist
from pyramidrepro.machine.slurm_job import expand_nodelist
rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
first = expand_nodelist(os.environ["SLURM_JOB_NODELIST"])[0]
dist.init_process_group("gloo", init_method=f"tcp://{first}:{29500 + int(os.environ['SLURM_JOB_ID']) % 1000}",
                        rank=rank, world_size=world)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(socket.gethostname(), int(t.item()), flush=True)
dist.destroy_process_group()
"""


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:  # noqa: ANN003
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.monotonic() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3, help="nodes the cluster starts with (the job uses 2)")
    args = ap.parse_args()
    conf = subprocess.run([*CLUSTER, "env"], capture_output=True, text=True, check=True).stdout.split("=", 1)[1]
    env = dict(os.environ, SLURM_CONF=conf.strip())
    subprocess.run([*CLUSTER, "stop"], capture_output=True, check=True)  # every cycle starts from down
    ups, jobs, downs = [], [], []
    for i in range(1, args.cycles + 1):
        up_s, up = timed([*CLUSTER, "start", "--nodes", str(args.nodes)])
        job_s, job = timed(["srun", "-N2", "--ntasks-per-node=1", "--cpus-per-task=1", sys.executable, "-c",
                            ALL_REDUCE], env=env, timeout=120) if up.returncode == 0 else (0.0, up)
        down_s, down = timed([*CLUSTER, "stop"])
        answers = sorted(job.stdout.split("\n")) if job.returncode == 0 else []
        ok = up.returncode == 0 and down.returncode == 0 and answers[-2:] == ["node1 3", "node2 3"]
        print(f"cycle {i:2d}: up {up_s:5.1f} s, 2-node job {job_s:5.1f} s, down {down_s:4.1f} s: "
              f"{'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            print(up.stderr[-2000:], job.stdout[-2000:], job.stderr[-2000:], down.stderr[-2000:], sep="\n")
            print(f"{i - 1} consecutive cycles passed before cycle {i} failed")
            return 1
        ups.append(up_s)
        jobs.append(job_s)
        downs.append(down_s)
    for name, xs in (("up", ups), ("2-node job", jobs), ("down", downs)):
        print(f"{name:>10}: median {statistics.median(xs):.1f} s, min {min(xs):.1f} s, max {max(xs):.1f} s")
    print(f"{args.cycles} consecutive up -> 2-node job -> down cycles passed ({os.cpu_count()} CPUs, "
          f"{args.nodes} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
