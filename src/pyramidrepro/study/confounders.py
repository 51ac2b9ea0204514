"""The known traps a set of runs falls into (:func:`confounders`), read from what each run recorded
(its ``system`` description, backend, TF32, commit, versions, the nodes it ran on): no torch, so a
login node's report checks them too."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..stats.measure import Estimate, compare
from .table import completed_estimates, fmt_estimate, summarise

#: NCCL's shared-memory transport wants more than the 64 MiB a container's /dev/shm defaults to
SHM_MIN_BYTES = 1 << 30


def _small_shm_with_nccl(runs: list[Any]) -> str | None:
    """NCCL runs with a /dev/shm under :data:`SHM_MIN_BYTES`."""
    small = [r for r in runs
             if r.backend == "nccl" and (r.system.get("dev_shm_bytes") or SHM_MIN_BYTES) < SHM_MIN_BYTES]
    if not small:
        return None
    size = min(r.system["dev_shm_bytes"] for r in small) / 2**20
    return (f"/dev/shm is {size:.0f} MiB in {len(small)} NCCL run(s): under 1 GiB NCCL's "
            "shared-memory transport fails or falls back (give the container --shm-size / a larger tmpfs)")


def _p2p_disabled(runs: list[Any]) -> str | None:
    """Runs with GPU peer-to-peer turned off."""
    p2p = [r for r in runs if r.system.get("env", {}).get("NCCL_P2P_DISABLE") == "1"]
    if not p2p:
        return None
    return (f"NCCL_P2P_DISABLE=1 in {len(p2p)} run(s): GPU peer-to-peer is off, all-reduce goes through "
            "host memory at a bandwidth cost")


def _tf32_on(runs: list[Any]) -> str | None:
    """Runs whose fp32 math ran at TF32."""
    tf32 = [r for r in runs if r.allow_tf32]
    if not tf32:
        return None
    return (f"TF32 on in {len(tf32)} run(s): fp32 convolutions ran at TF32 precision and speed, "
            "which a pre-Ampere card (the paper's) cannot")


def _mixed_gpu_models(runs: list[Any]) -> str | None:
    """More than one GPU model among the runs."""
    gpu_models = sorted({r.device_name for r in runs if r.gpu})
    return f"mixed GPU models in one campaign: {', '.join(gpu_models)}" if len(gpu_models) > 1 else None


def _threads_over_cores(runs: list[Any]) -> str | None:
    """Runs with more CPU threads than the cores their job was given."""
    over = [r for r in runs if r.threads and r.system.get("cpus_given")
            and r.threads * r.system.get("local_world_size", 1) > r.system["cpus_given"]]
    if not over:
        return None
    r = over[0]
    return (f"CPU threads over the cores given in {len(over)} run(s): e.g. {r.threads} threads x "
            f"{r.system.get('local_world_size', 1)} process(es) on {r.system['cpus_given']} core(s)")


def _mixed_commits(runs: list[Any]) -> str | None:
    """Runs from more than one commit."""
    commits = sorted({r.git_commit for r in runs if r.git_commit})
    if len(commits) <= 1:
        return None
    return f"runs from {len(commits)} commits in one figure: {', '.join(c[:12] for c in commits)}"


def _mixed_versions(runs: list[Any]) -> str | None:
    """Runs with more than one set of library versions."""
    versions = sorted({str(sorted(r.versions.items())) for r in runs if r.versions})
    return f"runs with {len(versions)} different sets of versions in one figure" if len(versions) > 1 else None


def node_of(run: Any) -> str:
    """The node a run ran on, as one label: its hosts (``RunRecord.hosts``) joined by ``+`` ("": none recorded)."""
    return "+".join(run.hosts)


def estimates_by_node(runs: list[Any]) -> dict[tuple[str, int], dict[str, Estimate]]:
    """Per point (line, batch), each node's estimate of its completed repeats there: the runs of each node
    pooled as the report pools a point (:func:`.table.summarise`); runs that record no node left out."""
    by_node: dict[str, list[Any]] = defaultdict(list)
    for r in runs:
        if node_of(r):
            by_node[node_of(r)].append(r)
    points: dict[tuple[str, int], dict[str, Estimate]] = defaultdict(dict)
    for node, node_runs in sorted(by_node.items()):
        table = summarise(node_runs)
        for line in table:
            for batch, estimate in completed_estimates(table, line).items():
                points[(line, batch)][node] = estimate
    return points


@dataclass(frozen=True)
class SlowNode:
    """One point whose repeats on ``node`` are slower than those on ``fastest`` beyond both intervals."""

    node: str
    fastest: str
    point: str  # "<line> batch <n>"
    slow: Estimate
    fast: Estimate

    def figures(self) -> str:
        """``ddp batch 64: 812 ± 9 vs 1,010 ± 12 images/s``."""
        return f"{self.point}: {fmt_estimate(self.slow)} vs {fmt_estimate(self.fast)} images/s"


def slow_nodes(runs: list[Any]) -> list[SlowNode]:
    """Each point and node whose repeats there are slower than the fastest node's beyond both intervals
    (:func:`..stats.measure.compare`); a point on one node gives none, and a node whose interval is unknown (0) is
    left out of the comparison."""
    found = []
    for (line, batch), by_node in sorted(estimates_by_node(runs).items()):
        nodes = {node: e for node, e in by_node.items() if e.ci > 0}
        if len(nodes) < 2:
            continue
        fastest = max(nodes, key=lambda n: nodes[n].images_per_s)
        found += [SlowNode(node, fastest, f"{line} batch {batch}", est, nodes[fastest])
                  for node, est in sorted(nodes.items()) if compare(est, nodes[fastest]) == "lower"]
    return found


def _slow_node_line(node: str, found: list[SlowNode]) -> str:
    """One slow node's line: the point and its figures, or how many points and the one it lags most."""
    worst = min(found, key=lambda s: s.slow.images_per_s / s.fast.images_per_s)
    than = ", ".join(sorted({s.fastest for s in found}))
    where = worst.figures() if len(found) == 1 else f"{len(found)} points, most at {worst.figures()}"
    return f"{node} slower than {than} for {where} (repeats on different nodes disagree beyond their intervals)"


def _slow_node_lines(runs: list[Any]) -> list[str]:
    """One line per node that is slower than another for one or more points (:func:`slow_nodes`)."""
    by_node: dict[str, list[SlowNode]] = defaultdict(list)
    for s in slow_nodes(runs):
        by_node[s.node].append(s)
    return [_slow_node_line(node, found) for node, found in sorted(by_node.items())]


def others_on_node(run: Any) -> tuple[int, int]:
    """The most CPUs and GPUs other jobs held on the run's node at its start or end (Slurm's view)."""
    views = [v for v in (run.node_sharing.get("start"), run.node_sharing.get("end")) if isinstance(v, dict)]
    return (max((int(v.get("other_cpus", 0)) for v in views), default=0),
            max((int(v.get("other_gpus", 0)) for v in views), default=0))


def _shared_node_lines(runs: list[Any]) -> list[str]:
    """One line per point with a run measured on a node that other jobs held CPUs or GPUs of."""
    by_point: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for r in runs:
        by_point[(r.line, r.batch_size)].append(r)
    lines = []
    for (line, batch), point_runs in sorted(by_point.items()):
        shared = [(r, others_on_node(r)) for r in point_runs if any(others_on_node(r))]
        if not shared:
            continue
        nodes = sorted({str(r.node_sharing.get("start", {}).get("node", "?")) for r, _ in shared})
        cpus, gpus = max(c for _, (c, _) in shared), max(g for _, (_, g) in shared)
        lines.append(f"{line} batch {batch}: {len(shared)} of {len(point_runs)} run(s) measured on a node other jobs "
                     f"shared ({', '.join(nodes)}: up to {cpus} CPU(s) and {gpus} GPU(s) of other jobs)")
    return lines


#: one check per known trap, in the order the report lists what they found: each returns its line or None
CONFOUNDER_CHECKS: tuple[Callable[[list[Any]], str | None], ...] = (
    _small_shm_with_nccl, _p2p_disabled, _tf32_on, _mixed_gpu_models, _threads_over_cores, _mixed_commits,
    _mixed_versions,
)
#: checks that find one line per culprit (each slow node), listed after :data:`CONFOUNDER_CHECKS`' lines
CONFOUNDER_LIST_CHECKS: tuple[Callable[[list[Any]], list[str]], ...] = (_slow_node_lines, _shared_node_lines)
#: what the checks look for, in words (the report says so when none tripped)
CONFOUNDERS_CHECKED = ("/dev/shm with NCCL, NCCL_P2P_DISABLE, TF32, mixed GPU models, threads over cores, "
                       "mixed commits or versions, repeats slower on one node than another, nodes other jobs shared")


def confounders(runs: list[Any]) -> list[str]:
    """The known traps a set of runs falls into, one line each (empty: none).

    ``runs`` are :class:`..records.runs.RunRecord`; each check (:data:`CONFOUNDER_CHECKS`, then
    :data:`CONFOUNDER_LIST_CHECKS`) needs only what a run records.
    """
    flags = [flag for check in CONFOUNDER_CHECKS if (flag := check(runs)) is not None]
    return flags + [line for check in CONFOUNDER_LIST_CHECKS for line in check(runs)]
