"""Run a sweep's points one after another on this machine (``reproduce``, ``submit --cluster local``).

Each point runs in its own process tree (``pyramidrepro run --run-dir``), so an out-of-memory
point or a crash ends that point only.  Points whose ``metrics.h5`` already says ``completed``
are skipped, so an interrupted campaign picks up where it stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .config import ExperimentConfig, expand_sweep
from .metrics import read_metrics


def point_done(run_dir: Path) -> bool:
    path = run_dir / "metrics.h5"
    if not path.is_file():
        return False
    try:
        return read_metrics(path)["attrs"].get("status") in ("completed", "oom")
    except OSError:
        return False


def run_campaign(cfg: ExperimentConfig, source: str, out: str | Path, ddp_ranks: int,
                 timeout_s: float | None = None) -> list[tuple[str, str, float]]:
    """Run every sweep point locally; returns (run id, outcome, seconds) per point."""
    points = expand_sweep(cfg, source)
    results = []
    total_t0 = time.monotonic()
    for i, (run_id, point_cfg) in enumerate(points, 1):
        run_dir = Path(out) / cfg.name / run_id
        label = f"[{i}/{len(points)}] {run_id}"
        if point_done(run_dir):
            print(f"{label}: already done, skipped", flush=True)
            results.append((run_id, "skipped", 0.0))
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(point_cfg.to_yaml())
        cmd = [sys.executable, "-m", "pyramidrepro", "run", str(run_dir / "config.yaml"),
               "--run-dir", str(run_dir), "--no-progress"]
        if point_cfg.train.mode == "ddp":
            cmd += ["--nproc", str(ddp_ranks)]
        print(f"{label}: running ...", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, err = -1, f"timed out after {timeout_s} s"
        dt = time.monotonic() - t0
        status = "failed"
        if (run_dir / "metrics.h5").is_file():
            status = str(read_metrics(run_dir / "metrics.h5")["attrs"].get("status", "failed"))
        outcome = status if code == 0 else f"{status} (exit {code})"
        print(f"{label}: {outcome} in {dt:.1f} s (elapsed {time.monotonic() - total_t0:.0f} s)", flush=True)
        if code != 0:
            tail = "\n".join(err.strip().splitlines()[-5:])
            print(f"    {tail}", flush=True)
        results.append((run_id, outcome, dt))
    return results
