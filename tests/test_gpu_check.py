"""The device check (benchmarks/gpu_check.sh) in its shrunk CPU form, as the GPU machine's image has
it: torchvision, matplotlib and submitit hidden, DALI there as a carried pack brings it
(benchmarks/dali_pack.py, tested below).  Every step must run or be skipped for a named missing
package; none may fail."""

import os
import re
import subprocess
import sys
import time

from support import INDUCTOR_CACHE, ROOT
from support.hide import hiding_env

RUN_STEPS = ["cap_b256", "cap_b512", "sync_fp32", "sync_bf16", "ddp_gloo_ws1", "ddp_gloo_2ranks", "dp",
             "dp_balanced_bf16", "fp16_scaler", "compile_bf16", "dali_single_sync", "dali_gloo_2ranks"]


def test_device_check_cpu_form_with_the_device_image_packages_only(tmp_path):
    out = tmp_path / "out"
    hidden = hiding_env(tmp_path / "hide", {"torchvision", "matplotlib", "submitit"}, str(ROOT / "src"))
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", PYTHON=str(ROOT / ".venv" / "bin" / "python"),
               OUT=str(out), TMPDIR=str(tmp_path), **hidden, **INDUCTOR_CACHE)
    if not os.path.exists(env["PYTHON"]):
        env["PYTHON"] = __import__("sys").executable
    t0 = time.monotonic()
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    elapsed = time.monotonic() - t0
    print(r.stdout, f"\n{elapsed:.0f} s")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert not [x for x in lines if x.startswith("FAIL")]
    ok = {m.group(1) for x in lines if (m := re.match(r"ok +(\S+) ", x))}
    for name in ["env", "dp_thread_bf16", "bench_optimized", "bench_loader_dali", "bench_loader_torch", *RUN_STEPS,
                 *(f"{s}_status" for s in RUN_STEPS)]:
        assert name in ok, (name, r.stdout)
    skipped = {m.group(1): m.group(2) for x in lines if (m := re.match(r"skip +(\S+): (.*)", x))}
    assert set(skipped) == {"bench_baseline", "bench_loader_torchvision", "report"}
    assert "torchvision does not import" in skipped["bench_baseline"]
    assert lines[-1].startswith("gpu_check: 0 failed, 3 skipped")
    assert '"loader": "dali"' in (out / "bench_loader_dali.log").read_text()
    # the OOM case is recorded as oom, and only small files came back (never a checkpoint)
    assert '"status": "oom"' in (out / "cap_b512_status.log").read_text()
    assert (out / "env.json").is_file() and (out / "bench_optimized.json").is_file()
    assert len(list(out.glob("runs/*/*/metrics.h5"))) == len(RUN_STEPS)
    assert not list(out.rglob("*.pt")) and not list(tmp_path.glob("gpu_check.*"))  # work folder removed


def _load_dali_pack():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dali_pack", ROOT / "benchmarks" / "dali_pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unpack(pack, dest):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dali_pack.py"), "unpack", str(pack), str(dest)],
                          capture_output=True, text=True, timeout=60)


def test_a_wheel_carried_in_parts_is_joined_verified_and_imports_beside_the_nvidia_namespace(tmp_path):
    """The device check's DALI arrives split (one transfer holds 64 MiB): the parts are joined, the
    sha256 of each and of the whole checked, and a damaged or missing part refused in one line."""
    import random
    import zipfile

    wheel = tmp_path / "nvidia_fake_dali-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("nvidia/fake_dali/__init__.py", "VALUE = 42\n")
        z.writestr("nvidia/fake_dali/blob.bin", random.Random(0).randbytes(5000))  # incompressible: 3 parts
    dep = tmp_path / "tinydep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(dep, "w") as z:
        z.writestr("tinydep.py", "NAME = 'tinydep'\n")
    pack = tmp_path / "pack"
    manifest = _load_dali_pack().write_pack(wheel, [dep], pack, part_bytes=2048, carry_bytes=4096)
    assert len(manifest["parts"]) == 3 and all(p["size"] <= 2048 for p in manifest["parts"])
    sizes = {e["name"]: e["size"] for e in manifest["parts"] + manifest["deps"]}
    assert [n for t in manifest["transfers"] for n in t] == [dep.name, *(p["name"] for p in manifest["parts"])]
    assert len(manifest["transfers"]) == 2 and all(sum(sizes[n] for n in t) <= 4096 for t in manifest["transfers"])

    r = _unpack(pack, tmp_path / "site")
    assert r.returncode == 0, r.stderr
    # an image whose own nvidia package extends its namespace, like torch's CUDA wheels leave it
    image_site = tmp_path / "image_site"
    (image_site / "nvidia" / "cudnn").mkdir(parents=True)
    (image_site / "nvidia" / "__init__.py").write_text(_load_dali_pack().NAMESPACE_INIT)
    (image_site / "nvidia" / "cudnn" / "__init__.py").write_text("")
    code = "import nvidia.fake_dali, nvidia.cudnn, tinydep; print(nvidia.fake_dali.VALUE, tinydep.NAME)"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}:{image_site}")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert imported.stdout == "42 tinydep\n", imported.stderr

    second = pack / manifest["parts"][1]["name"]
    second.write_bytes(second.read_bytes()[:-1] + b"\0")  # one byte damaged in transfer
    r = _unpack(pack, tmp_path / "site2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and second.name in r.stderr
    second.unlink()
    r = _unpack(pack, tmp_path / "site2")
    assert r.returncode == 2 and "missing" in r.stderr and second.name in r.stderr
    assert not (tmp_path / "site2").exists()
