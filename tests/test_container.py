"""The image, for real: built here from containers/ (cold when no image of the same recipe is
cached), then runs inside it under bwrap, locally and through submit on the Slurm test cluster."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyramidrepro
from pyramidrepro.config.load import load_config
from pyramidrepro.machine.container import (
    ENV_DIGEST,
    IMAGE_CLEAN_ENV,
    IMAGE_MANIFEST,
    IMAGE_PYTHON,
    Container,
    resolve,
)
from pyramidrepro.machine.provenance import git_commit
from pyramidrepro.machine.slurm_job import expand_nodelist
from pyramidrepro.records.metrics import read_metrics
from pyramidrepro.records.runs import CHECKPOINT_NAME
from support import ON_TEST_CLUSTER, ONCE, ONE_THREAD, ROOT, SMOKE, TINY, run_cli, wait_for_metrics, wait_until
from support.hide import hiding_env
from support.images import fake_image
from support.slurm import preempt_and_resume

CONTAINERS = ROOT / "containers"
IN_IMAGE = [*TINY, *ONE_THREAD]
DDP = ["--set", "train.mode=ddp", "--set", "train.batch_size=32"]


def _recipe_packages() -> list[str]:
    return [ln.strip() for ln in (CONTAINERS / "packages.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def _sections(definition: str) -> tuple[dict[str, str], dict[str, str]]:
    """An Apptainer definition's header keys and its sections (``%post`` -> body)."""
    head, *parts = re.split(r"^%(\w+)\s*$", definition, flags=re.M)
    header = dict(re.findall(r"^(\w+):\s*(.+)$", head, re.M))
    return header, {parts[i]: parts[i + 1] for i in range(0, len(parts), 2)}


def test_both_apptainer_definitions_build_the_local_recipe():
    """One image: the primary definition starts from the registry's Debian bookworm (builds under
    --fakeroot anywhere), the debootstrap one from Debian's mirror; both install containers/packages.txt
    (the local builder's list) and run containers/install.sh from the same lock, with the same files,
    environment, runscript and test."""
    header, primary = _sections((CONTAINERS / "pyramidrepro.def").read_text())
    assert header["Bootstrap"] == "docker" and header["From"] == "debian:bookworm-slim"
    assert "containers/packages.txt" in primary["post"]
    # apt under --fakeroot without a subuid entry: it must not drop to its _apt user (setgroups fails)
    apt = [ln.strip() for ln in primary["post"].splitlines() if ln.strip().startswith("apt-get")]
    assert apt and all(ln.startswith("apt-get -o APT::Sandbox::User=root ") for ln in apt)
    assert any(" install " in ln for ln in apt)
    boot_header, boot = _sections((CONTAINERS / "pyramidrepro-debootstrap.def").read_text())
    assert boot_header["Bootstrap"] == "debootstrap" and boot_header["OSVersion"] == "bookworm"
    assert sorted(boot_header["Include"].split()) == sorted(_recipe_packages())
    local = (CONTAINERS / "build-local.sh").read_text()
    assert "--variant=minbase" in local and " bookworm " in local and "packages.txt" in local
    assert "install.sh deps --wheels" in local and "install.sh package" in local
    for sections in (primary, boot):
        post = sections["post"]
        assert post.index("install.sh deps") < post.index("install.sh package")
        for name in ("install.sh", "packages.txt", "requirements.lock", "requirements-cu128.lock"):
            assert f"containers/{name} /opt/pyramidrepro/containers/{name}" in sections["files"]
    for section in ("files", "environment", "runscript", "test", "labels", "arguments"):
        assert primary[section] == boot[section], section
    # the CUDA line is a build argument, the local builder's (cu130, install.sh's default) by default
    assert primary["arguments"].split() == ["CUDA_LINE=cu130"]
    assert "install.sh deps --line {{ CUDA_LINE }}" in primary["post"]
    assert "--build-arg CUDA_LINE=" in (CONTAINERS / "build.sh").read_text()
    assert "line=cu130" in (CONTAINERS / "install.sh").read_text()
    lock = [ln for ln in (CONTAINERS / "requirements.lock").read_text().splitlines() if ln and ln[0] != "#"]
    assert lock and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+\-]+", ln) for ln in lock)  # every one pinned
    assert {"torch", "nvidia-dali-cuda130", "h5py", "submitit"} <= {ln.split("==")[0] for ln in lock}
    assert {"libibverbs1", "librdmacm1", "ibverbs-providers"} <= set(_recipe_packages())  # NCCL over InfiniBand


def test_a_run_under_apptainer_records_the_sif_it_names_and_reads_its_digest_beside_it(tmp_path, monkeypatch):
    """Started by `apptainer exec x.sif ...`, not by the package: the SIF comes from the runtime's
    variable and its digest from `x.sif.sha256` (build.sh writes it), never from hashing the SIF;
    a digest file older than the SIF is for another build and is not used."""
    from pyramidrepro.machine.container import container_attributes, image_digest, started_by

    sif = tmp_path / "x.sif"
    sif.write_bytes(b"not really an image")
    sidecar = tmp_path / "x.sif.sha256"
    sidecar.write_text("ab" * 32 + "  x.sif\n")
    for variable in ("PYRAMIDREPRO_CONTAINER_IMAGE", "PYRAMIDREPRO_CONTAINER_DIGEST", "CH_RUNNING"):
        monkeypatch.delenv(variable, raising=False)
    assert started_by() == ""
    monkeypatch.setenv("APPTAINER_CONTAINER", str(sif))
    a = container_attributes()
    assert (a["container_runtime"], a["container_image"], a["container_digest"]) == (
        "apptainer", str(sif), "sha256:" + "ab" * 32)
    assert image_digest(sif) == "sha256:" + "ab" * 32  # the host side reads it too
    os.utime(sidecar, ns=(0, 0))  # older than the SIF: written for an earlier build
    assert container_attributes()["container_digest"] == ""
    assert image_digest(sif) == "sha256:" + hashlib.sha256(sif.read_bytes()).hexdigest()  # hashed, once


def _bad_image_run(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    r = run_cli("run", str(SMOKE), "--out", str(out), *IN_IMAGE, *[x for s in sets for x in ("--set", s)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, no traceback
    assert not out.exists() or not list(out.rglob("metrics.h5"))  # no run folder
    return r


def test_missing_image_is_one_line_naming_the_key(tmp_path):
    r = _bad_image_run(tmp_path, f"container.image={tmp_path / 'nope.sif'}")
    assert "container.image" in r.stderr and "no such image" in r.stderr and "make image" in r.stderr


def test_image_without_the_package_is_refused(tmp_path):
    fake = tmp_path / "rootfs"
    (fake / "usr" / "bin").mkdir(parents=True)
    r = _bad_image_run(tmp_path, f"container.image={fake}", "container.runtime=bwrap")
    assert "container.image" in r.stderr and "no pyramidrepro package" in r.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (`make test` installs it)")
def test_bind_of_a_missing_path_is_refused(tmp_path):
    r = _bad_image_run(tmp_path, f"container.image={tmp_path}", "container.runtime=bwrap",
                       f"container.binds=[{tmp_path / 'nope'}:/data]")
    assert "container.binds[0]" in r.stderr and "no such path to bind" in r.stderr


def test_missing_runtime_is_refused(tmp_path):
    sif = tmp_path / "img.sif"
    sif.write_bytes(b"not really an image")
    r = _bad_image_run(tmp_path, f"container.image={sif}", "container.apptainer=apptainer-not-installed")
    assert "container.runtime" in r.stderr and "no container runtime" in r.stderr
    r = _bad_image_run(tmp_path, f"container.image={sif}", "container.runtime=bwrap")
    assert "container.runtime" in r.stderr and "a .sif needs Apptainer" in r.stderr
    r = _bad_image_run(tmp_path, f"container.image={tmp_path}", "container.runtime=podman")
    assert "container.runtime" in r.stderr and "one of auto, apptainer, bwrap" in r.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (`make test` installs it)")
def test_debug_executor_cannot_run_in_an_image(tmp_path):
    fake = tmp_path / "rootfs"
    for part in ("opt/pyramidrepro/src/pyramidrepro", "opt/venv/bin"):
        (fake / part).mkdir(parents=True)
    (fake / "opt/pyramidrepro/src/pyramidrepro/__init__.py").write_text("")
    (fake / "opt/venv/bin/python").write_text("")
    r = run_cli("submit", str(SMOKE), *ONCE,
                "--cluster", "debug", "--out", str(tmp_path / "out"), "--container", str(fake),
                "--set", "container.runtime=bwrap", *IN_IMAGE)
    assert r.returncode == 2 and "cluster.executor" in r.stderr and "use local or slurm" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_bwrap_command_lays_the_image_read_only_and_binds_host_paths_in_place(tmp_path):
    fake = tmp_path / "rootfs"
    for part in ("usr/bin", "etc", "home", "opt/venv/bin"):
        (fake / part).mkdir(parents=True)
    (fake / "etc" / "hosts").write_text("")
    (fake / "bin").symlink_to("usr/bin")
    out = tmp_path / "out"
    out.mkdir()
    box = Container(image=str(fake), runtime="bwrap", executable="bwrap", digest="sha256:x",
                    binds=("/srv/data:/data:ro",), env=(("OMP_NUM_THREADS", "1"),))
    cmd = box.python([out, out / "inner", tmp_path / "missing"], cwd="/")
    pairs = list(zip(cmd, cmd[1:], cmd[2:]))
    assert ("--ro-bind", str(fake / "usr"), "/usr") in pairs and ("--symlink", "usr/bin", "/bin") in pairs
    assert ("--dir", "/home") in zip(cmd, cmd[1:])  # empty: writable, so /home/<user>/... can be bound
    assert ("--bind", str(out), str(out)) in pairs and ("--ro-bind", "/srv/data", "/data") in pairs
    assert ("--ro-bind", "/etc/hosts", "/etc/hosts") in pairs  # the host's, where the image has one
    assert str(out / "inner") not in cmd and str(tmp_path / "missing") not in cmd  # inside a bind / not there
    assert ("--bind", "/", "/") not in pairs and ("--chdir", "/") in zip(cmd, cmd[1:])  # / never bound over
    assert ("--unsetenv", "PYTHONPATH") in zip(cmd, cmd[1:]) and ("--setenv", ENV_DIGEST, "sha256:x") in pairs
    assert ("--setenv", "OMP_NUM_THREADS", "1") in pairs and cmd[-4:] == IMAGE_CLEAN_ENV
    assert ("--setenv", "PYRAMIDREPRO_CONTAINER_KEEP", "OMP_NUM_THREADS") in pairs  # the experiment's own variables


def test_only_the_pass_through_variables_reach_the_run_with_their_values_on_the_node():
    """clean_env keeps Slurm's, NCCL's, the rendezvous and the package's variables as they are where
    the rank starts, the experiment's container.env, and a runtime's own library path; a host's
    PYTHONPATH, LD_PRELOAD, VIRTUAL_ENV, CONDA_* and library path stay out, and the run is told
    which names were passed."""
    from pyramidrepro.machine.clean_env import IMAGE_PYTHON as SCRIPT_PYTHON
    from pyramidrepro.machine.clean_env import PASSED_VARIABLE, cleaned

    assert SCRIPT_PYTHON == IMAGE_PYTHON  # the script imports nothing of the package: the same path twice
    host = {"SLURM_PROCID": "3", "SLURM_JOB_NODELIST": "node[1-2],node5", "NCCL_IB_HCA": "mlx5_0", "MASTER_ADDR": "n1",
            "MASTER_PORT": "15123", "SUBMITIT_EXECUTOR": "slurm", "PYRAMIDREPRO_CONTAINER_IMAGE": "/i.sif",
            "OMP_NUM_THREADS": "4", "HOME": "/home/u", "PYTHONPATH": "/home/u/broken", "LD_PRELOAD": "/x.so",
            "VIRTUAL_ENV": "/home/u/.venv", "CONDA_PREFIX": "/c", "LD_LIBRARY_PATH": "/host/lib", "PATH": "/host/bin",
            "MY_SETTING": "1", "PYRAMIDREPRO_CONTAINER_KEEP": "MY_SETTING"}
    env = cleaned(host)
    for name in ("SLURM_PROCID", "SLURM_JOB_NODELIST", "NCCL_IB_HCA", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR",
                 "PYRAMIDREPRO_CONTAINER_IMAGE", "OMP_NUM_THREADS", "HOME", "MY_SETTING"):
        assert env[name] == host[name], name
    for name in ("PYTHONPATH", "LD_PRELOAD", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH"):
        assert name not in env, name
    assert env["PATH"].startswith("/opt/venv/bin:") and "/host/bin" not in env["PATH"]
    passed = env[PASSED_VARIABLE].split(",")
    assert passed == sorted(passed) and "SLURM_PROCID" in passed and "PYTHONPATH" not in passed
    under_apptainer = cleaned({**host, "APPTAINER_CONTAINER": "/i.sif", "LD_LIBRARY_PATH": "/.singularity.d/libs"})
    assert under_apptainer["LD_LIBRARY_PATH"] == "/.singularity.d/libs"  # --nv's driver libraries


#: what a run in the image sees of its scratch folder: the variable, and where tempfile puts a file
SCRATCH_PROBE = ("import os, tempfile; fd, path = tempfile.mkstemp(); os.close(fd); "
                 "print(os.environ.get('TMPDIR'), path)")


@pytest.mark.image
def test_a_run_in_the_image_sees_the_nodes_tmpdir_bound_in(image, tmp_path, monkeypatch):
    """A job's node-local scratch ($TMPDIR, under /tmp or not) reaches the run in the image: bound at
    its path and passed on, in the command run here and in the shell line a job runs on its node."""
    box = Container(image=str(image), runtime="bwrap", executable=shutil.which("bwrap"), digest="")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    r = subprocess.run([*box.python([tmp_path / "out"], cwd=tmp_path), "-c", SCRATCH_PROBE], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said, made = r.stdout.split()
    assert said == str(scratch) and Path(made).parent == scratch and Path(made).is_file()  # on the host's folder
    here = box.python_command([tmp_path / "out"], cwd=tmp_path, on_node=False)  # the local executor: no shell
    assert f"--bind {scratch} {scratch}" in here and "${TMPDIR" not in here
    line = box.python_command([tmp_path / "out"], cwd=tmp_path)
    assert str(scratch) not in line  # written on the login node: the job's own $TMPDIR is read on its node
    node_scratch = tmp_path / "node-scratch"
    node_scratch.mkdir()
    r = subprocess.run(["bash", "-c", f"{line} -c \"{SCRATCH_PROBE}\""], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, TMPDIR=str(node_scratch)))
    assert r.returncode == 0, r.stderr
    said, made = r.stdout.split()
    assert said == str(node_scratch) and Path(made).parent == node_scratch and Path(made).is_file()
    no_scratch = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    r = subprocess.run(["bash", "-c", f"{line} -c \"{SCRATCH_PROBE}\""], capture_output=True, text=True,
                       timeout=120, env=no_scratch)
    assert r.returncode == 0 and r.stdout.startswith("None /tmp/"), r.stdout + r.stderr  # the image's own /tmp


def _manifest_digest(image: Path) -> str:
    return "sha256:" + hashlib.sha256((image / IMAGE_MANIFEST.lstrip("/")).read_bytes()).hexdigest()


def _check_ran_in(image: Path, metrics: dict) -> None:
    """The run's Python was the image's, and the run recorded which image, built from which commit."""
    a = metrics["attrs"]
    assert a["status"] == "completed" and a["container_runtime"] == "pyramidrepro"
    assert a["python_executable"] == IMAGE_PYTHON != sys.executable
    assert a["container_image"] == str(image)
    assert a["container_digest"] == _manifest_digest(image)
    assert a["image_commit"] == git_commit() == a["git_commit"]  # baked from this checkout
    assert re.fullmatch(r"[0-9a-f]{16}", a["image_recipe"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]+Z", a["image_built"])


@pytest.mark.image
def test_a_run_started_by_charliecloud_records_the_image_it_ran_in(image, tmp_path):
    """`ch-run IMAGE -- pyramidrepro run ...`, the package not starting the container: the run still
    records the image's commit, recipe, build date and manifest digest, and which runtime ran it."""
    ch_run = shutil.which("ch-run")
    if ch_run is None:
        pytest.skip("Charliecloud's ch-run is not installed (`make test` installs charliecloud-runtime)")
    experiment = tmp_path / "smoke.yaml"  # ch-run binds the host's /tmp (and $HOME), not this checkout
    shutil.copy(SMOKE, experiment)
    cmd = [ch_run, str(image), "--", f"{Path(IMAGE_PYTHON).parent}/pyramidrepro", "run", str(experiment),
           "--out", str(tmp_path / "out"), "--no-progress", *IN_IMAGE]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # ch-run passes all on
    env["USER"] = env.get("USER") or "root"  # ch-run refuses to start without $USER
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = (tmp_path / "out").glob("smoke/*/metrics.h5")
    a = read_metrics(path)["attrs"]
    assert a["status"] == "completed" and a["container_runtime"] == "charliecloud"
    assert a["python_executable"] == IMAGE_PYTHON and a["container_image"] == ""  # ch-run names no image
    assert a["container_digest"] == _manifest_digest(image)  # the image's own manifest, read inside
    assert a["image_commit"] == git_commit() and re.fullmatch(r"[0-9a-f]{16}", a["image_recipe"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]+Z", a["image_built"])


@pytest.mark.image
def test_version_inside_the_image_says_what_it_was_built_from(image):
    box = resolve(load_config(SMOKE, [f"container.image={image}"]), "test")
    r = subprocess.run([*box.python([]), "-m", "pyramidrepro", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"Python {IMAGE_PYTHON}" in r.stdout and f"image: commit {git_commit()}" in r.stdout


@pytest.mark.image
def test_smoke_run_inside_the_image(image, tmp_path):
    """A host PYTHONPATH at a broken package and a stray variable do not reach the run; the run
    records the variables that did."""
    broken = tmp_path / "broken" / "pyramidrepro"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('the host package leaked into the image')\n")
    (broken / "__main__.py").write_text("raise SystemExit(9)\n")
    r = run_cli("run", str(SMOKE), "--out", str(tmp_path / "out"), "--container", str(image), *IN_IMAGE,
                env={"HOST_ONLY_SETTING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    box = resolve(load_config(SMOKE, [f"container.image={image}"]), "test")
    code = "import os, pyramidrepro; print(pyramidrepro.__file__, 'PYTHONPATH' in os.environ)"
    inside = subprocess.run([*box.python([tmp_path]), "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(broken.parent)))  # the image's Python: not the host's
    assert inside.returncode == 0 and inside.stdout.split() == ["/opt/pyramidrepro/src/pyramidrepro/__init__.py",
                                                                "False"], inside.stdout + inside.stderr
    (path,) = (tmp_path / "out").glob("smoke/*/metrics.h5")
    m = read_metrics(path)
    _check_ran_in(image, m)
    passed = m["attrs"]["container_env_passed"].split(",")
    assert {"PYRAMIDREPRO_CONTAINER_IMAGE", "PYRAMIDREPRO_CONTAINER_DIGEST", "HOME"} <= set(passed)
    assert not {"HOST_ONLY_SETTING", "PYTHONPATH", "VIRTUAL_ENV"} & set(passed)


@pytest.mark.image
def test_two_rank_ddp_inside_the_image(image, tmp_path):
    r = run_cli("run", str(SMOKE), "--out", str(tmp_path), "--container", str(image), "--nproc", "2", *IN_IMAGE, *DDP)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = tmp_path.glob("smoke/*/metrics.h5")
    m = read_metrics(path)
    _check_ran_in(image, m)
    assert m["attrs"]["world_size"] == 2 and m["attrs"]["backend"] == "gloo"


@pytest.mark.image
def test_submit_local_runs_in_the_image(image, tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "local", "--wait", "--out", str(tmp_path),
                "--container", str(image), *IN_IMAGE, "--set", "sweep={train.mode: [single, ddp]}", *DDP[2:],
                "--set", "cluster.tasks_per_node=2")
    assert r.returncode == 0, r.stdout + r.stderr
    found = sorted(tmp_path.glob("smoke/*/metrics.h5"))
    assert len(found) == 2
    for path in found:
        _check_ran_in(image, read_metrics(path))
    r = run_cli("report", str(tmp_path / "smoke"))
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "smoke" / "report.md").read_text()
    assert f"- container image: {image} ({_manifest_digest(image)}, built from {git_commit()})" in report


@pytest.mark.image
def test_sigterm_reaches_the_run_inside_the_image(image, tmp_path):
    """bwrap passes no signal on: `run --container` sends SIGTERM to the Python inside instead."""
    proc = subprocess.Popen([sys.executable, "-m", "pyramidrepro", "run", str(SMOKE), "--out", str(tmp_path),
                             "--container", str(image), "--no-progress", *IN_IMAGE, "--set", "train.max_steps=null",
                             "--set", "train.epochs=200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (path,) = wait_for_metrics(tmp_path)
    time.sleep(3)  # past setup, into the steps
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, output
    m = read_metrics(path)
    assert m["attrs"]["status"] == "interrupted" and m["attrs"]["python_executable"] == IMAGE_PYTHON
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the run still alive: {left}"


@pytest.mark.image
def test_reproduce_runs_every_point_in_the_image(image, tmp_path):
    out = tmp_path / "new"  # not there yet: reproduce makes it before binding it into the image
    r = run_cli("reproduce", "--experiment", str(SMOKE), "--out", str(out), "--container", str(image), *IN_IMAGE,
                "--set", "sweep={train.mode: [single, ddp]}", *DDP[2:], "--min-repeats", "1", "--max-repeats", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    found = sorted(out.glob("smoke/*/metrics.h5"))
    assert len(found) == 2
    for path in found:
        _check_ran_in(image, read_metrics(path))




@pytest.mark.slurm(nodes=2)
@pytest.mark.image
def test_a_login_node_without_torch_submits_ranks_into_the_image_on_two_nodes_and_reports(image, tmp_path):
    """The host has the package but no torch (nor torchvision, DALI): it validates, refuses to train
    here in one line, submits a single point and a 2-node DDP point through sbatch + srun with every
    rank in the image, follows them and writes the report."""
    light = hiding_env(tmp_path / "hide", {"torch", "torchvision", "nvidia.dali"})
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env=dict(os.environ, **light))
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr
    assert run_cli("validate", str(SMOKE), env=light).returncode == 0
    for command in (["run", str(SMOKE), *IN_IMAGE], ["reproduce", "--experiment", str(SMOKE)]):  # would train here
        here = run_cli(*command, "--out", str(tmp_path / "here"), env=light)
        assert here.returncode == 2 and len(here.stderr.strip().splitlines()) == 1, here.stderr
        assert "torch is not installed here" in here.stderr and not (tmp_path / "here").exists()
    info = run_cli("model-info", "--depth", "20", "--alpha", "12", env=light)
    assert info.returncode == 2 and "needs torch, which is not installed here" in info.stderr, info.stderr
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--wait", "--poll", "2", "--out", str(tmp_path),
                "--container", str(image), *IN_IMAGE, *ON_TEST_CLUSTER,
                "--set", "sweep=[{train.mode: [single]}, {train.mode: [ddp], cluster.nodes: [2]}]", *DDP[2:],
                "--set", "cluster.tasks_per_node=1", timeout=600, env=light)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = {m["attrs"]["mode"]: m for m in map(read_metrics, tmp_path.glob("smoke/*/metrics.h5"))}
    assert set(runs) == {"single", "ddp"}
    for m in runs.values():
        _check_ran_in(image, m)
        assert m["attrs"]["slurm_job_id"]
    ddp = runs["ddp"]
    assert ddp["attrs"]["world_size"] == 2 and expand_nodelist(ddp["attrs"]["slurm_nodelist"]) == ["node1", "node2"]
    assert ddp["ranks"]["hostname"] == ["node1", "node2"]
    report = run_cli("report", str(tmp_path / "smoke"), env=light)
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "smoke" / "report.md").read_text()
    for line in ("ddp+1thread", "single+1thread"):
        assert f"| {line} | 32 | torch | completed |" in table, table
    for command in (["status", str(tmp_path / "smoke")], ["follow", str(tmp_path / "smoke"), "--poll", "2"]):
        r = run_cli(*command, env=light)  # the campaign, read and followed on the login node
        said = "complete after 1 pass(es)" if command[0] == "status" else "follow: 2 runs of 2 points"
        assert r.returncode == 0 and said in r.stdout, r.stdout + r.stderr


@pytest.mark.slurm(nodes=2)
@pytest.mark.image
def test_submit_in_the_image_on_two_nodes_outlives_a_preemption_and_a_requeue_and_resumes(image, tmp_path):
    """A 2-node DDP job submitted with the image (every rank in it) is preempted (SIGTERM, then
    submitit's USR2): rank 0 checkpoints and calls `scontrol requeue`, the image's stub writes it
    down and the task's watcher on the host runs it; resumed, the job is requeued again from outside
    (`scontrol requeue`: no warning, it resumes from its last periodic checkpoint).  Steps 1..N once
    each over the three starts, in the image each time."""
    # 16 epochs (256 steps, ~20 s here): the outside requeue must land with more than KillWait (5 s) of
    # work left, or a run that goes on after SIGTERM (as under submitit it does) ends before the kill
    r = preempt_and_resume(tmp_path, ["train.epochs=16", "train.mode=ddp", "train.batch_size=32", "train.threads=1",
                                      "cluster.nodes=2", "cluster.tasks_per_node=1", f"container.image={image}"],
                           requeue_after=10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT {'status': 'completed'" in r.stdout and "requeued from outside" in r.stdout, r.stdout
    (metrics,) = tmp_path.glob("smoke/*/metrics.h5")
    m = read_metrics(metrics)
    steps = list(m["steps"]["step"])
    assert steps == list(range(1, 16 * 16 + 1))  # no gap, no duplicate step over three starts
    _check_ran_in(image, m)
    assert m["attrs"]["world_size"] == 2 and m["ranks"]["hostname"] == ["node1", "node2"]
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.err"))
    first_resume = int(re.search(r"requeued, resumes from step (\d+)", logs).group(1))
    assert int(m["attrs"]["resumed_from_step"]) > first_resume  # the third start resumed past the second's start
    assert re.search(r"relay\.sh: the run in the image asked to requeue job (\S+): scontrol requeue \1\n", logs), logs
    assert "pyramidrepro: preempted or timed out: requeued, resumes from step" in logs
    job = subprocess.run(["scontrol", "show", "job", m["attrs"]["slurm_job_id"]], capture_output=True, text=True)
    assert "Restarts=2" in job.stdout, job.stdout


@pytest.mark.slurm(nodes=2)
@pytest.mark.image
def test_a_preempted_run_in_the_image_whose_requeue_is_refused_ends_interrupted_with_its_checkpoint(image, tmp_path):
    """Submitted with --no-requeue (cluster.requeue: false, as on a site that refuses requeue), a
    preempted run checkpoints, the relayed `scontrol requeue` fails on the host, and the run ends
    ``interrupted`` (not ``failed``) with its checkpoint and the line that says what to do."""
    r = preempt_and_resume(tmp_path, ["train.epochs=16", "train.batch_size=32", "train.threads=1",
                                      "cluster.requeue=false", f"container.image={image}"])
    (metrics,) = tmp_path.glob("smoke/*/metrics.h5")
    m = read_metrics(metrics)
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.err"))
    line = re.search(r"pyramidrepro: preempted or timed out: this site refuses requeue: resubmit to resume "
                     r"\(from step (\d+)\)", logs)
    assert line, r.stdout + r.stderr + logs
    assert m["attrs"]["status"] == "interrupted" and "this site refuses requeue" in m["attrs"]["error"]
    assert "failed" not in r.stdout.split("STATUSES ", 1)[1].splitlines()[0]
    saved = torch.load(metrics.parent / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert saved["step"] == int(line.group(1)) > 0  # the checkpoint a resubmission resumes from
    assert _job(str(m["attrs"]["slurm_job_id"])).get("Restarts", "0") == "0"  # never requeued
    _check_ran_in(image, {**m, "attrs": {**m["attrs"], "status": "completed"}})  # in the image
    sharing = json.loads(m["attrs"]["node_sharing"])  # Slurm's view of the node, asked through the relay
    assert sharing["start"]["node"] == m["attrs"]["slurm_nodelist"] and sharing["start"]["cpus_own"] == 1, sharing
    assert "other_cpus" in sharing["end"], sharing


def _steps(run_dir: Path) -> list[int]:
    try:
        return list(read_metrics(run_dir / "metrics.h5", retries=1)["steps"]["step"])
    except (OSError, KeyError):
        return []


def _sbatch(template: str, tmp_path: Path, args: list[str], **env: str) -> str:
    """``sbatch TEMPLATE ARGS`` on 2 nodes x 1 task, not waited for; its job id."""
    full_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", EXP=str(SMOKE), **env)
    r = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=2",
                        "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / template),
                        *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=60, check=True)
    return r.stdout.strip().split(";")[0]


def _status(run_dir: Path) -> str:
    try:
        return read_metrics(run_dir / "metrics.h5", retries=1)["attrs"]["status"]
    except (OSError, KeyError):
        return ""


def _job(job_id: str) -> dict[str, str]:
    """The job's fields in ``scontrol show job`` ({} once Slurm has forgotten it)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)


@pytest.mark.slurm(nodes=2)
@pytest.mark.image
def test_sbatch_template_in_the_image_resumes_after_a_cancel_and_requeues_itself_at_the_time_limit(image, tmp_path):
    """slurm/ddp_multinode.sbatch with IMAGE set, every rank in the image on two nodes: cancelled, then
    resubmitted, it resumes in the same folder; warned of its time limit (the USR1 its --signal asks
    for), it checkpoints and requeues itself from the batch shell on the host (the image has no Slurm
    client) and resumes again.  Steps 1..N once each over the three starts."""
    run_dir = tmp_path / "run"
    args = [*IN_IMAGE, "--set", "train.batch_size=32", "--set", "train.max_steps=null", "--set", "train.epochs=8",
            "--set", "train.checkpoint_every_s=1"]
    first = _sbatch("ddp_multinode.sbatch", tmp_path, args, IMAGE=str(image), RUN_DIR=str(run_dir))
    wait_until(lambda: len(_steps(run_dir)) >= 20, 180, "20 steps written", poll_s=0.5)
    subprocess.run(["scancel", first], check=True)
    wait_until(lambda: _job(first).get("JobState") in (None, "CANCELLED"), 180, "the cancelled job gone", poll_s=0.5)
    wait_until(lambda: _status(run_dir) == "interrupted", 180, "the run interrupted", poll_s=0.5)
    assert _job(first).get("Restarts", "0") == "0"  # a cancel is not requeued
    done_before = len(_steps(run_dir))

    second = _sbatch("ddp_multinode.sbatch", tmp_path, args, IMAGE=str(image), RUN_DIR=str(run_dir))
    wait_until(lambda: len(_steps(run_dir)) >= done_before + 20, 180, "the resubmitted job past the first", poll_s=0.5)
    subprocess.run(["scancel", "--batch", "--signal=USR1", second], check=True)  # what --signal=B:USR1@120 sends
    wait_until(lambda: _job(second).get("JobState") == "COMPLETED", 240, "the requeued job completed", poll_s=0.5)
    assert _job(second)["Restarts"] == "1"
    m = read_metrics(run_dir / "metrics.h5")
    steps = list(m["steps"]["step"])
    assert steps == list(range(1, 8 * 16 + 1))  # no gap, no duplicate step over three starts
    _check_ran_in(image, m)
    assert int(m["attrs"]["resumed_from_step"]) > done_before
    assert m["attrs"]["world_size"] == 2 and m["ranks"]["hostname"] == ["node1", "node2"]
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert f"requeue.sh: the run ended with exit 143; requeueing job {second} to resume in {run_dir}" in logs, logs




def test_submit_refuses_an_image_whose_package_reads_another_config_schema_before_any_job(cli, tmp_path):
    """After a git pull without a rebuild, every job would fail at start: submit compares the image's
    recorded schema with this host's once, before anything is written, and says how to fix it."""
    from pyramidrepro.config.experiment import schema_digest

    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed (make tools): a folder image needs it")
    stale = fake_image(tmp_path / "stale", {"commit": "0123456789abcdef-dirty", "config_schema": "0" * 16})
    out = tmp_path / "out"
    r = cli("submit", str(SMOKE), "--dry-run", "--container", str(stale), "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"reads configs of schema {'0' * 16}" in r.stderr and f"writes schema {schema_digest()}" in r.stderr
    assert "containers/build.sh" in r.stderr and "git checkout 0123456789ab && pip install -e ." in r.stderr
    assert not out.exists()
    same = fake_image(tmp_path / "same", {"commit": git_commit(), "config_schema": schema_digest()})
    r = cli("submit", str(SMOKE), "--dry-run", "--container", str(same), "--out", str(out))
    assert r.returncode == 0, r.stderr


@pytest.mark.image
def test_an_image_of_this_checkout_records_the_schema_submit_compares(image):
    from pyramidrepro.config.experiment import schema_digest
    from pyramidrepro.machine.container import IMAGE_INFO

    info = json.loads((image / IMAGE_INFO.lstrip("/")).read_text())
    assert info["config_schema"] == schema_digest() and info["version"] == pyramidrepro.__version__
    assert info["cuda_line"] == "cu130"  # the local builder's line, the definitions' default
    installed = (image / "opt/pyramidrepro/requirements.installed").read_text()
    assert "torch==" in installed and "nvidia-dali-cuda130==" in installed


def _lock(name: str) -> dict[str, str]:
    lines = (CONTAINERS / name).read_text().splitlines()
    return dict(ln.split("==") for ln in lines if ln and not ln.startswith("#"))


def test_the_cuda_12_lock_pins_what_the_cuda_13_lock_pins_outside_cuda():
    """One image recipe, two CUDA lines: the same packages and versions except torch's CUDA build,
    DALI's CUDA package and CUDA's own libraries (the CUDA 12 ones come as torch's wheel pins them)."""
    from pyramidrepro.machine.driver import CUDA_LINES

    cu13, cu12 = _lock("requirements.lock"), _lock("requirements-cu128.lock")
    assert set(CUDA_LINES) == {"cu130", "cu128"}
    cuda_only = {k for k in cu13 if k.startswith(("nvidia-", "cuda-"))}
    assert {k: v for k, v in cu13.items() if k not in cuda_only and k not in ("torch", "torchvision")} == \
        {k: v for k, v in cu12.items() if k not in ("torch", "torchvision", "nvidia-dali-cuda120")}
    assert cu12["torch"] == cu13["torch"] + "+cu128" and cu12["torchvision"] == cu13["torchvision"] + "+cu128"
    assert cu12["nvidia-dali-cuda120"] == cu13["nvidia-dali-cuda130"]
    assert not [k for k in cu12 if k.endswith("-cu13") or k.startswith("cuda-")]
    install = (CONTAINERS / "install.sh").read_text()
    assert "requirements-cu128.lock" in install and "https://download.pytorch.org/whl/cu128" in install


def test_the_hosts_submitit_is_pinned_to_the_images():
    """Both ends pickle submitit's job objects: the login node installs the version the image runs."""
    lock = (ROOT / "containers" / "requirements.lock").read_text()
    pinned = re.search(r"^submitit==(\S+)$", lock, re.M).group(1)
    assert f'"submitit=={pinned}"' in (ROOT / "pyproject.toml").read_text()


def _fake_tools(folder: Path, fs_type: str) -> dict[str, str]:
    """A PATH with an ``apptainer`` that writes a 3 MiB 'SIF' (and logs its calls) and a ``stat`` that
    reports ``fs_type`` for file systems (``stat -f``) and defers to the real one otherwise."""
    folder.mkdir()
    (folder / "apptainer").write_text(
        '#!/bin/bash\necho "$@" >> "$(dirname "$0")/calls"\n'
        'if [ "$1" = build ]; then for a in "$@"; do out=$a; [ "${a%.sif}" != "$a" ] && break; done; '
        'head -c 3145728 /dev/urandom > "$out"; fi\n')
    real_stat = shutil.which("stat")
    (folder / "stat").write_text(
        f'#!/bin/bash\nif [ "$1" = -f ]; then echo {fs_type}; else exec {real_stat} "$@"; fi\n')
    for tool in ("apptainer", "stat"):
        (folder / tool).chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}", "PYRAMIDREPRO_BUILD_MIN_GB": "0"}


def test_build_sh_refuses_a_temporary_folder_on_a_network_file_system(tmp_path):
    env = dict(os.environ, **_fake_tools(tmp_path / "bin", "nfs"), APPTAINER_TMPDIR=str(tmp_path / "nfs-tmp"))
    r = subprocess.run(["bash", str(CONTAINERS / "build.sh"), str(tmp_path / "x.sif")], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"APPTAINER_TMPDIR={tmp_path / 'nfs-tmp'} is on nfs" in r.stderr and "local disk" in r.stderr
    assert not (tmp_path / "bin" / "calls").exists() and not (tmp_path / "x.sif").exists()  # nothing built
    small = dict(env, PYRAMIDREPRO_BUILD_MIN_GB="100000", PATH=os.environ["PATH"] + f":{tmp_path / 'bin'}")
    r = subprocess.run(["bash", str(CONTAINERS / "build.sh"), str(tmp_path / "x.sif")], capture_output=True,
                       text=True, env=small, timeout=60)
    assert r.returncode == 2 and "GB free, the build needs about 100000 GB there" in r.stderr, r.stderr


def test_a_sif_copied_after_its_digest_file_keeps_its_digest_without_hashing_it(tmp_path, monkeypatch):
    """build.sh ties the digest to the SIF's size and first and last MiB: a copy that writes the digest
    file first still reads it (2 MiB read, never the whole SIF), and a SIF of the same size and another
    content does not get it."""
    from pyramidrepro.machine import container

    env = dict(os.environ, **_fake_tools(tmp_path / "bin", "ext2/ext3"), APPTAINER_TMPDIR=str(tmp_path / "tmp"))
    built = tmp_path / "build" / "x.sif"
    built.parent.mkdir()
    r = subprocess.run(["bash", str(CONTAINERS / "build.sh"), str(built)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "build --fakeroot" in (tmp_path / "bin" / "calls").read_text()
    copy = tmp_path / "site" / "x.sif"
    copy.parent.mkdir()
    shutil.copy(built.with_name("x.sif.sha256"), copy.with_name("x.sif.sha256"))  # the digest file first ...
    time.sleep(0.01)
    shutil.copy(built, copy)  # ... then the SIF: newer than its digest file
    hashed: list[str] = []
    monkeypatch.setattr(container, "_sha256_of", lambda *a: hashed.append(a[0]) or "sha256:hashed")
    read: list[int] = []
    real_open = open

    def counting_open(path, mode="r", *a, **kw):  # noqa: ANN001, ANN202 - open's own signature
        fh = real_open(path, mode, *a, **kw)
        if str(path) == str(copy) and "b" in mode:
            raw_read = fh.read
            fh = _Counted(fh, raw_read, read)
        return fh

    monkeypatch.setattr("builtins.open", counting_open)
    expected = "sha256:" + hashlib.sha256(built.read_bytes()).hexdigest()
    assert container.image_digest(copy) == expected and hashed == []
    assert 0 < sum(read) <= 2 * container.SAMPLE_BYTES  # its first and last MiB only, of 3 MiB
    monkeypatch.setattr("builtins.open", real_open)
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF  # same size, another content in its last MiB
    copy.write_bytes(bytes(data))
    assert container.image_digest(copy) == "sha256:hashed" and hashed == [str(copy.resolve())]


class _Counted:
    """A file whose reads are counted in bytes."""

    def __init__(self, fh, raw_read, counts):  # noqa: ANN001
        self._fh, self._raw_read, self._counts = fh, raw_read, counts

    def read(self, n=-1):  # noqa: ANN001, ANN201
        data = self._raw_read(n)
        self._counts.append(len(data))
        return data

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self._fh, name)

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc):  # noqa: ANN001, ANN204
        self._fh.close()


@pytest.mark.image
def test_the_image_holds_no_pip_cache(image):
    assert not list((image / "root").glob(".cache/pip")) and not list(image.glob("home/*/.cache/pip"))
