"""DDP scaling model: predict data-parallel throughput on N devices from one device's step time.

The paper's future work is more GPUs and more servers.  This module answers "what would N GPUs
on this link do?" from two measured things: the step time of one device at the per-device batch,
and the gradient all-reduce cost.  DDP all-reduces the gradients in buckets with a ring
algorithm, in which each rank sends and receives 2(N-1)/N of the bucket's bytes in 2(N-1) steps:

    t_bucket(s) = 2(N-1)/N * s / B  +  2(N-1) * a          (B: link bandwidth, a: latency per hop)
    t_comm      = sum of t_bucket over DDP's buckets        (the first bucket is 1 MiB, then bucket_cap)
    t_step(N)   = t_step(1) + exposed communication + sigma * E[max of N standard normals]
    exposed     = t_comm                                    with no overlap (gloo on CPU: the same
                                                            cores compute and reduce)
                = max(t_comm - overlap * t_backward, t_last_bucket)   with overlap (NCCL on GPU)
    images/s(N) = N * per-device batch / t_step(N)

The last term is synchronisation: every step waits for the slowest rank, so step-time jitter
(sigma, the standard deviation of one device's step times) costs more as N grows.

Across nodes the ring crosses the network, so its slowest link (bandwidth and latency) bounds
every step.  ``measure_link`` fits B and a on the live process group; the Trainer stores them in
each DDP run's metrics so the report can plot prediction and measurement side by side.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is needed: the CLI's --help stays fast
    import torch

#: DDP's first bucket holds 1 MiB (torch.distributed's default first-bucket size); the rest bucket_cap_mb
FIRST_BUCKET_BYTES = 1024 * 1024
#: share of one training step spent in backward (backward costs about 2x the forward FLOPs)
BACKWARD_FRACTION = 2 / 3


@dataclass(frozen=True)
class Link:
    """A link's usable bandwidth per direction and latency per ring hop."""

    name: str
    bandwidth_GBps: float
    latency_us: float

    @property
    def bandwidth_Bps(self) -> float:
        return self.bandwidth_GBps * 1e9


#: nominal per-direction link rates (vendor figures); latencies are typical, not measured here.
#: Real clusters reach less: measure yours (every DDP run records ``link_bandwidth_GBps``).
LINKS: dict[str, Link] = {
    "nvlink4": Link("NVLink 4 (H100 SXM, 450 GB/s)", 450.0, 3.0),
    "nvlink3": Link("NVLink 3 (A100 SXM, 300 GB/s)", 300.0, 3.0),
    "pcie3": Link("PCIe 3.0 x16 (16 GB/s)", 15.75, 5.0),
    "pcie4": Link("PCIe 4.0 x16 (32 GB/s)", 31.5, 5.0),
    "pcie5": Link("PCIe 5.0 x16 (64 GB/s)", 63.0, 5.0),
    "100g": Link("100 Gb/s network", 12.5, 8.0),
    "200g": Link("200 Gb/s network", 25.0, 8.0),
    "400g": Link("400 Gb/s network", 50.0, 8.0),
}


def parse_link(text: str) -> Link:
    """A link by name (``LINKS`` key) or as ``NAME=GBps[:latency_us]``; ValueError for another form,
    a bandwidth that is not a finite number > 0 or a latency that is not a finite number >= 0."""
    if text in LINKS:
        return LINKS[text]
    name, eq, spec = text.partition("=")
    bw, _, lat = spec.partition(":")
    try:
        if not eq:
            raise ValueError
        link = Link(name, float(bw), float(lat) if lat else 5.0)
    except ValueError:
        known = ", ".join(LINKS)
        raise ValueError(f"link {text!r}: expected one of {known} or NAME=GBps[:latency_us]") from None
    if not 0 < link.bandwidth_GBps < math.inf:
        raise ValueError(f"link {text!r}: the bandwidth must be a finite number of GB/s > 0, got {bw}")
    if not 0 <= link.latency_us < math.inf:
        raise ValueError(f"link {text!r}: the latency must be a finite number of microseconds >= 0, got {lat}")
    return link


def slowest(a: Link, b: Link) -> Link:
    """The link a ring over both kinds of hop is bound by: the lower bandwidth, the higher latency."""
    return Link(f"{a.name} + {b.name}", min(a.bandwidth_GBps, b.bandwidth_GBps), max(a.latency_us, b.latency_us))


def ddp_buckets(grad_bytes: int, bucket_cap_mb: float = 25.0) -> list[int]:
    """Byte sizes of DDP's gradient buckets: 1 MiB first, then ``bucket_cap_mb`` each."""
    if grad_bytes <= 0:
        return []
    first = min(grad_bytes, FIRST_BUCKET_BYTES)
    rest = grad_bytes - first
    cap = int(bucket_cap_mb * 1024 * 1024)
    sizes = [first] + [cap] * (rest // cap)
    if rest % cap:
        sizes.append(rest % cap)
    return sizes


def allreduce_seconds(nbytes: float, n: int, link: Link) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` ranks."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / link.bandwidth_Bps + 2 * (n - 1) * link.latency_us * 1e-6


@dataclass
class Prediction:
    """Predicted DDP step on ``devices`` devices (``nodes`` nodes)."""

    devices: int
    nodes: int
    link: str
    step_s: float
    comm_s: float
    exposed_s: float
    images_per_s: float
    efficiency: float  # images/s over N x one device's images/s


@dataclass(frozen=True)
class DeviceStep:
    """One device's measured training step: what the prediction for N devices starts from."""

    step_s: float
    batch: int  # images per device per step
    grad_bytes: int
    step_jitter_s: float = 0.0  # standard deviation of the step time: the wait for stragglers


@dataclass(frozen=True)
class Fabric:
    """How the devices are linked, and how DDP uses the links.

    ``devices_per_node`` (None: all on one node) and ``inter`` give the multi-node case;
    ``overlap`` in [0, 1] is the share of backward time that can hide communication.
    """

    intra: Link
    inter: Link | None = None
    devices_per_node: int | None = None
    bucket_cap_mb: float = 25.0
    overlap: float = 0.0

    def ring(self, devices: int) -> tuple[int, Link]:
        """The nodes ``devices`` devices span, and the link their ring is bound by."""
        per_node = self.devices_per_node or devices
        nodes = max(1, math.ceil(devices / per_node))
        if nodes == 1:
            return nodes, self.intra
        if self.inter is None:
            raise ValueError(f"{devices} devices at {per_node} per node span {nodes} nodes: give the inter-node link")
        return nodes, slowest(self.intra, self.inter)


def predict(one: DeviceStep, devices: int, fabric: Fabric) -> Prediction:
    """DDP throughput on ``devices`` devices linked by ``fabric``, from ``one`` device's step."""
    nodes, link = fabric.ring(devices)
    sizes = ddp_buckets(one.grad_bytes, fabric.bucket_cap_mb)
    comm = sum(allreduce_seconds(s, devices, link) for s in sizes)
    if fabric.overlap > 0 and sizes:
        last = allreduce_seconds(sizes[-1], devices, link)  # waits for the end of backward
        exposed = max(comm - fabric.overlap * BACKWARD_FRACTION * one.step_s, min(last, comm))
    else:
        exposed = comm
    step = one.step_s + exposed + one.step_jitter_s * expected_max_normal(devices)
    ips = devices * one.batch / step
    return Prediction(devices, nodes, link.name, step, comm, exposed, ips,
                      ips / (devices * one.batch / one.step_s))


def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normals] (0 for n = 1; 0.564 for 2; 1.03 for 4; 1.42 for 8)."""
    if n <= 1:
        return 0.0
    # integrate x * n * pdf(x) * cdf(x)^(n-1) on a fine grid; the tails beyond +-10 are negligible
    steps, lo, hi = 4000, -10.0, 10.0
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        x = lo + i * h
        pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        w = 0.5 if i in (0, steps) else 1.0
        total += w * x * n * pdf * cdf ** (n - 1)
    return total * h


def default_overlap(gpu: bool) -> float:
    """NCCL reduces on its own CUDA stream while backward runs; gloo on CPU shares the cores."""
    return 1.0 if gpu else 0.0


def grad_bytes_of(model: torch.nn.Module) -> int:
    """Bytes of the gradients DDP all-reduces (parameters that require grad)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def measure_link(device: torch.device, sizes: tuple[int, ...] = (128 * 1024, 1024 * 1024, 8 * 1024 * 1024),
                 repeats: int = 3, inner: int = 5) -> Link:
    """Fit bandwidth and per-hop latency of the default process group from timed all-reduces.

    Every rank must call it.  Each sample times ``inner`` back-to-back all-reduces (so the skew
    with which ranks leave the barrier is amortised); the median of ``repeats`` samples after a
    warm-up, taken from the slowest rank, is fitted to the ring model ``t = 2(N-1)/N s/B + 2(N-1) a``
    by least squares.
    """
    import torch
    import torch.distributed as dist

    n = dist.get_world_size()
    times = []
    for size in sizes:
        buf = torch.zeros(size // 4, dtype=torch.float32, device=device)
        samples = []
        for i in range(repeats + 1):
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                dist.all_reduce(buf)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                samples.append((time.perf_counter() - t0) / inner)
        times.append(slowest_rank(statistics.median(samples), device))
    bandwidth, latency = fit_ring(sizes, times, n)
    return Link(f"measured ({dist.get_backend()}, {n} ranks)", bandwidth / 1e9, latency * 1e6)


def slowest_rank(seconds: float, device: torch.device) -> float:
    """The largest of every rank's ``seconds`` (every rank calls this); a tensor on ``device``, as
    NCCL needs.  Without a process group, ``seconds`` itself."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return seconds
    box = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def fit_ring(sizes: tuple[int, ...] | list[int], times: list[float], n: int) -> tuple[float, float]:
    """Least-squares (bandwidth B/s, latency s per hop) of the ring model to measured all-reduces."""
    xs = [2 * (n - 1) / n * s for s in sizes]
    mx, mt = statistics.fmean(xs), statistics.fmean(times)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, times)) / var if var else mt / mx
    slope = max(slope, 1e-15)
    latency = max(0.0, (mt - slope * mx) / (2 * (n - 1)))
    return 1.0 / slope, latency
