"""benchmarks/step_profile.py end to end on a tiny model: the profiler groups and oneDNN's own
per-kind times (read from its verbose log) must all come out, positive."""

import re
import subprocess
import sys

from support import ROOT


def test_step_profile_splits_the_step_and_reads_onednn_times():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--depth", "8", "--alpha", "12",
         "--batch-size", "8", "--steps", "1", "--repeats", "1", "--compile", "off"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = re.compile(r"(baseline \(seed-style\)|optimized)\s+[0-9.]+")
    table = [line for line in out.stdout.splitlines() if row.match(line)]
    assert len(table) == 2, out.stdout
    for line in table:
        numbers = [float(v) for v in re.findall(r"\s([0-9]+\.[0-9])", line)]
        assert len(numbers) == 4 and all(v > 0 for v in numbers), line  # conv fwd, conv bwd, the rest, wall
    assert re.search(r"bound: baseline step / optimized convolutions = [0-9.]+x", out.stdout)
    kinds = [line for line in out.stdout.splitlines() if "forward_training" in line]
    assert len(kinds) == 2, out.stdout
    for line in kinds:
        for kind in ("forward_training", "backward_data", "backward_weights"):
            ms = re.search(rf"{kind} ([0-9]+) ms \(([0-9]+) GFLOP/s\)", line)
            assert ms and float(ms.group(2)) > 0, line
