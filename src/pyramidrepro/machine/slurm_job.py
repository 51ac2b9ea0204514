"""What a Slurm job asks about itself, from inside it: whether submitit started this process, where
its logs are, the hosts of its node list; and :func:`slurm`, a Slurm command with its failures as
:class:`SlurmQueryError` (the queue's own queries are in :mod:`..cluster.slurm_queue`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[01-03,07],login1`` into host names."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


class SlurmQueryError(RuntimeError):
    """A Slurm command was missing or failed."""


def slurm(*cmd: str, timeout_s: float = 30) -> str:
    """``cmd``'s output; :class:`SlurmQueryError` when it is missing, fails or does not answer in time."""
    if shutil.which(cmd[0]) is None:
        raise SlurmQueryError(f"{cmd[0]} not found: Slurm's client tools are needed")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SlurmQueryError(f"{' '.join(cmd)}: no answer in {timeout_s:g} s") from None
    if r.returncode != 0:
        raise SlurmQueryError(f"{' '.join(cmd)}: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


def under_submitit() -> bool:
    """Whether submitit's job runner started this process (Slurm or local executor)."""
    return os.environ.get("SUBMITIT_EXECUTOR", "") in ("slurm", "local")


def job_log_paths() -> tuple[str, str]:
    """(stdout, stderr) of the job running this process: submitit's log files of this task when
    submitit started it, else the batch job's as Slurm holds them (``scontrol``), else ('', '')."""
    if under_submitit():
        import submitit

        paths = submitit.JobEnvironment().paths
        return str(paths.stdout), str(paths.stderr)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return "", ""
    try:
        fields = dict(re.findall(r"(\S+?)=(\S*)", slurm("scontrol", "-o", "show", "job", job_id, timeout_s=5)))
    except SlurmQueryError:
        return "", ""
    return fields.get("StdOut", ""), fields.get("StdErr", "")
