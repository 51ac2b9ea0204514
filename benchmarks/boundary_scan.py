"""The boundary search against an exhaustive scan, on a small model under an emulated CPU memory cap.

    python benchmarks/boundary_scan.py --out /tmp/boundary_scan [--cap-gb 1.3] [--resolution 16] [--max-batch 256]

The search (`pyramidrepro boundary`) and the scan each run their probes in fresh processes,
in folders of their own (nothing is shared).  The scan tries every multiple of the resolution
up to --max-batch.  The script prints both results, the probe counts and whether the scan was
monotonic (nothing completed above a batch that ran out of memory).  It exits 1 when they
disagree.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pyramidrepro.cluster.batch_search import BoundarySearch, find_boundaries
from pyramidrepro.config.load import load_config
from pyramidrepro.config.schema import Status

EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the probes' runs")
    parser.add_argument("--cap-gb", type=float, default=1.3, help="devices.memory_limit_gb (default 1.3)")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args()
    sets = ["devices.device=cpu", f"devices.memory_limit_gb={args.cap_gb}", "data.synthetic_train_size=2048"]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"smoke model (PyramidNet-20 alpha=12), cap {args.cap_gb} GiB (RLIMIT_DATA)", flush=True)

    t0 = time.monotonic()
    [found] = find_boundaries(EXPERIMENT, sets, Path(args.out) / "search", 1, args.resolution, args.resolution,
                              args.max_batch)
    search_s = time.monotonic() - t0

    t0 = time.monotonic()
    cfg = load_config(EXPERIMENT, sets)
    scanner = BoundarySearch(EXPERIMENT, sets, cfg, {}, Path(args.out) / "scan", log=lambda _: None)
    scan = []
    for batch in range(args.resolution, args.max_batch + 1, args.resolution):
        probe = scanner.probe(batch)
        scan.append((batch, probe.status))
        print(f"  scan batch {batch:>4}: {probe.status}", flush=True)
    scan_s = time.monotonic() - t0

    first_oom = next((b for b, st in scan if st == Status.OOM), None)
    fits_below = [b for b, st in scan if st == Status.COMPLETED and (first_oom is None or b < first_oom)]
    largest = max(fits_below) if fits_below else None
    monotonic = all(st == Status.OOM for b, st in scan if first_oom is not None and b >= first_oom)
    agree = (largest, first_oom) == (found.largest_fit, found.smallest_failure)
    summary = {"search": {"largest_fit": found.largest_fit, "smallest_failure": found.smallest_failure,
                          "probes": len(found.probes), "seconds": round(search_s, 1)},
               "scan": {"largest_fit": largest, "smallest_failure": first_oom, "probes": len(scan),
                        "seconds": round(scan_s, 1), "monotonic": monotonic},
               "agree": agree}
    print(json.dumps(summary, indent=2))
    return 0 if agree and monotonic else 1


if __name__ == "__main__":
    sys.exit(main())
