"""One short pass over every GPU code path, made to run whole in one call on a bare GPU machine
(torch, h5py and pyyaml; no pip install, no torchvision / matplotlib / DALI / submitit needed):

    PYTHONPATH=src python3 devicecheck/gpu_check.py                      # on a GPU machine, <= 8 minutes
    DALI_PACK=.dali_pack PYTHONPATH=src python3 devicecheck/gpu_check.py # DALI from its carried parts
    GPU_CHECK_DEVICE=cpu PYTHONPATH=src python3 devicecheck/gpu_check.py # the same steps shrunk, on a CPU

(``bash devicecheck/gpu_check.sh`` runs the same.)  The steps, in order, are in
devicecheck/gpu_check_plan.py: DALI's pack unpacked first when given, the emulated 12 GB card's
boundary, no host sync, bf16 in DataParallel's threads, DDP, DP, fp16, compile, bench (true-fp32
and TF32 baselines, widths and compile trials), the CUDA kernel table, DALI on the device, each
loader's throughput, the report.  A step whose package is missing is skipped with the reason;
every run step also checks the status in its metrics.h5.

Runs write under a temporary folder; only small files (logs, metrics.h5, config.yaml, JSON, the
report) are copied to $OUT (default results/gpu_check).  Exit code: the number of failed steps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "src")]

from gpu_check_plan import Step, plan  # noqa: E402

from pyramidrepro.config.schema import EXIT_CODES  # noqa: E402

SMALL_FILES = ("*.log", "*.json", "*.h5", "*.yaml", "*.md", "*.png")


class Check:
    """The steps' outcomes, printed as they end (``ok`` / ``FAIL`` / ``skip`` lines)."""

    def __init__(self, python: str, work: Path, env: dict[str, str]) -> None:
        self.python, self.work, self.env = python, work, env
        self.failed = self.skipped = 0
        self.background: dict[str, tuple[subprocess.Popen, float]] = {}

    def command(self, step: Step) -> list[str]:
        fill = {"{runs}": str(self.work / "runs"), "{work}": str(self.work)}
        return [self.python, *(fill.get(a, a.replace("{work}", str(self.work))) for a in step.argv)]

    def start(self, step: Step) -> subprocess.Popen:
        log = open(self.work / f"{step.name}.log", "w")  # noqa: SIM115 - the child holds it open
        return subprocess.Popen(self.command(step), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**self.env, **dict(step.env)}, start_new_session=True)

    def finish(self, step: Step, proc: subprocess.Popen, t0: float) -> None:
        """Wait for ``proc`` within the step's limit (the whole process group is killed after it)."""
        try:
            rc = proc.wait(timeout=max(1.0, step.limit_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
        if step.expect is not None:
            want = EXIT_CODES[step.expect]  # a StrEnum key: the status's name finds it
            ok = rc == want
            if not ok:
                with open(self.work / f"{step.name}.log", "a") as log:
                    log.write(f"exit {rc}, expected {want}\n")
        else:
            ok = rc == 0
        self.outcome(step.name, time.monotonic() - t0, ok)
        if step.expect is not None:
            self.run_step(Step(f"{step.name}_status", 30, ("devicecheck/gpu_check_probes.py", "status", "{runs}",
                                                            step.name, step.expect)))

    def run_step(self, step: Step) -> None:
        missing = [m for m in step.needs if not self.importable(m)]
        if missing:
            self.skip(step.name, f"{missing[0]} does not import")
            return
        if step.name in self.background:
            proc, t0 = self.background.pop(step.name)
            self.finish(step, proc, t0)
            return
        t0 = time.monotonic()
        self.finish(step, self.start(step), t0)

    def importable(self, module: str) -> bool:
        r = subprocess.run([self.python, "devicecheck/gpu_check_probes.py", "importable", module], cwd=ROOT,
                           env=self.env, capture_output=True, timeout=120)
        return r.returncode == 0

    def outcome(self, name: str, seconds: float, ok: bool) -> None:
        lines = (self.work / f"{name}.log").read_text(errors="replace").splitlines() or [""]
        if ok:
            print(f"ok    {name} ({seconds:.0f} s): {lines[-1][:220]}", flush=True)
        else:
            print(f"FAIL  {name} ({seconds:.0f} s): {' '.join(lines[-3:])[:400]}", flush=True)
            self.failed += 1

    def skip(self, name: str, reason: str) -> None:
        print(f"skip  {name}: {reason}", flush=True)
        self.skipped += 1


def main() -> int:
    device = os.environ.get("GPU_CHECK_DEVICE", "cuda")
    out = Path(os.environ.get("OUT", "results/gpu_check")).resolve()
    python = os.environ.get("PYTHON") or sys.executable
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT / "src"), PYTHONUNBUFFERED="1")
    work = Path(tempfile.mkdtemp(prefix="gpu_check.", dir=os.environ.get("TMPDIR")))
    (work / "runs").mkdir()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(python, work, env)
    t_start = time.monotonic()
    steps = plan(device, os.environ.get("DALI_PACK") or None)
    for step in steps:  # started first, waited for at their place
        if step.background and all(check.importable(m) for m in step.needs):
            check.background[step.name] = (check.start(step), time.monotonic())
    for step in steps:
        check.run_step(step)
        if step.name == "dali_unpack" and (work / "dali_site").is_dir():  # made only when whole
            env["PYTHONPATH"] = f"{work / 'dali_site'}{os.pathsep}{env['PYTHONPATH']}"
    for pattern in SMALL_FILES:  # only small files come back: never checkpoints
        for f in work.rglob(pattern):
            if f.is_file() and f.stat().st_size < 5 * 2**20:
                (out / f.relative_to(work)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / f.relative_to(work))
    shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: {check.failed} failed, {check.skipped} skipped step(s) in "
          f"{time.monotonic() - t_start:.0f} s on {device}; files under {out}")
    return check.failed


if __name__ == "__main__":
    sys.exit(main())
