"""The host side of submitit's requeue from inside an image (cluster/relay.sh, machine/relay/scontrol):
the scripts for real, in real shells, with a stand-in for the node's `scontrol` and for the container command."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pyramidrepro.cluster import requeue_relay
from pyramidrepro.machine.clean_env import RELAY_BIN, RELAY_REQUEST_VARIABLE, cleaned
from support import wait_until

STUB = requeue_relay.STUB_DIR / "scontrol"
#: the container command's stand-in: submitit in the image, once its job has checkpointed
IN_IMAGE = f'PATH="{requeue_relay.STUB_DIR}:$PATH"; scontrol requeue 77_1; echo "stub: $?" >"$1"'


def _node(tmp_path: Path, host_rc: int = 0, host_s: float = 0) -> tuple[Path, dict[str, str]]:
    """relay.sh installed in a submission folder, and an environment whose `scontrol` (the node's)
    writes its arguments to ``node-scontrol.args`` and exits ``host_rc`` after ``host_s`` seconds."""
    relay = requeue_relay.install(tmp_path / "submission" / "relay")
    bin_dir = tmp_path / "node-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/node-scontrol.args\nsleep {host_s}\n'
                                      f'exit {host_rc}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_PROCID="0")
    return relay, env


def test_a_requeue_asked_in_the_image_runs_on_the_node_at_once_and_its_status_comes_back(tmp_path):
    relay, env = _node(tmp_path)
    command = requeue_relay.relayed(f"sh -c '{IN_IMAGE}; exit 255' run {tmp_path}/said", relay, outlive_signals=False)
    r = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 255, r.stderr  # the run's own exit status
    assert (tmp_path / "said").read_text() == "stub: 0\n"  # answered while the run was still there
    assert (tmp_path / "node-scontrol.args").read_text() == "requeue 77_1\n"
    assert "the run in the image asked to requeue job 77_1: scontrol requeue 77_1" in r.stderr
    assert not list(relay.parent.glob("request.*"))


def test_a_requeue_the_node_refuses_fails_in_the_image_too(tmp_path):
    relay, env = _node(tmp_path, host_rc=1)  # e.g. a site with JobRequeue=0
    r = subprocess.run(["/bin/sh", str(relay), "sh", "-c", IN_IMAGE, "run", str(tmp_path / "said")], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and (tmp_path / "said").read_text() == "stub: 1\n"  # submitit would raise


def test_the_stub_outlives_the_requeues_own_sigterm_and_still_answers(tmp_path):
    """Where Slurm signals every process of the step, the kill that the requeue starts reaches the
    stub while it waits for the answer: submitit must still hear that the requeue worked."""
    relay, env = _node(tmp_path, host_s=1)
    in_image = (f'PATH="{requeue_relay.STUB_DIR}:$PATH"; scontrol requeue 77_1 & stub=$!; sleep 0.5; '
                'kill -TERM $stub; wait $stub; echo "stub: $?" >"$1"')
    r = subprocess.run(["/bin/sh", str(relay), "sh", "-c", in_image, "run", str(tmp_path / "said")], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and (tmp_path / "said").read_text() == "stub: 0\n", r.stderr


def _until(path: Path, proc: subprocess.Popen) -> None:
    def seen() -> bool:
        assert proc.poll() is None, f"the relay ended (exit {proc.returncode}) before {path} appeared"
        return path.exists()

    wait_until(seen, 20, str(path), poll_s=0.05)


def test_signals_to_the_task_reach_the_container_command_itself(tmp_path):
    """Where Slurm signals only the task's own process (proctrack/cgroup), that process is the
    runtime's (Apptainer forwards to the run), not a shell that would keep the signal."""
    relay, env = _node(tmp_path)
    script = 'trap "echo USR2 >>$1" USR2; echo up >"$1.up"; i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done'
    proc = subprocess.Popen(["/bin/sh", str(relay), "sh", "-c", script, "run", str(tmp_path / "got")], env=env)
    _until(tmp_path / "got.up", proc)
    proc.send_signal(signal.SIGUSR2)  # the task's process only, not its group
    _until(tmp_path / "got", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM  # nothing in between kept it
    assert (tmp_path / "got").read_text() == "USR2\n"


def test_outlive_signals_keeps_a_runtime_that_forwards_nothing_alive(tmp_path):
    """bubblewrap's own process would die of SIGTERM or USR2 and leave the run orphaned; under
    --outlive-signals it ignores both (where Slurm signals every process, the run gets its own)."""
    relay, env = _node(tmp_path)
    script = 'echo up >"$1.up"; sleep 1; echo done >"$1"'
    command = requeue_relay.relayed(f"sh -c '{script}' run {tmp_path}/ran", relay, outlive_signals=True)
    assert "--outlive-signals" in command
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], env=env)
    _until(tmp_path / "ran.up", proc)
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0 and (tmp_path / "ran").read_text() == "done\n"


@pytest.mark.slow
def test_the_stub_refuses_anything_but_a_requeue_and_a_forged_request_is_not_run(tmp_path):
    relay, env = _node(tmp_path)
    assert os.access(STUB, os.X_OK)  # the image runs its own copy from the PATH
    shown = subprocess.run([str(STUB), "show", "job", "77"], env={**env, RELAY_REQUEST_VARIABLE: "x"},
                           capture_output=True, text=True)
    assert shown.returncode == 1 and "only 'scontrol requeue JOB' and 'scontrol -o show node NAME'" in shown.stderr
    outside = subprocess.run([str(STUB), "requeue", "77"], env=env, capture_output=True, text=True)
    assert outside.returncode == 1  # not started by relay.sh: nobody would answer
    forged = 'printf "cancel 77\\n" >"$PYRAMIDREPRO_RELAY_REQUEST"; sleep 3; cat "$PYRAMIDREPRO_RELAY_REQUEST.rc"'
    r = subprocess.run(["/bin/sh", str(relay), "sh", "-c", forged], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.stdout == "2\n" and "refused a request that is not 'requeue JOB' or 'node NAME': cancel 77" in r.stderr
    assert not (tmp_path / "node-scontrol.args").exists()
    forged = 'printf "node a;b\n" >"$PYRAMIDREPRO_RELAY_REQUEST"; sleep 3; cat "$PYRAMIDREPRO_RELAY_REQUEST.rc"'
    r = subprocess.run(["/bin/sh", str(relay), "sh", "-c", forged], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.stdout == "2\n" and "refused a node name with other characters: a;b" in r.stderr
    assert not (tmp_path / "node-scontrol.args").exists()


def test_clean_env_puts_the_images_stub_first_only_under_the_relay():
    path = cleaned({RELAY_REQUEST_VARIABLE: "/results/.submitit/x/relay/request.7.0", "PATH": "/host/bin"})["PATH"]
    assert path.startswith(f"{RELAY_BIN}:/opt/venv/bin:") and "/host/bin" not in path
    assert Path(RELAY_BIN) == requeue_relay.STUB_DIR  # clean_env's own folder: in the image, the image's copy
    assert cleaned({"PATH": "/host/bin"})["PATH"].startswith("/opt/venv/bin:")
