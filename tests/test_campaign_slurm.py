"""A campaign on the Slurm test cluster: repeats a pass apart, one job array per pass, a submitter killed
mid-campaign and taken over by ``status``, ``submit`` and ``follow`` without a duplicate job."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pyramidrepro.cluster.campaign_state import load_state, point_of
from support import ON_TEST_CLUSTER, ROOT, SMOKE, TINY, call_main, run_cli, wait_until
from support.hide import hiding_env

pytestmark = pytest.mark.slurm

NAME = "campaign"
CAMPAIGN = [*TINY, *ON_TEST_CLUSTER, "--set", f"name={NAME}", "--set", "sweep={train.batch_size: [16, 32, 48]}"]
REPEATS = ["--min-repeats", "2", "--max-repeats", "3", "--ci-target", "2"]


def _wrappers(folder, hold_flag):
    """sbatch and squeue wrappers that log each call (sbatch with the array it submits) and run the real
    tool; sbatch submits held jobs while ``hold_flag`` exists."""
    folder.mkdir()
    log = folder / "calls.log"
    for tool in ("sbatch", "squeue"):
        real = subprocess.run(["which", tool], capture_output=True, text=True, check=True).stdout.strip()
        if tool == "sbatch":
            body = (f'for last; do :; done\narray=$(grep -o -- "--array=[^ ]*" "$last" | head -n 1)\n'
                    f'echo "sbatch ${{array:-single}}" >> {log}\n'
                    f'if [ -e {hold_flag} ]; then exec {real} --hold "$@"; fi\nexec {real} "$@"\n')
        else:
            body = f'echo "squeue $(hostname)" >> {log}\nexec {real} "$@"\n'
        (folder / tool).write_text("#!/bin/sh\n" + body)
        (folder / tool).chmod(0o755)
    return log


def _calls(log, tool):
    host = os.uname().nodename
    lines = log.read_text().splitlines() if log.exists() else []
    return [ln.split()[1] for ln in lines if ln.startswith(tool + " ") and (tool != "squeue" or ln.split()[1] == host)]


def _elements(array_arg):
    """How many jobs one sbatch call submitted: ``--array=0-2%16`` is three."""
    if array_arg == "single":
        return 1
    spec = array_arg.split("=", 1)[1].split("%")[0]
    return sum(int(b) - int(a) + 1 if "-" in part else 1
               for part in spec.split(",") for a, _, b in [part.partition("-")])


def _cancel_ours():
    subprocess.run(["scancel", "-n", NAME], capture_output=True)


def test_a_campaign_survives_its_submitter_resumes_without_duplicates_and_repeats_each_point(tmp_path):
    hold = tmp_path / "hold"
    log = _wrappers(tmp_path / "bin", hold)
    env = {"PATH": f"{log.parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    out, folder = tmp_path / "out", tmp_path / "out" / NAME
    submit = ["submit", str(SMOKE), "--cluster", "slurm", "--out", str(out), *REPEATS, *CAMPAIGN]
    hold.touch()  # the first pass queues held: it waits while the submitter is killed and taken over
    proc = subprocess.Popen([sys.executable, "-m", "pyramidrepro", *submit, "--wait", "--poll", "1"], cwd=ROOT,
                            env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (s := load_state(folder)) is not None and s.jobs_submitted() == 3
                  and (folder / ".lock").exists(), 60, "3 jobs in the state")
        second = run_cli("follow", str(folder), env=env, timeout=60)  # one driver at a time
        assert second.returncode == 2 and "another process drives this campaign" in second.stderr, second.stderr
        driven = call_main("status", str(folder), env=env).stdout.splitlines()[-1]
        assert driven == "a running submit --wait or follow drives it: waits for 3 job(s) of pass 1 (3 pending)"
        proc.kill()  # SIGKILL: nothing of the submitter's is left to clean up, its lock goes with it
        proc.wait(timeout=10)
        state = load_state(folder)
        job_of = {run_id: jobs[-1].job_id for run_id, jobs in state.submissions.items()}

        # status: every point's row, one squeue call (in this process: the figure is the work, not Python's start)
        before = len(_calls(log, "squeue"))
        t0 = time.monotonic()
        status = call_main("status", str(folder), env=env)
        took = time.monotonic() - t0
        assert status.returncode == 0, status.stderr
        print(f"status of 3 held points: {took:.2f} s in process\n{status.stdout}")
        assert took < 2 and len(_calls(log, "squeue")) == before + 1
        for run_id, job_id in job_of.items():
            row = next(ln for ln in status.stdout.splitlines() if ln.startswith(f"| {run_id} |"))
            assert "| 0/2 |" in row and f"job {job_id} PENDING (JobHeldUser)" in row, row
        assert status.stdout.splitlines()[-1] == "waits for 3 job(s) of pass 1 (3 pending)"
        as_json = json.loads(call_main("status", str(folder), "--json", env=env).stdout)
        assert [p["done"] for p in as_json["points"]] == [0, 0, 0]

        # submit again while queued: nothing submitted, each point says which job it waits on
        sbatch_before = len(_calls(log, "sbatch"))
        again = run_cli(*submit, env=env, timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(_calls(log, "sbatch")) == sbatch_before
        for run_id, job_id in job_of.items():
            assert f"{run_id}: waits on job {job_id} (PENDING: JobHeldUser)" in again.stdout, again.stdout

        # one queued job cancelled: the next follow resubmits that run only, then runs the campaign to its end
        victim, *others = sorted(job_of)
        subprocess.run(["scancel", job_of[victim]], check=True)
        hold.unlink()
        subprocess.run(["scontrol", "release", *(job_of[r] for r in others)], check=True)
        # from another folder: follow works where the campaign was submitted from
        follow = run_cli("follow", str(folder), "--poll", "1", env=env, timeout=300, cwd=tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        _cancel_ours()
    print(follow.stdout)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert re.findall(r"^resubmit (\S+):", follow.stdout, re.M) == [victim]
    assert f"follow: working in {ROOT}, where the campaign was submitted from" in follow.stdout

    runs = sorted(p.parent.name for p in folder.glob("*/metrics.h5"))
    per_point = {p: sum(point_of(r) == p for r in runs) for p in job_of}
    assert all(2 <= n <= 3 for n in per_point.values()), per_point
    state = load_state(folder)
    arrays = _calls(log, "sbatch")
    assert len(arrays) == len(state.passes) + 1  # one array per pass, and the victim's own
    assert sum(map(_elements, arrays)) == state.jobs_submitted() == len(runs) + 1  # no duplicate job
    assert {r: len(j) for r, j in state.submissions.items() if len(j) > 1} == {victim: 2}
    report = (folder / "report.md").read_text()
    assert f"complete after {len(state.passes)} pass(es)" in report and "±" in report

    # a login node without torch reads and follows the finished campaign
    light = dict(hiding_env(tmp_path / "hide", {"torch", "torchvision", "nvidia.dali"}), **env)
    for command in (["status", str(folder)], ["follow", str(folder), "--poll", "1"]):
        r = run_cli(*command, env=light, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert f"complete after {len(state.passes)} pass(es)" in r.stdout or "runs of 3 points" in r.stdout


def test_a_purged_job_asked_about_alone_is_not_listed_rather_than_an_error():
    """squeue -j with one job id fails once the controller has purged that job (MinJobAge after its
    end): a campaign whose last pass had one job would take it for "no answer" for ever."""
    from pyramidrepro.cluster.slurm_queue import queue_states

    assert queue_states(["999999"]) == {}
    assert queue_states(["999999", "999998"]) == {}
