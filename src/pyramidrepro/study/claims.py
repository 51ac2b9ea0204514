"""The paper's claims C1-C4: one function per claim, each PASS / FAIL / WITHIN NOISE / NOT RUN with
the numbers behind it; :data:`CLAIMS` lists them in order and :func:`check_claims` runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..records.runs import RunRecord
from ..stats.measure import Estimate, compare
from .paper import PAPER_GPU_MEMORY_GB, PAPER_OOM_BATCH
from .table import Table, completed_estimates, fmt_estimate, largest_fitting_batch, summarise

ABOUT = 0.20  # "about equal": within 20 %


@dataclass
class Claim:
    key: str
    text: str
    verdict: str  # PASS | FAIL | WITHIN NOISE (a difference inside the 95 % intervals) | NOT RUN
    evidence: str


@dataclass(frozen=True)
class ClaimInputs:
    """What the claims are decided from: every run (C1 reads the memory-capped single-GPU ones) and
    the completed points of each mode, batch -> estimate (C2-C4)."""

    records: list[RunRecord]
    single: dict[int, Estimate]
    dp: dict[int, Estimate]
    ddp: dict[int, Estimate]

    @classmethod
    def of(cls, records: list[RunRecord], table: Table | None = None) -> ClaimInputs:
        table = summarise(records) if table is None else table
        return cls(records, *(completed_estimates(table, line) for line in ("single", "dp", "ddp")))


def _verdict(outcomes: list[str], wanted: str) -> str:
    """PASS when every comparison goes the claimed way beyond the intervals, FAIL when one goes the
    other way beyond them, WITHIN NOISE when the rest overlap."""
    if any(o not in (wanted, "noise") for o in outcomes):
        return "FAIL"
    return "PASS" if all(o == wanted for o in outcomes) else "WITHIN NOISE"


def c1_single_gpu_runs_out_of_memory(inputs: ClaimInputs) -> Claim:
    """C1: a single 12 GB GPU runs out of memory at batch >= 512, decided from the boundary: what
    fits below 512 and what fails at or below it."""
    text = (f"C1: a single GPU with the paper's {PAPER_GPU_MEMORY_GB} GB runs out of memory at batch "
            f">= {PAPER_OOM_BATCH}")
    capped = [r for r in inputs.records if r.line == "single" and r.gpu and r.memory_limit_gb
              and abs(r.memory_limit_gb - PAPER_GPU_MEMORY_GB) <= 1]
    if not capped:
        return Claim("C1", text, "NOT RUN", "needs single-GPU runs under devices.memory_limit_gb: 11.91 (the paper's "
                                            "12 GB card; none with a cap within 1 GB of it)")
    fit = largest_fitting_batch(capped)["single"]
    evidence = f"largest batch that completed {fit.largest or '-'}, smallest out of memory {fit.first_oom or '-'}"
    if fit.largest is None or fit.first_oom is None:
        return Claim("C1", text, "NOT RUN", f"needs completed and out-of-memory runs ({evidence})")
    searched = f" (boundary search: {fit.probes} probes)" if fit.probes else ""
    ok = PAPER_OOM_BATCH // 2 <= fit.largest < fit.first_oom <= PAPER_OOM_BATCH
    return Claim("C1", text, "PASS" if ok else "FAIL", evidence + searched)


def c2_dp_slower_than_single(inputs: ClaimInputs) -> Claim:
    """C2: DP is slower than single at equal batch, and DP at 512 is about single at 256."""
    text = "C2: DP is slower than single GPU at equal batch, and DP at 512 is about single at 256"
    single, dp = inputs.single, inputs.dp
    common = sorted(set(single) & set(dp))
    if not dp:
        return Claim("C2", text, "NOT RUN", "no completed DP runs (DataParallel needs >= 2 GPUs)")
    if not common:
        return Claim("C2", text, "NOT RUN", "no batch size with both single and DP results")
    verdict = _verdict([compare(dp[b], single[b]) for b in common], "lower")
    evidence = [f"batch {b}: DP {fmt_estimate(dp[b])} vs single {fmt_estimate(single[b])} img/s" for b in common]
    if 512 in dp and 256 in single:
        ratio = dp[512].images_per_s / single[256].images_per_s
        evidence.append(f"DP@512 / single@256 = {ratio:.2f}")
        verdict = verdict if abs(ratio - 1) <= ABOUT else "FAIL"
    else:
        evidence.append("DP@512 vs single@256 not measured")
    return Claim("C2", text, verdict, "; ".join(evidence))


def c3_ddp_fastest(inputs: ClaimInputs) -> Claim:
    """C3: DDP is faster than both single and DP at every batch."""
    text = "C3: DDP is faster than single GPU and DP at every batch size"
    ddp = inputs.ddp
    pairs = [(b, name, other[b]) for b in sorted(ddp) for name, other in (("single", inputs.single), ("DP", inputs.dp))
             if b in other]
    if not ddp:
        return Claim("C3", text, "NOT RUN", "no completed DDP runs")
    if not pairs:
        return Claim("C3", text, "NOT RUN", "no batch size with DDP and another mode")
    verdict = _verdict([compare(ddp[b], v) for b, _, v in pairs], "higher")
    evidence = "; ".join(f"batch {b}: DDP {fmt_estimate(ddp[b])} vs {n} {fmt_estimate(v)}" for b, n, v in pairs)
    return Claim("C3", text, verdict, evidence)


def c4_ddp_grows_with_batch(inputs: ClaimInputs) -> Claim:
    """C4: DDP throughput grows with the batch size, from each batch to the next."""
    text = "C4: DDP throughput grows with the batch size"
    points = sorted(inputs.ddp.items())
    if len(points) < 2:
        return Claim("C4", text, "NOT RUN", "needs DDP results at two or more batch sizes")
    verdict = _verdict([compare(b2, b1) for (_, b1), (_, b2) in zip(points, points[1:])], "higher")
    return Claim("C4", text, verdict, " -> ".join(f"{b}: {fmt_estimate(v)}" for b, v in points))


#: the paper's claims, in the order the report lists them
CLAIMS: tuple[Callable[[ClaimInputs], Claim], ...] = (
    c1_single_gpu_runs_out_of_memory, c2_dp_slower_than_single, c3_ddp_fastest, c4_ddp_grows_with_batch,
)


def check_claims(records: list[RunRecord], table: Table | None = None) -> list[Claim]:
    """C1-C4 of the paper, each PASS / FAIL / NOT RUN with the numbers behind it (``table``: the
    runs' :func:`.table.summarise`, when the caller has it already)."""
    inputs = ClaimInputs.of(records, table)
    return [claim(inputs) for claim in CLAIMS]
