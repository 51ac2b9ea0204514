"""The known traps a set of runs falls into (:func:`confounders`), read from what each run recorded
(its ``system`` description, backend, TF32, commit, versions): no torch, so a login node's report
checks them too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


#: one check per known trap, in the order the report lists what they found: each returns its line or None
CONFOUNDER_CHECKS: tuple[Callable[[list[Any]], str | None], ...] = (
    _small_shm_with_nccl, _p2p_disabled, _tf32_on, _mixed_gpu_models, _threads_over_cores, _mixed_commits,
    _mixed_versions,
)
#: what the checks look for, in words (the report says so when none tripped)
CONFOUNDERS_CHECKED = ("/dev/shm with NCCL, NCCL_P2P_DISABLE, TF32, mixed GPU models, threads over cores, "
                       "mixed commits or versions")


def confounders(runs: list[Any]) -> list[str]:
    """The known traps a set of runs falls into, one line each (empty: none).

    ``runs`` are :class:`.runs.RunRecord`; each check (:data:`CONFOUNDER_CHECKS`) needs only what a run records.
    """
    return [flag for check in CONFOUNDER_CHECKS if (flag := check(runs)) is not None]
