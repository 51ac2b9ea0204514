"""The host side of submitit's requeue from inside an image (machine/relay): the scripts for real, in
real shells, with a stand-in for the host's `scontrol` and for the container command."""

import os
import signal
import subprocess
import time
from pathlib import Path

from pyramidrepro.machine import requeue_relay
from pyramidrepro.machine.clean_env import RELAY_BIN_VARIABLE, cleaned

#: the container command's stand-in: what submitit does in the image once its job has checkpointed
IN_IMAGE = 'PATH="$PYRAMIDREPRO_RELAY_BIN:$PATH"; echo started >"$1"; sleep "$2"; scontrol requeue 77_1; exit 255'


def _host(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A relay installed in a submission folder, and an environment whose `scontrol` (the host's)
    writes its arguments to ``host-scontrol.args``."""
    relay = requeue_relay.install(tmp_path / "submission" / "relay")
    bin_dir = tmp_path / "host-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/host-scontrol.args\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_PROCID="0")
    return relay, env


def test_the_request_written_in_the_image_is_run_on_the_host_after_the_run_exits(tmp_path):
    relay, env = _host(tmp_path)
    command = requeue_relay.relayed(f"sh -c '{IN_IMAGE}' run {tmp_path}/started 0", relay)
    r = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 255, r.stderr  # the run's own exit status
    assert (tmp_path / "host-scontrol.args").read_text() == "requeue 77_1\n"
    assert "asked to requeue job 77_1 (exit 255): scontrol requeue 77_1" in r.stderr
    assert not list(relay.parent.glob("request.*"))  # run once, then gone


def test_the_relay_outlives_the_preemption_signals_that_the_run_handles(tmp_path):
    """Slurm sends SIGTERM and USR2 to every process of the step: the relay (and what it starts,
    until it installs handlers) outlives them, and still runs the request afterwards."""
    relay, env = _host(tmp_path)
    started = tmp_path / "started"
    proc = subprocess.Popen(["/bin/sh", str(relay), "sh", "-c", IN_IMAGE, "run", str(started), "3"], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 255, err
    assert (tmp_path / "host-scontrol.args").read_text() == "requeue 77_1\n"


def test_the_stub_in_the_image_refuses_anything_but_a_requeue(tmp_path):
    relay, env = _host(tmp_path)
    stub = relay.parent / "scontrol"
    env["PYRAMIDREPRO_RELAY_REQUEST"] = str(tmp_path / "request")
    r = subprocess.run([str(stub), "show", "job", "77"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "only 'scontrol requeue JOB' is relayed to the host" in r.stderr
    assert not (tmp_path / "request").exists()
    without_relay = subprocess.run([str(stub), "requeue", "77"], env={**env, "PYRAMIDREPRO_RELAY_REQUEST": ""},
                                   capture_output=True, text=True)
    assert without_relay.returncode == 1  # not started by relay.sh: nobody would run the request


def test_a_request_that_is_not_a_requeue_is_not_run(tmp_path):
    relay, env = _host(tmp_path)
    forged = 'printf "cancel 77\\n" >"$PYRAMIDREPRO_RELAY_REQUEST"'
    r = subprocess.run(["/bin/sh", str(relay), "sh", "-c", forged], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "ignored a request that is not 'requeue JOB': cancel 77" in r.stderr
    assert not (tmp_path / "host-scontrol.args").exists()


def test_clean_env_puts_the_relay_first_on_the_image_path():
    path = cleaned({RELAY_BIN_VARIABLE: "/results/.submitit/x/relay", "PATH": "/host/bin"})["PATH"]
    assert path.startswith("/results/.submitit/x/relay:/opt/venv/bin:") and "/host/bin" not in path
    assert cleaned({"PATH": "/host/bin"})["PATH"].startswith("/opt/venv/bin:")
