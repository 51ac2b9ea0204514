"""The device check (benchmarks/gpu_check.sh) in its shrunk CPU form, as the GPU machine's image has
it: torchvision, matplotlib, DALI and submitit hidden.  Every step must run or be skipped
for a named missing package; none may fail."""

import os
import re
import subprocess
import time

from support import ROOT

HIDE = '''
import sys

HIDDEN = {"torchvision", "matplotlib", "nvidia.dali", "submitit"}


class _Hidden:
    """Refuse the packages the device image does not have, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: the device image lacks it)")
        return None


sys.meta_path.insert(0, _Hidden())
'''

RUN_STEPS = ["cap_b256", "cap_b512", "sync_fp32", "sync_bf16", "ddp_gloo_ws1", "ddp_gloo_2ranks", "dp",
             "dp_balanced_bf16", "fp16_scaler", "compile_bf16"]


def test_device_check_cpu_form_with_the_device_image_packages_only(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE)
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", PYTHON=str(ROOT / ".venv" / "bin" / "python"),
               OUT=str(out), PYTHONPATH=f"{hide}:{ROOT / 'src'}", TMPDIR=str(tmp_path))
    if not os.path.exists(env["PYTHON"]):
        env["PYTHON"] = __import__("sys").executable
    t0 = time.monotonic()
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=400)
    elapsed = time.monotonic() - t0
    print(r.stdout, f"\n{elapsed:.0f} s")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert not [x for x in lines if x.startswith("FAIL")]
    ok = {m.group(1) for x in lines if (m := re.match(r"ok +(\S+) ", x))}
    for name in ["env", "dp_thread_bf16", "bench_optimized", *RUN_STEPS, *(f"{s}_status" for s in RUN_STEPS)]:
        assert name in ok, (name, r.stdout)
    skipped = {m.group(1): m.group(2) for x in lines if (m := re.match(r"skip +(\S+): (.*)", x))}
    assert set(skipped) == {"bench_baseline", "dali", "report"}
    assert "torchvision does not import" in skipped["bench_baseline"]
    assert lines[-1].startswith("gpu_check: 0 failed, 3 skipped")
    # the OOM case is recorded as oom, and only small files came back (never a checkpoint)
    assert '"status": "oom"' in (out / "cap_b512_status.log").read_text()
    assert (out / "env.json").is_file() and (out / "bench_optimized.json").is_file()
    assert len(list(out.glob("runs/*/*/metrics.h5"))) == len(RUN_STEPS)
    assert not list(out.rglob("*.pt")) and not list(tmp_path.glob("gpu_check.*"))  # work folder removed
