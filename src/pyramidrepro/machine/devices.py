"""What the training device is and how a run constrains it: TF32, the emulated card's memory, peaks.

The paper's GPU (a 12 GB TITAN Xp: 12,196 MiB in all) had no TF32 and less memory than today's
cards.  ``devices.allow_tf32: false`` keeps fp32 exact on Ampere and newer, and
``devices.memory_limit_gb`` makes a bigger GPU behave like a card of that *total* memory: the
CUDA context, cuDNN/cuBLAS handles and NCCL's buffers live outside PyTorch's caching allocator,
so the allocator is capped at the card's total minus what this process measured outside it.

Limits of the emulation: the non-allocator share is measured once, after CUDA (and NCCL) are up
and before the model is built, so handles created later (a cuDNN workspace, a second NCCL
communicator) are not subtracted; and memory used by another process on the same GPU counts as
this process's overhead.  Fragmentation is the allocator's, not the card's: with PyTorch's default
segments, PyramidNet-110 at batch 256 failed under the TITAN Xp's cap on an H100 with 0.73 GiB
reserved but unused, so CUDA runs ask for expandable segments (``devices.expandable_segments``).

On a CPU the same setting caps the process's private writable memory (``RLIMIT_DATA``) at the
card's size, counting what Python and torch already hold as a card counts its CUDA context: an
allocation past it fails as a full card's would, which makes the OOM boundary search testable here.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from typing import Any

import torch

from ..config.schema import Attr, Summary
from .driver import driver_problem, node_driver

GIB = 2**30


@dataclass
class MemoryCap:
    """The allocator cap that emulates a card of ``card_bytes`` on a device of ``device_bytes``."""

    card_bytes: int
    device_bytes: int
    outside_allocator_bytes: int
    allocator_cap_bytes: int
    on_gpu: bool = True

    @property
    def fraction(self) -> float:
        return self.allocator_cap_bytes / self.device_bytes

    def attributes(self) -> dict[str, Any]:
        return {
            Attr.MEMORY_LIMIT_GB: self.card_bytes / GIB,
            **({Attr.GPU_TOTAL_MEMORY_BYTES: self.device_bytes} if self.on_gpu else {}),
            Attr.MEMORY_OUTSIDE_ALLOCATOR_BYTES: self.outside_allocator_bytes,
            Attr.ALLOCATOR_CAP_BYTES: self.allocator_cap_bytes,
        }


def emulated_card_cap(card_gib: float, device_total: int, device_free: int, reserved: int) -> MemoryCap:
    """The cap for a card of ``card_gib`` GiB, from ``torch.cuda.mem_get_info`` and the reserved bytes.

    What the device reports in use beyond PyTorch's reserved pool is outside the allocator (the
    CUDA context, library handles, NCCL); the allocator gets the card's total minus that.
    """
    card = int(card_gib * GIB)
    if card > device_total:
        raise ValueError(f"devices.memory_limit_gb: {card_gib:g} GiB is more than this GPU's "
                         f"{device_total / GIB:.1f} GiB")
    outside = max(0, device_total - device_free - reserved)
    cap = card - outside
    if cap <= 0:
        raise ValueError(f"devices.memory_limit_gb: {card_gib:g} GiB leaves nothing for the allocator: "
                         f"{outside / GIB:.2f} GiB are already used outside it")
    return MemoryCap(card, device_total, outside, cap)


ALLOCATOR_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # PyTorch's names, newest first
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def request_allocator_settings(expandable_segments: bool) -> None:
    """Ask PyTorch's CUDA allocator for expandable segments, unless the environment sets its options.

    PyTorch reads the setting once, when the allocator is first used: call this before CUDA is.
    """
    if expandable_segments and not any(os.environ.get(name) for name in ALLOCATOR_ENV):
        os.environ[ALLOCATOR_ENV[0]] = EXPANDABLE_SEGMENTS


def allocator_settings() -> str:
    """The allocator options in force: what PyTorch parsed where it says, else the environment's."""
    parsed = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    if parsed is not None:
        return parsed()
    return next((os.environ[name] for name in ALLOCATOR_ENV if os.environ.get(name)), "")


def cap_gpu_memory(card_gib: float, gpu_ids: list[int]) -> MemoryCap:
    """Cap PyTorch's allocator on each of ``gpu_ids`` so the process fits a card of ``card_gib``."""
    caps = []
    for i in gpu_ids:
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(i)
        cap = emulated_card_cap(card_gib, total, free, torch.cuda.memory_reserved(i))
        torch.cuda.set_per_process_memory_fraction(cap.fraction, i)
        caps.append(cap)
    return max(caps, key=lambda c: c.outside_allocator_bytes)  # the tightest GPU is the one reported


def process_data_bytes() -> int:
    """This process's private writable memory (Linux ``VmData``): what ``RLIMIT_DATA`` limits."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmData line")


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def fixed_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """glibc: blocks of ``threshold`` bytes and more are mmap'd alone and given back when freed.

    Setting it turns glibc's adaptive threshold off.  Returns False where there is no glibc.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def cap_process_memory(card_gib: float) -> MemoryCap:
    """On CPU: cap this process's private writable memory at ``card_gib`` GiB in all (``RLIMIT_DATA``).

    DataLoader workers forked later inherit the cap, each for itself.  glibc's malloc is told to
    map every large block on its own and unmap it when freed, so the limit meets what the run
    holds, not what the C heap kept back: with its default, adaptive threshold the same probe fit
    in one run and failed in the next.
    """
    fixed_mmap_threshold()
    card = int(card_gib * GIB)
    held = process_data_bytes()
    if card <= held:
        raise ValueError(f"devices.memory_limit_gb: {card_gib:g} GiB leaves nothing for the run: this process "
                         f"holds {held / GIB:.2f} GiB already (Python and torch count on a CPU)")
    resource.setrlimit(resource.RLIMIT_DATA, (card, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryCap(card, ram, held, card - held, on_gpu=False)


#: oneDNN's words when it cannot make a convolution's primitive, which it says when the primitive's
#: memory (its scratchpad) cannot be allocated
ONEDNN_NO_PRIMITIVE = "could not create a primitive"


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's, the CPU allocator's or oneDNN's (under a cap) or Python's own."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return "can't allocate memory" in text or (ONEDNN_NO_PRIMITIVE in text and process_memory_capped())


def process_memory_capped() -> bool:
    """Whether this process's private writable memory is capped (``RLIMIT_DATA``, :func:`cap_process_memory`)."""
    return resource.getrlimit(resource.RLIMIT_DATA)[0] != resource.RLIM_INFINITY


def set_tf32(allowed: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions (Ampere and newer); off keeps fp32 exact."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def reset_peaks(device: torch.device, gpu_ids: list[int]) -> None:
    """Forget the peaks so far (the warm-up's, cuDNN autotuning included)."""
    if device.type == "cuda":
        for i in gpu_ids or [device.index or 0]:
            torch.cuda.reset_peak_memory_stats(i)


def peak_memory(device: torch.device, gpu_ids: list[int]) -> dict[str, list[int]]:
    """Peak allocated and reserved bytes per GPU since the last reset; on CPU the peak RSS."""
    if device.type == "cuda":
        ids = gpu_ids or [device.index or 0]
        return {Summary.PEAK_MEMORY_BYTES: [int(torch.cuda.max_memory_allocated(i)) for i in ids],
                Summary.PEAK_RESERVED_BYTES: [int(torch.cuda.max_memory_reserved(i)) for i in ids]}
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {Summary.PEAK_MEMORY_BYTES: [rss], Summary.PEAK_RESERVED_BYTES: [rss]}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capability(device: torch.device) -> dict[str, Any]:
    """What ``device`` can do fast, as torch sees it (``fast_bf16`` is the one choices hinge on).

    CPU: torch's vector ISA (``ATEN_CPU_CAPABILITY`` lowers it), oneDNN's bf16 support
    (``ONEDNN_MAX_CPU_ISA`` lowers it) and whether the cores have bf16 units (AVX-512 BF16 or AMX):
    without them bf16 is emulated and about ten times slower than fp32.  GPU: bf16 and TF32
    (compute capability 8.0 and newer).
    """
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        bf16 = bool(torch.cuda.is_bf16_supported())
        return {"device": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
                "bf16": bf16, "tf32": major >= 8, "fast_bf16": bf16 and major >= 8}
    cpu = torch.cpu
    units = {"avx512_bf16": bool(cpu._is_avx512_bf16_supported()), "amx_tile": bool(cpu._is_amx_tile_supported())}
    mkldnn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return {"device": f"cpu ({cpu_model()}, {os.cpu_count()} cores)", "isa": torch.backends.cpu.get_cpu_capability(),
            **units, "mkldnn_bf16": mkldnn_bf16, "fast_bf16": mkldnn_bf16 and any(units.values())}


def machine_problem(cfg: Any) -> tuple[str, str] | None:
    """(dotted key, what is needed) when this machine cannot run ``cfg`` as configured, else None.

    Checked before anything is created, so an impossible run leaves no folder behind.
    """
    t, dev = cfg.train, cfg.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = dev.device == "cuda" or (dev.device == "auto" and gpus > 0)
    if dev.device == "cuda" and not gpus:
        too_old = driver_problem(node_driver(), torch.version.cuda)
        return "devices.device", too_old or "cuda requested but this machine has no CUDA device (use auto or cpu)"
    if t.mode in ("dp", "dp_balanced") and gpus < 2 and not t.allow_cpu_dp:
        return "train.mode", (f"{t.mode} needs >= 2 CUDA GPUs (found {gpus}); set train.allow_cpu_dp: true "
                              "for the degenerate one-device case")
    if t.mode == "ddp" and t.backend == "nccl" and not on_gpu:
        return "train.backend", "nccl needs CUDA GPUs; use gloo (or auto) on CPU"
    if t.mode == "ddp" and t.sync_bn and not on_gpu:
        return "train.sync_bn", "SyncBatchNorm needs CUDA GPUs; set it to false on CPU"
    if dev.memory_limit_gb is not None and not on_gpu:
        held = process_data_bytes()
        if dev.memory_limit_gb * GIB <= held:
            return "devices.memory_limit_gb", (f"{dev.memory_limit_gb:g} GiB is less than this process holds "
                                               f"already ({held / GIB:.2f} GiB): on a CPU the cap counts Python "
                                               "and torch too")
    return None
