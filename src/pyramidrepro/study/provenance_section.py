"""The report's provenance: where, on what and with what software the runs ran, and the known
confounders they fall into (study.confounders).  Every recorded text in it goes through
:mod:`.markdown`."""

from __future__ import annotations

import json
import statistics
from collections import Counter

from ..records.runs import RunRecord
from .confounders import CONFOUNDERS_CHECKED, confounders
from .markdown import md_block, md_text


def _system_text(s: dict) -> str:
    """One system a run describes (its env and topology left out), in a line (not yet escaped)."""
    shm = f"{s['dev_shm_bytes'] / 2**30:.2f} GiB" if s.get("dev_shm_bytes") else "?"
    text = (f"{s.get('cpu_model', '?')}, {s.get('cpus_given', '?')} of {s.get('cpu_cores_machine', '?')} "
            f"cores given (affinity {s.get('cpu_affinity') or '?'}), /dev/shm {shm}")
    if s.get("gpu_count"):
        mem = ", ".join(f"{b / 2**30:.0f} GiB" for b in s.get("gpu_memory_bytes", []))
        text += (f"; {s['gpu_count']} x {', '.join(sorted(set(s.get('gpu_models', []))))} ({mem}), driver "
                 f"{s.get('driver') or '?'}, CUDA {s.get('cuda')}, cuDNN {s.get('cudnn')}, NCCL {s.get('nccl')}")
    return text


def _topology_lines(records: list[RunRecord]) -> list[str]:
    """The first GPU topology a run recorded, as a code block (none: no lines)."""
    topo = next((r.system["topology"] for r in records if r.system.get("topology")), None)
    return ["- GPU topology (`nvidia-smi topo -m`):", "", *md_block(topo), ""] if topo else []


def system_lines(records: list[RunRecord]) -> list[str]:
    """Provenance: each distinct system the runs describe, their environment, and the confounder checks."""
    systems = ({k: v for k, v in r.system.items() if k not in ("env", "topology")} for r in records)
    lines = [f"- system: {md_text(text)}"  # distinct, in the order first seen
             for text in dict.fromkeys(_system_text(s) for s in systems if s)]
    env = sorted({f"{k}={v}" for r in records for k, v in r.system.get("env", {}).items()})
    if env:
        lines.append(f"- environment: {md_text('; '.join(env))}")
    lines += _topology_lines(records)
    flags = confounders(records)
    return lines + ([f"- **confounder:** {md_text(f)}" for f in flags]
                    or [f"- confounder checks: none tripped ({CONFOUNDERS_CHECKED})"])


def capability_lines(records: list[RunRecord]) -> list[str]:
    """Provenance: what each device could do fast, and the auto choices the runs made on it."""
    lines = []
    for cap in sorted({json.dumps(r.capability, sort_keys=True) for r in records if r.capability}):
        c = json.loads(cap)
        traits = [f"{k} {v}" for k, v in c.items() if k != "device"]
        lines.append(f"- device capability: {md_text(c.get('device', '?'))}: {md_text(', '.join(traits))}")
    choices = sorted({f"{d.get('piece')} {'kept' if d.get('kept') else 'left out'} ({d.get('reason')})"
                      for r in records for d in r.auto_choices})
    if choices:
        lines.append("- auto choices: " + md_text("; ".join(choices)))
    return lines


def _memory_cap(records: list[RunRecord]) -> str:
    """Each emulated card and its allocator cap, where a run recorded one (runs without sort first)."""
    caps = sorted({(r.memory_limit_gb, r.allocator_cap_bytes) for r in records if r.memory_limit_gb},
                  key=lambda cap: (cap[0], cap[1] is not None, cap[1] or 0))
    if not caps:
        return "none"
    return ", ".join(f"a {c:g} GiB card emulated" + (f" (allocator capped at {a / 2**30:.2f} GiB)" if a else "")
                     for c, a in caps)


def _tf32(records: list[RunRecord]) -> str:
    tf32 = sorted({"on" if r.allow_tf32 else "off" for r in records if r.allow_tf32 is not None})
    return " and ".join(tf32) if tf32 else "n/a (no GPU runs)"


def _container_images(records: list[RunRecord]) -> str:
    images = sorted({f"{r.container_image} ({r.container_digest or 'no digest'}, built from {r.image_commit or '?'})"
                     for r in records if r.container_image})
    return md_text(", ".join(images)) or "none (host Python)"


def _logging_overhead(records: list[RunRecord]) -> str:
    overheads = [r.metrics_overhead for r in records if r.metrics_overhead is not None]
    if not overheads:
        return "overhead not recorded"
    return (f"median {100 * statistics.median(overheads):.2f}%, at most "
            f"{100 * max(overheads):.2f}% of step time over {len(overheads)} runs")


def _loaders(records: list[RunRecord]) -> str:
    """Which loader fed how many runs, DALI with its version and mode."""
    counts = Counter(r.loader or "not recorded" for r in records)
    dali = sorted({str(r.versions.get("dali")) for r in records if r.loader == "dali" and r.versions.get("dali")})
    modes = sorted({"GPU" if r.gpu else "CPU-only mode" for r in records if r.loader == "dali"})
    parts = []
    for name, n in sorted(counts.items()):
        detail = f" (DALI {', '.join(dali) or '?'}, {' and '.join(modes)})" if name == "dali" else ""
        parts.append(f"{name}{detail}: {'every run' if n == len(records) else f'{n} runs'}")
    return md_text("; ".join(parts))


def provenance_lines(records: list[RunRecord]) -> list[str]:
    """The provenance section's list: hardware, memory cap, TF32, capabilities, systems, data, commits,
    versions, container images and the cost of HDF5 logging."""
    devices = sorted({r.device_name for r in records})
    versions = records[0].versions
    return [f"- hardware: {md_text('; '.join(devices))}",
            f"- GPU memory cap: {_memory_cap(records)}",
            f"- TF32 on GPUs: {_tf32(records)}",
            *capability_lines(records),
            *system_lines(records),
            f"- data: {md_text(', '.join(sorted({r.data_source for r in records})))}",
            f"- loader: {_loaders(records)}",
            f"- git commit: {md_text(', '.join(sorted({r.git_commit for r in records})))}",
            f"- versions: {md_text(', '.join(f'{k} {val}' for k, val in versions.items() if val))}",
            f"- container image: {_container_images(records)}",
            f"- HDF5 logging: {_logging_overhead(records)}"]
