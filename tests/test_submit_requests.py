"""What ``submit`` asks of a site (GPU request forms, exclusive, wckey, reservation, the rendezvous port)
and which points it submits again: dry runs in this process, and one resubmission on the Slurm test cluster."""

import hashlib
import re

import pytest

from pyramidrepro.cluster.dispatch import request_of
from pyramidrepro.cluster.slurm_queue import Node, unsatisfiable
from pyramidrepro.config.load import load_config
from pyramidrepro.config.sweep import expand_sweep
from pyramidrepro.machine.parallel import DERIVED_PORTS, port_from_job_id, rendezvous_port
from pyramidrepro.records.metrics import MetricsWriter
from pyramidrepro.records.runs import run_dir_for
from support import ONCE, ROOT, SMOKE

FIG5 = str(ROOT / "experiments" / "fig5.yaml")
#: fig5's three modes at one batch size; the GPU count each asks for is the point's own (synthetic data:
#: submit refuses a campaign whose CIFAR-10 is not there, and these look at the requests only)
MODES = ["--set", "sweep={train.mode: [single, dp, ddp], train.batch_size: [32]}",
         "--set", "cluster.gpus_per_node=null", "--set", "data.source=synthetic"]


def arrays(stdout: str) -> dict[str, str]:
    """{the train.mode of an array's points ("dp,single" for both): its sbatch lines} of a dry run."""
    return {",".join(sorted(set(re.findall(r"mode=(\w+)-", chunk)))):
            "\n".join(ln for ln in chunk.splitlines() if ln.startswith("#SBATCH"))
            for chunk in stdout.split("# --- array of ")[1:]}


def test_gres_and_exclusive_are_sent_as_given_and_no_wckey(cli, tmp_path):
    r = cli("submit", FIG5, "--dry-run", "--out", str(tmp_path), *MODES, "--set", "cluster.gres=gpu:titanxp:2",
            "--set", "cluster.exclusive=true")
    assert r.returncode == 0, r.stderr
    assert set(arrays(r.stdout)) == {"dp,single", "ddp"}  # one request for both: one array
    for lines in arrays(r.stdout).values():
        assert "#SBATCH --gres=gpu:titanxp:2" in lines and "#SBATCH --exclusive" in lines
        assert "--gpus-per-node" not in lines
    assert "--wckey" not in r.stdout
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_each_point_asks_for_the_gpus_it_uses(cli, tmp_path):
    plain = arrays(cli("submit", FIG5, "--dry-run", "--out", str(tmp_path), *MODES).stdout)
    assert {m: re.findall(r"--gpus-per-node=(\d+)", lines) for m, lines in plain.items()} == {
        "single": ["1"], "dp": ["2"], "ddp": ["2"]}
    assert "--ntasks-per-node=2" in plain["ddp"] and "--ntasks-per-node=1" in plain["dp"]
    typed = arrays(cli("submit", FIG5, "--dry-run", "--out", str(tmp_path), *MODES,
                       "--set", "cluster.gpu_type=titanxp").stdout)
    assert {m: re.findall(r"--gres=(\S+)", lines) for m, lines in typed.items()} == {
        "single": ["gpu:titanxp:1"], "dp": ["gpu:titanxp:2"], "ddp": ["gpu:titanxp:2"]}


def test_site_keys_are_shown_where_set(cli, tmp_path):
    r = cli("submit", str(SMOKE), *ONCE, "--dry-run", "--out", str(tmp_path), "--cluster", "slurm",
            "--set", "cluster.reservation=maint_0401", "--set", "cluster.qos=high", "--set", "cluster.constraint=v100",
            "--set", "cluster.wckey=proj7", "--set", "cluster.master_port=29400")
    assert r.returncode == 0, r.stderr
    for line in ("#SBATCH --reservation=maint_0401", "#SBATCH --qos=high", "#SBATCH --constraint=v100",
                 "#SBATCH --wckey=proj7", "export MASTER_PORT=29400"):
        assert line in r.stdout
    assert "--exclusive" not in r.stdout and "--gres" not in r.stdout and "--gpus-per-node" not in r.stdout


def test_dp_and_the_preflight_read_the_gres(cli, tmp_path):
    dp = ["submit", str(SMOKE), *ONCE,
          "--dry-run", "--out", str(tmp_path), "--cluster", "slurm", "--set", "train.mode=dp"]
    assert cli(*dp, "--set", "cluster.gres=gpu:a100:2").returncode == 0
    legacy = cli(*dp, "--set", "cluster.gpus_per_node=0", "--set", "cluster.additional_parameters={gres: gpu:2}")
    assert legacy.returncode == 0, legacy.stderr  # the hand-written form of before still counts
    assert "#SBATCH --gres=gpu:2" in legacy.stdout and "--gpus-per-node" not in legacy.stdout
    shard = cli(*dp, "--set", "cluster.gres=shard:2")
    assert shard.returncode == 2 and shard.stderr.count("\n") == 1 and "cluster.gres" in shard.stderr
    req = request_of(load_config(SMOKE, ["cluster.gres=gpu:titanxp:2", "cluster.executor=slurm"]))
    assert req.gpus_per_node == 2
    why = unsatisfiable(req, [Node("n1", 8, 1, 64000, "idle", ("gpu",))])
    assert why and why.startswith("needs 2 CPUs, 2 GPU(s)")
    assert "(--gres=gpu:titanxp:2)" in req.describe()


def test_rendezvous_port_is_below_the_ephemeral_range_unless_set():
    low, high = DERIVED_PORTS
    assert high < 32768 and {port_from_job_id(j) for j in range(0, 200_000, 7)} <= set(range(low, high + 1))
    assert rendezvous_port(None, {"SLURM_JOB_ID": "4242"}) == port_from_job_id(4242)
    assert rendezvous_port(None, {"MASTER_PORT": "23456", "SLURM_JOB_ID": "1"}) == 23456
    assert rendezvous_port(29400, {"MASTER_PORT": "23456"}) == 29400
    assert rendezvous_port(None, {}, job_id="77") == port_from_job_id(77)  # the local executor: no Slurm job id


def _done_run(folder, status="completed"):
    folder.mkdir(parents=True)
    w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
    w.close(status)


def test_submit_skips_done_points_unless_told(cli, tmp_path):
    sweep = ["--set", "sweep={train.batch_size: [16, 32]}"]
    (done_id, _), (todo_id, _) = expand_sweep(load_config(SMOKE, sweep[1:]), str(SMOKE))
    _done_run(run_dir_for(tmp_path, "smoke", done_id), "oom")
    args = ["submit", str(SMOKE), *ONCE, "--dry-run", "--out", str(tmp_path), "--cluster", "slurm", *sweep]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"skip {done_id}: done (oom)" in r.stdout and f"/{done_id}\n" not in r.stdout
    assert f"/{todo_id}\n" in r.stdout and "1 point(s) of smoke" in r.stdout
    again = cli(*args, "--rerun-done")
    assert "skip " not in again.stdout and f"/{done_id}\n" in again.stdout and "2 point(s)" in again.stdout
    _done_run(run_dir_for(tmp_path, "smoke", todo_id))
    assert "nothing to submit" in cli(*args).stdout


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()




@pytest.mark.slurm
def test_a_resubmission_on_slurm_reruns_only_the_failed_point(cli, tmp_path):
    # 3 points train; the 4th reads a CIFAR-10 archive that is not one: it passes every check (the file is
    # there), then fails in its job on the archive's checksum
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    sweep = f"sweep=[{{train.batch_size: [16, 32, 48]}}, {{data.source: [cifar10], data.root: [{bad}]}}]"
    args = ["submit", str(SMOKE), *ONCE, "--cluster", "slurm", "--out", str(tmp_path), "--wait", "--poll", "1",
            "--set", sweep, "--set", "model.depth=8", "--set", "model.alpha=4", "--set", "cluster.cpus_per_task=1"]
    first = cli(*args)
    assert first.returncode == 1, first.stdout + first.stderr
    done = {p.parent.name: _sha256(p) for p in tmp_path.glob("smoke/*/metrics.h5")}
    assert len(done) == 3
    scripts = [p.read_text() for p in (tmp_path / ".submitit").rglob("*.sh")]
    assert scripts and not any("--wckey" in text for text in scripts)  # what sbatch got: no wckey
    again = cli(*args)
    skipped = sorted(ln.split()[1].rstrip(":") for ln in again.stdout.splitlines()
                     if ln.endswith("already done, skipped"))
    assert skipped == sorted(done), again.stdout
    assert again.stdout.count("submitted ") == 1 and "cifar10" in again.stdout and again.returncode == 1
    assert {p.parent.name: _sha256(p) for p in tmp_path.glob("smoke/*/metrics.h5")} == done
    assert not list(tmp_path.glob("smoke/*/metrics.1.h5"))


def test_jobs_ask_for_requeue_unless_the_experiment_says_otherwise(cli, tmp_path):
    """Sites with JobRequeue=0 refuse submitit's requeue of a job that did not ask for it."""
    args = ["submit", str(SMOKE), "--dry-run", "--out", str(tmp_path), "--cluster", "slurm"]
    assert "#SBATCH --requeue" in cli(*args).stdout
    off = cli(*args, "--set", "cluster.requeue=false").stdout
    assert "#SBATCH --no-requeue" in off and "#SBATCH --requeue" not in off
    mine = cli(*args, "--set", "cluster.additional_parameters={no-requeue: true}").stdout
    assert "#SBATCH --no-requeue" in mine and "#SBATCH --requeue" not in mine
