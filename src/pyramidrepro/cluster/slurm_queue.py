"""What Slurm says about its nodes and about a job: can a request ever start, and where a job failed.

* :func:`node_sizes` and :func:`unsatisfiable` are the pre-flight: before submitting, the request
  (nodes x tasks per node x CPUs per task, GPUs and memory per node) is compared with the nodes
  ``sinfo`` lists, and what no node can hold is refused.
* :func:`queue_states` and :func:`never_starts` let ``submit --wait`` notice a job that sits
  PENDING for a reason that does not pass with time (``PartitionConfig``, ``BadConstraints``,
  per-job QOS/association limits, resources beyond every node of any state) instead of waiting
  forever; :func:`waits_for` says what any other reason waits for (nodes an admin drained or
  reserved come back, so those jobs are waited on).
* :func:`failed_tasks` reads srun's own lines (``srun: error: node3: task 2: Killed``) from a
  job's error log, to name the node and task that ended a multi-node job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..machine.slurm_job import SlurmQueryError, expand_nodelist, slurm

#: pending reasons that never clear by waiting: the request breaks a partition, constraint or
#: per-job limit, or depends on a job that failed (Slurm's job_reason codes; the per-user,
#: group and running-jobs limits clear as other jobs end, and a hold is released by a person)
NEVER_REASONS = frozenset({
    "PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount",
    "InvalidQOS", "AccountNotAllowed", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit", "QOSMaxMemoryPerJob", "QOSMinCpuNotSatisfied", "QOSMinGRES",
    "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit", "AssocMaxWallDurationPerJobLimit",
    "AssocMaxGRESPerJob", "AssocMaxMemPerJob", "DependencyNeverSatisfied",
})
#: a pending reason that is final only when no node of the cluster, in any state, is big enough
SIZE_REASONS = frozenset({"Resources"})
#: pending reasons whose report names the state of the nodes they mention
NODE_REASONS = frozenset({"ReqNodeNotAvail", "Resources"})
#: what a job pending for a reason that clears waits for (by reason code; others: :func:`waits_for`)
WAITS_FOR = {
    "Priority": "jobs of higher priority to start first",
    "Resources": "nodes to free up",
    "ReqNodeNotAvail": "its nodes to come back (an admin returns a drained, down or maintenance-reserved node)",
    "Reservation": "its reservation to start",
    "JobHeldAdmin": "an admin to release it (scontrol release)",
    "JobHeldUser": "its owner to release it (scontrol release)",
    "Dependency": "the jobs it depends on",
    "BeginTime": "its begin time",
    "PartitionDown": "its partition to be set up again",
    "PartitionInactive": "its partition to be set up again",
    "NodeDown": "a node to come back",
}
#: reason code prefixes of limits shared with other jobs: they clear as those jobs end
SHARED_LIMITS = ("QOSGrp", "AssocGrp", "QOSMax", "AssocMax", "MaxJob", "MaxCpu", "MaxNode", "MaxMem")


@dataclass(frozen=True)
class Request:
    """What a job asks of the cluster, per node."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int = 0
    mem_mb: int = 0
    partition: str = ""
    #: the GPUs as asked with --gres (``gpu:a100:2``), when they are; ``gpus_per_node`` is their count
    gres: str = ""

    def describe(self) -> str:
        parts = [f"{self.nodes} node(s) x {self.tasks_per_node} task(s) x {self.cpus_per_task} CPU(s)"]
        if self.gpus_per_node:
            parts.append(f"{self.gpus_per_node} GPU(s) per node" + (f" (--gres={self.gres})" if self.gres else ""))
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
    for line in slurm("sinfo", "-h", "-N", "-o", "%N|%c|%G|%m|%t|%R").splitlines():
        name, cpus, gres, mem, state, part = line.split("|")
        old = nodes.get(name)
        parts = (*old.partitions, part) if old else (part,)
        nodes[name] = Node(name, int(cpus), _gpu_count(gres), int(mem.rstrip("+") or 0), state.rstrip("*~#!%$@^-"),
                           parts)
    return list(nodes.values())


def unsatisfiable(req: Request, nodes: list[Node]) -> str | None:
    """Why no set of ``nodes`` can ever hold ``req`` (None when enough nodes are big enough); a request
    for several partitions (``gpu,gpu-long``) can run in any one of them."""
    partitions = [p for p in req.partition.split(",") if p] or [""]
    whys = [_unsatisfiable_in(req, nodes, p) for p in partitions]
    return None if None in whys else "; ".join(w for w in whys if w)


def _unsatisfiable_in(req: Request, nodes: list[Node], partition: str) -> str | None:
    """Why the nodes of ``partition`` (all nodes: '') can never hold ``req``."""
    pool = [n for n in nodes if not partition or partition in n.partitions]
    if not pool:
        return f"no node is in partition {partition!r}"
    cpus = req.tasks_per_node * req.cpus_per_task
    fits = [n for n in pool if n.cpus >= cpus and n.gpus >= req.gpus_per_node and n.mem_mb >= req.mem_mb]
    if len(fits) >= req.nodes:
        return None
    biggest = max(pool, key=lambda n: (n.cpus, n.gpus, n.mem_mb))
    size = f"{biggest.cpus} CPUs, {biggest.gpus} GPUs, {biggest.mem_mb} MB"
    if not fits:
        return (f"needs {cpus} CPUs, {req.gpus_per_node} GPU(s) and {req.mem_mb} MB on one node; "
                f"the largest node{f' of {partition}' if partition else ''} has {size}")
    return f"needs {req.nodes} node(s) of that size; {partition or 'the cluster'} has {len(fits)} of {len(pool)}"


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} for the jobs the controller still holds, ended ones included
    (array elements as ``ID_TASK``); one squeue call, fresher than sacct's accounting."""
    if not job_ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    try:
        listing = slurm("squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r")
    except SlurmQueryError as exc:
        # asked for one job only, squeue loads that job alone and fails once the controller has purged it
        # (MinJobAge after its end); among several, a purged one is just not listed
        if len(job_ids) == 1 and "Invalid job id specified" in str(exc):
            return {}
        raise
    for line in listing.splitlines():
        jid, state, reason = line.split("|", 2)
        out[jid] = (state, reason)
    return out


#: memory suffixes scontrol prints, in MB
_MB = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def job_request(job_id: str) -> Request:
    """The request of a queued job, as the controller holds it (``scontrol show job``)."""
    return parse_job_request(slurm("scontrol", "-o", "show", "job", job_id))


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


def reason_code(reason: str) -> str:
    """``ReqNodeNotAvail`` of ``ReqNodeNotAvail, UnavailableNodes:node3``."""
    return reason.split(",")[0].strip()


def never_starts(reason: str, req: Request, nodes: list[Node]) -> str | None:
    """Why a PENDING job with ``reason`` will never start, or None if waiting may help.

    Only what no person's action on the nodes changes is final: a reason of :data:`NEVER_REASONS`, or
    ``Resources`` for a request that no listed node holds in any state (a drained or down node comes
    back when an admin returns it).  Without ``nodes`` (sinfo not read) ``Resources`` is waited on."""
    code = reason_code(reason)
    if code in NEVER_REASONS:
        return code
    if code in SIZE_REASONS and nodes:
        why = unsatisfiable(req, nodes)
        return f"{code}: {why}" if why else None
    return None


def waits_for(reason: str) -> str:
    """What a job PENDING for ``reason`` (one that clears) waits for."""
    code = reason_code(reason)
    if code in WAITS_FOR:
        return WAITS_FOR[code]
    if code.startswith(SHARED_LIMITS):
        return "a user, account or QOS limit to free up as other jobs end"
    return "the scheduler"


def node_states(reason: str, nodes: list[Node]) -> str:
    """``node3 drain, node4 maint``: the state of each node ``reason`` names as unavailable ('' if none)."""
    named = [n for w in re.findall(r"UnavailableNodes:(\S+)", reason) for n in expand_nodelist(w)]
    listed = {n.name: n.state for n in nodes}
    return ", ".join(f"{n} {listed[n]}" for n in named if n in listed)


_SRUN_ERROR = re.compile(r"^srun: error: (\S+): tasks? ([\d,\-]+): (.+)$", re.M)


def failed_tasks(log_text: str) -> list[tuple[str, str, str]]:
    """(node, task(s), what) from srun's error lines in a job's log."""
    return [(m.group(1), m.group(2), m.group(3).strip()) for m in _SRUN_ERROR.finditer(log_text)]
