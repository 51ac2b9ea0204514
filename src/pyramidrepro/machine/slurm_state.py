"""What Slurm says about its nodes and about a job: can a request ever start, and where a job failed.

* :func:`node_sizes` and :func:`unsatisfiable` are the pre-flight: before submitting, the request
  (nodes x tasks per node x CPUs per task, GPUs and memory per node) is compared with the nodes
  ``sinfo`` lists, and what no node can hold is refused.
* :func:`queue_states` and :func:`never_starts` let ``submit --wait`` notice a job that sits
  PENDING for a reason that does not pass with time (``PartitionConfig``, ``BadConstraints``,
  per-job QOS/association limits, required nodes that are down or drained, resources beyond every
  node) instead of waiting forever.
* :func:`failed_tasks` reads srun's own lines (``srun: error: node3: task 2: Killed``) from a
  job's error log, to name the node and task that ended a multi-node job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

#: pending reasons that never clear by waiting: the request breaks a partition, constraint or
#: per-job limit (Slurm's job_reason codes; the per-user "...PerUser" and running-jobs limits do clear)
NEVER_REASONS = frozenset({
    "PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount",
    "InvalidQOS", "AccountNotAllowed", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit", "QOSMaxMemoryPerJob", "QOSMinCpuNotSatisfied", "QOSMinGRES",
    "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit", "AssocMaxWallDurationPerJobLimit",
    "AssocMaxGRESPerJob", "AssocMaxMemPerJob", "MaxCpuPerAccount", "JobHeldAdmin",
})
#: node states (sinfo %t, without the '*' "not responding" flag) from which no node comes back by itself
GONE_STATES = ("down", "drain", "drng", "fail", "failg", "maint", "inval", "futr")


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


def _slurm(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmQueryError(f"{cmd[0]} not found: Slurm's client tools are needed")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise SlurmQueryError(f"{' '.join(cmd)}: no answer in 30 s") from None
    if r.returncode != 0:
        raise SlurmQueryError(f"{' '.join(cmd)}: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


@dataclass(frozen=True)
class Request:
    """What a job asks of the cluster, per node."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int = 0
    mem_mb: int = 0
    partition: str = ""

    def describe(self) -> str:
        parts = [f"{self.nodes} node(s) x {self.tasks_per_node} task(s) x {self.cpus_per_task} CPU(s)"]
        if self.gpus_per_node:
            parts.append(f"{self.gpus_per_node} GPU(s) per node")
        if self.mem_mb:
            parts.append(f"{self.mem_mb} MB per node")
        if self.partition:
            parts.append(f"partition {self.partition}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Node:
    """One node as sinfo lists it."""

    name: str
    cpus: int
    gpus: int
    mem_mb: int
    state: str
    partitions: tuple[str, ...]


def _gpu_count(gres: str) -> int:
    """``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:2,shard:8`` -> GPUs; ``(null)`` -> 0."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) > 1 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def node_sizes() -> list[Node]:
    """Every node with its CPUs, GPUs, memory, state and partitions (``sinfo -N``)."""
    nodes: dict[str, Node] = {}
    for line in _slurm("sinfo", "-h", "-N", "-o", "%N|%c|%G|%m|%t|%R").splitlines():
        name, cpus, gres, mem, state, part = line.split("|")
        old = nodes.get(name)
        parts = (*old.partitions, part) if old else (part,)
        nodes[name] = Node(name, int(cpus), _gpu_count(gres), int(mem.rstrip("+") or 0), state.rstrip("*~#!%$@^-"),
                           parts)
    return list(nodes.values())


def unsatisfiable(req: Request, nodes: list[Node]) -> str | None:
    """Why no set of ``nodes`` can ever hold ``req`` (None when enough nodes are big enough)."""
    pool = [n for n in nodes if not req.partition or req.partition in n.partitions]
    if not pool:
        return f"no node is in partition {req.partition!r}"
    cpus = req.tasks_per_node * req.cpus_per_task
    fits = [n for n in pool if n.cpus >= cpus and n.gpus >= req.gpus_per_node and n.mem_mb >= req.mem_mb]
    if len(fits) >= req.nodes:
        return None
    biggest = max(pool, key=lambda n: (n.cpus, n.gpus, n.mem_mb))
    size = f"{biggest.cpus} CPUs, {biggest.gpus} GPUs, {biggest.mem_mb} MB"
    if not fits:
        return (f"needs {cpus} CPUs, {req.gpus_per_node} GPU(s) and {req.mem_mb} MB on one node; "
                f"the largest node has {size}")
    return f"needs {req.nodes} node(s) of that size; the cluster has {len(fits)} of {len(pool)}"


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} for the jobs the controller still holds, ended ones included
    (array elements as ``ID_TASK``); one squeue call, fresher than sacct's accounting."""
    if not job_ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for line in _slurm("squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r").splitlines():
        jid, state, reason = line.split("|", 2)
        out[jid] = (state, reason)
    return out


#: memory suffixes scontrol prints, in MB
_MB = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def job_request(job_id: str) -> Request:
    """The request of a queued job, as the controller holds it (``scontrol show job``)."""
    return parse_job_request(_slurm("scontrol", "-o", "show", "job", job_id))


def parse_job_request(text: str) -> Request:
    """A job's request from ``scontrol -o show job`` output."""
    fields = dict(re.findall(r"(\S+?)=(\S*)", text))
    nodes = int(fields.get("NumNodes", "1").split("-")[0] or 1)
    tasks = int(fields.get("NumTasks", "1") or 1)
    gres = fields.get("TresPerNode", "")
    mem = re.fullmatch(r"([\d.]+)([MGT]?)", fields.get("MinMemoryNode", "0"))
    mem_mb = int(float(mem.group(1)) * _MB[mem.group(2)]) if mem else 0
    return Request(nodes=nodes, tasks_per_node=max(1, tasks // nodes),
                   cpus_per_task=int(fields.get("CPUs/Task", "1") or 1),
                   gpus_per_node=_gpu_count(gres.replace("gres:", "").replace("gres/", "")),
                   mem_mb=mem_mb, partition=fields.get("Partition", ""))


def never_starts(reason: str, req: Request, nodes: list[Node]) -> str | None:
    """Why a PENDING job with ``reason`` will never start, or None if waiting may help."""
    code = reason.split(",")[0].strip()
    if code in NEVER_REASONS:
        return code
    if code == "ReqNodeNotAvail":
        wanted = set(re.findall(r"UnavailableNodes:(\S+)", reason))
        listed = {n.name: n.state for n in nodes}
        names = [n for w in wanted for n in expand_nodelist(w)]
        if names and all(listed.get(n, "down").startswith(GONE_STATES) for n in names):
            return f"{reason} (down or drained, none coming back)"
        return None
    if code == "Resources":
        why = unsatisfiable(req, [n for n in nodes if not n.state.startswith(GONE_STATES)])
        return f"Resources: {why}" if why else None
    return None


_SRUN_ERROR = re.compile(r"^srun: error: (\S+): tasks? ([\d,\-]+): (.+)$", re.M)


def failed_tasks(log_text: str) -> list[tuple[str, str, str]]:
    """(node, task(s), what) from srun's error lines in a job's log."""
    return [(m.group(1), m.group(2), m.group(3).strip()) for m in _SRUN_ERROR.finditer(log_text)]
