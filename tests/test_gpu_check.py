"""The device check (devicecheck/gpu_check.py) in its shrunk CPU form, as the GPU machine's image has
it: torchvision, matplotlib and submitit hidden, DALI there as a carried pack brings it
(devicecheck/dali_pack.py, tested below).  Every step must run or be skipped for a named missing
package; none may fail.  The ``cuda`` form's plan is read here too, and each of its runs validated
against a Python without DALI, as the device image is before its pack is unpacked."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from support import INDUCTOR_CACHE, ROOT
from support.hide import hiding_env

RUN_STEPS = ["cap_b256", "cap_b512", "sync_fp32", "sync_bf16", "ddp_gloo_ws1", "ddp_gloo_2ranks", "dp",
             "dp_balanced_bf16", "fp16_scaler", "compile_bf16", "dali_single_sync", "dali_gloo_2ranks",
             "dali_bf16_channels_last"]
#: what the device image has: torch, h5py, pyyaml (DALI only once its pack is unpacked)
DEVICE_IMAGE_LACKS = {"torchvision", "matplotlib", "submitit"}


@pytest.mark.device_check
@pytest.mark.slow
def test_device_check_cpu_form_with_the_device_image_packages_only(tmp_path):
    out = tmp_path / "out"
    hidden = hiding_env(tmp_path / "hide", DEVICE_IMAGE_LACKS, str(ROOT / "src"))
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", PYTHON=str(ROOT / ".venv" / "bin" / "python"),
               OUT=str(out), TMPDIR=str(tmp_path), **hidden, **INDUCTOR_CACHE)
    if not os.path.exists(env["PYTHON"]):
        env["PYTHON"] = __import__("sys").executable
    t0 = time.monotonic()
    r = subprocess.run(["bash", "devicecheck/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    elapsed = time.monotonic() - t0
    print(r.stdout, f"\n{elapsed:.0f} s")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert not [x for x in lines if x.startswith("FAIL")]
    ok = {m.group(1) for x in lines if (m := re.match(r"ok +(\S+) ", x))}
    for name in ["env", "dp_thread_bf16", "bench", "bench_loader_dali", "bench_loader_torch", *RUN_STEPS,
                 *(f"{s}_status" for s in RUN_STEPS)]:
        assert name in ok, (name, r.stdout)
    skipped = {m.group(1): m.group(2) for x in lines if (m := re.match(r"skip +(\S+): (.*)", x))}
    assert skipped == {"bench_loader_torchvision": "torchvision does not import",
                       "report": "matplotlib does not import"}
    assert lines[-1].startswith("gpu_check: 0 failed, 2 skipped")
    assert '"loader": "dali"' in (out / "bench_loader_dali.log").read_text()
    # bench without torchvision: the baseline fed by the tensor loader, and saying so
    bench = json.loads((out / "bench.json").read_text())
    assert bench["baseline"]["loader"] == "torch" and bench["ratio_over"].startswith("the seed-style loop in true fp32")
    assert "torchvision is not installed" in (out / "bench.log").read_text()
    # the OOM case is recorded as oom, and only small files came back (never a checkpoint)
    assert '"status": "oom"' in (out / "cap_b512_status.log").read_text()
    assert (out / "env.json").is_file()
    assert len(list(out.glob("runs/*/*/metrics.h5"))) == len(RUN_STEPS)
    assert not list(out.rglob("*.pt")) and not list(tmp_path.glob("gpu_check.*"))  # work folder removed


def _load_dali_pack():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dali_pack", ROOT / "devicecheck" / "dali_pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unpack(pack, dest):
    return subprocess.run([sys.executable, str(ROOT / "devicecheck" / "dali_pack.py"), "unpack", str(pack), str(dest)],
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


def _plan_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_plan", ROOT / "devicecheck" / "gpu_check_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_plan"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: run in a Python as the device image has it before DALI's pack is unpacked: each run's config loaded
#: and checked as ``run`` checks it before training (the loader's package must import)
VALIDATE = """
import json, sys
from gpu_check_plan import plan
from pyramidrepro.config.load import load_config
from pyramidrepro.workload.requirements import host_problem
out = {}
for step in plan("cuda", sys.argv[1] or None):
    if not step.expect or "nvidia.dali" in step.needs:
        continue
    experiment, *rest = step.config
    cfg = load_config(experiment, [rest[i + 1] for i, a in enumerate(rest) if a == "--set"])
    out[step.name] = {"loader": cfg.data.loader, "problem": host_problem(cfg.data.loader, "")}
print(json.dumps(out))
"""


@pytest.mark.parametrize("pack", ["", ".dali_pack"])
def test_every_run_of_the_cuda_plan_gets_the_loader_it_names_in_the_device_image(tmp_path, pack):
    """The check tripped on its own plan once: the capacity runs took an experiment that says
    ``loader: dali`` while the device image had no DALI yet.  Each run must name its loader, the
    runs that need DALI must say so (they are skipped without it), and every other run must pass
    ``run``'s own check in a Python without DALI, torchvision, matplotlib or submitit."""
    steps = _plan_module().plan("cuda", pack or None)
    runs = [s for s in steps if s.expect]
    assert {"cap_b256", "cap_b512", "dali_single_sync", "compile_bf16"} <= {s.name for s in runs}
    assert all(s.loader and s.needs for s in runs)
    if pack:  # unpacked before any step that could use it
        assert steps[0].name == "dali_unpack"
    needs_dali = {s.name for s in steps if "nvidia.dali" in s.needs}
    assert needs_dali == {"dali_single_sync", "dali_gloo_2ranks", "dali_bf16_channels_last", "bench_loader_dali"}
    env = dict(os.environ, **hiding_env(tmp_path / "hide", DEVICE_IMAGE_LACKS | {"nvidia.dali"},
                                                f"{ROOT / 'devicecheck'}:{ROOT / 'src'}"))
    r = subprocess.run([sys.executable, "-c", VALIDATE, pack], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    checked = json.loads(r.stdout)
    assert set(checked) == {s.name for s in runs} - needs_dali
    assert {name: c["problem"] for name, c in checked.items() if c["problem"]} == {}
    assert checked["cap_b256"]["loader"] == "torch"
