"""Probes of the device check (devicecheck/gpu_check.py) that are not a `pyramidrepro` command.

    python devicecheck/gpu_check_probes.py env OUT_JSON DEVICE
    python devicecheck/gpu_check_probes.py status RUNS_DIR RUN_ID STATUS   # metrics.h5 says STATUS
    python devicecheck/gpu_check_probes.py dp-thread DEVICE                # bf16 holds in parallel_apply threads
    python devicecheck/gpu_check_probes.py importable MODULE               # exit 0 if MODULE imports

Each prints what it found and exits non-zero when the check fails.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def env(out_json: str, device: str) -> int:
    import torch

    info = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "gpu_memory_bytes": [torch.cuda.get_device_properties(i).total_memory
                             for i in range(torch.cuda.device_count())],
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps(info))
    Path(out_json).write_text(json.dumps(info, indent=2) + "\n")
    return 1 if device == "cuda" and not info["gpus"] else 0


def status(runs: str, run_id: str, expected: str) -> int:
    from pyramidrepro.records.metrics import read_metrics

    files = list(Path(runs).glob(f"*/{run_id}/metrics.h5"))
    if not files:
        print(f"{runs}/*/{run_id}/metrics.h5: missing")
        return 1
    m = read_metrics(files[0])
    a, s = m["attrs"], m["summary"]
    shown = {k: a.get(k) for k in ("status", "precision", "mode", "backend", "allow_tf32", "optimizer_impl",
                                   "oom_batch_size", "allocator_cap_bytes", "memory_outside_allocator_bytes",
                                   "allocator_settings")
             if a.get(k, "") != ""}
    shown.update({k: s[k] for k in ("images_per_s", "peak_memory_bytes", "peak_reserved_bytes") if k in s})
    print(json.dumps(shown, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return 0 if a.get("status") == expected else 1


def dp_thread(device: str) -> int:
    """A DP replica called the way parallel_apply calls it (a worker thread each) computes in bf16."""
    import torch
    from torch.nn.parallel import parallel_apply

    from pyramidrepro.machine.parallel import wrap_model
    from pyramidrepro.workload.model import PyramidNet

    dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    model = PyramidNet(8, 4).to(dev)
    wrapped, _ = wrap_model(model, "dp", dev, allow_cpu_dp=True, autocast_dtype=torch.bfloat16)
    replica = wrapped.module
    x = torch.randn(8, 3, 32, 32, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):  # as the trainer's step enters it
        if dev.type == "cuda":  # the same replica twice on the one GPU: two worker threads
            outs = parallel_apply([replica, replica], [(x,), (x,)], devices=[dev, dev])
        else:
            outs = [replica(x), replica(x)]
    dtypes = [str(o.dtype) for o in outs]
    print(f"replica outputs: {dtypes}")
    return 0 if dtypes == ["torch.bfloat16"] * 2 else 1


def importable(module: str) -> int:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
        print(f"{module}: not importable ({type(exc).__name__}: {exc})")
        return 1
    return 0


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "env":
        return env(*rest)
    if cmd == "status":
        return status(*rest)
    if cmd == "dp-thread":
        return dp_thread(*rest)
    if cmd == "importable":
        return importable(*rest)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
