"""Speed-ups chosen for the machine a run is on: by capability where that settles it, else by a
short timed trial, and never one that its trial shows slower than the path without it.

A training *path* is a :class:`~..step.paths.PathSpec` (precision, channels_last, loader, optimizer,
host sync, compile mode).  :func:`choose` starts from a reference path and tries the candidate
pieces in turn (greedy forward selection): each candidate path is the current one with one piece
switched; the current path is measured before and after each measurement of the candidate
(:class:`TrialSettings` ``rounds``), and the piece is kept only when the candidate's median
images/s beats the current one's by more than ``margin``.  A piece that cannot cost anything on the device
(``Candidate.free``: on a GPU, the device-resident loader and a step without a host sync) is kept
without a trial.  A piece that the device's capability rules out is not
measured at all (bf16 without bf16 units runs about ten times slower than fp32: one trial would
cost minutes), and a piece the budget cannot hold is skipped with the reason.

The reference measured around each trial tells a steady machine from a disturbed one (another job
on the same cores): when it moved by more than the trial's own noise, the trial is measured again,
and a choice whose trials stayed disturbed is used but not cached.  ``pyramidrepro bench`` and the
``auto`` values of a run's config (:mod:`.run_values`) use the same chooser.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..step.paths import PathSpec

MARGIN = 0.02  # a piece must win by more than this (2 %) to be kept: run-to-run noise is about that
DECISIVE = 0.15  # a first round this far from 1.0x settles a trial (bf16, compile): no second round
STEADY = 0.10  # the reference moving more than this around a trial (and more than the trial's own spread): disturbed
RETRIES = 2  # a disturbed trial is measured again up to this many times


@dataclass(frozen=True)
class Candidate:
    """One piece to try: ``PathSpec`` field ``piece`` set to ``value``, unless ``ruled_out`` says why
    not, or ``free`` says why it is kept without a trial (it cannot cost anything on this device)."""

    name: str
    piece: str
    value: Any
    ruled_out: str | None = None
    free: str | None = None


@dataclass
class Decision:
    """What the chooser did with one candidate, and the figures it decided on."""

    name: str
    kept: bool
    reason: str
    images_per_s_without: float | None = None
    images_per_s_with: float | None = None
    seconds: float = 0.0
    attempts: int = 0  # trials measured (more than one: the machine was not steady during the first)
    disturbed: bool = False  # not steady in any attempt: the figures may be another job's as much as the piece's

    @property
    def ratio(self) -> float | None:
        if self.images_per_s_with is None or not self.images_per_s_without:
            return None
        return self.images_per_s_with / self.images_per_s_without

    def to_dict(self) -> dict[str, Any]:
        """The decision's fields and its ratio, as JSON and the run's records hold them."""
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Choice:
    """The path chosen and how: one decision per candidate, in the order tried, and the images/s
    its trials measured on the chosen path (None: nothing measured)."""

    spec: PathSpec
    decisions: list[Decision] = field(default_factory=list)
    capability: dict[str, Any] = field(default_factory=dict)
    predicted_images_per_s: float | None = None
    cached: bool = False  # taken from an earlier run's trials
    cache_key: str | None = None  # its entry in the trial cache; None: not kept there

    @property
    def steady(self) -> bool:
        """Whether every trial had a steady machine (only such a choice is cached)."""
        return not any(d.disturbed for d in self.decisions)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "capability": self.capability,
                "decisions": [d.to_dict() for d in self.decisions],
                "predicted_images_per_s": self.predicted_images_per_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        """A cached choice; KeyError for an entry from before predictions were kept."""
        decisions = [Decision(**{k: v for k, v in x.items() if k != "ratio"}) for x in d["decisions"]]
        return cls(PathSpec(**d["spec"]), decisions, d.get("capability", {}), d["predicted_images_per_s"])

    def records(self) -> list[dict[str, Any]]:
        """One row per decision, as the run records them (``auto_choices``)."""
        return [{"piece": d.name, "kept": d.kept, "reason": d.reason, "images_per_s_without": d.images_per_s_without,
                 "images_per_s_with": d.images_per_s_with, "disturbed": d.disturbed, "cached": self.cached}
                for d in self.decisions]


@dataclass(frozen=True)
class TrialSettings:
    """How :func:`choose` measures and judges a trial (the module constants by default)."""

    rounds: int = 2
    margin: float = MARGIN
    decisive: float = DECISIVE
    steady: float = STEADY
    retries: int = RETRIES


def _spread(rates: list[float]) -> float:
    return max(rates) / min(rates) - 1 if len(rates) > 1 else 0.0


@dataclass
class Trial:
    """One attempt at a trial: the reference measured before and after each measurement of the candidate."""

    reference: list[float]
    candidate: list[float] = field(default_factory=list)

    @property
    def without(self) -> float:
        return statistics.median(self.reference)

    @property
    def with_(self) -> float:
        return statistics.median(self.candidate)

    @property
    def reference_spread(self) -> float:
        return _spread(self.reference)

    def disturbed(self, steady: float) -> bool:
        """Whether the reference moved by more than ``steady`` and more than the candidate's own spread:
        the machine changed speed during the trial, so its ratio need not be the piece's."""
        return self.reference_spread > max(steady, _spread(self.candidate))

    def drift(self) -> str:
        return f"the reference measured {', '.join(f'{r:,.1f}' for r in self.reference)} images/s around it"


def _attempt(current: PathSpec, trial: PathSpec, measure: Callable[[PathSpec], float], s: TrialSettings,
             before: float | None) -> Trial:
    """Rounds of the candidate between measurements of the current path (``before``: its latest, if fresh)."""
    t = Trial([measure(current) if before is None else before])
    for _ in range(s.rounds):
        t.candidate.append(measure(trial))
        t.reference.append(measure(current))
        if abs(t.with_ / t.without - 1) > s.decisive:
            break
    return t


def _attempts(cand: Candidate, current: PathSpec, measure: Callable[[PathSpec], float], s: TrialSettings,
              skip: Callable[[Candidate], str | None], say: Callable[[str], None], before: float | None) -> list[Trial]:
    """The trial, measured again (up to ``s.retries`` times, while ``skip`` allows) while the machine
    was not steady during it."""
    trial = replace(current, **{cand.piece: cand.value})
    attempts = [_attempt(current, trial, measure, s, before)]
    while attempts[-1].disturbed(s.steady) and len(attempts) <= s.retries:
        unsteady = f"{cand.name}: not steady ({attempts[-1].drift()})"
        why_not = skip(cand)
        if why_not:
            say(f"{unsteady}; not measured again ({why_not})")
            break
        say(f"{unsteady}: measuring again, attempt {len(attempts) + 1} of {s.retries + 1}")
        attempts.append(_attempt(current, trial, measure, s, None))
    return attempts


def _decision(name: str, attempts: list[Trial], s: TrialSettings, seconds: float) -> Decision:
    """The verdict of the steady attempt (the last), else of the least disturbed one."""
    t = min(attempts, key=lambda a: (a.disturbed(s.steady), a.reference_spread))
    a, b = t.without, t.with_
    kept = b > a * (1 + s.margin)
    verdict = "kept" if kept else ("slower: left out" if b < a else f"within {100 * s.margin:.0f} %: left out")
    reason = f"{b / a:.2f}x in a trial ({a:,.1f} -> {b:,.1f} images/s): {verdict}"
    disturbed = t.disturbed(s.steady)
    if disturbed:
        reason += f"; not steady in {len(attempts)} attempt{'s' if len(attempts) > 1 else ''} ({t.drift()})"
    return Decision(name, kept, reason, a, b, seconds, len(attempts), disturbed)


def choose(reference: PathSpec, candidates: list[Candidate], measure: Callable[[PathSpec], float],
           skip: Callable[[Candidate], str | None] | None = None, say: Callable[[str], None] = lambda msg: None,
           settings: TrialSettings = TrialSettings()) -> Choice:
    """Greedy forward selection of ``candidates`` from ``reference`` (see the module docstring).

    ``measure(spec)`` returns images/s of a short stretch of training on ``spec``; ``skip`` may
    name a reason to leave a candidate untried, or a disturbed trial unrepeated (a time budget).
    A trial stops after its first round when that round is decisive (the ratio is further than
    ``settings.decisive`` from 1.0x); otherwise it runs ``settings.rounds`` rounds and compares
    medians.  The latest measurement of the path chosen so far (the trial's last reference, or its
    last candidate measurement when kept) is the next trial's first.
    """
    current, rate, before = reference, None, None
    decisions: list[Decision] = []
    skip = skip or (lambda cand: None)
    for cand in candidates:
        if cand.free and not cand.ruled_out:
            say(f"{cand.name}: kept without a trial ({cand.free})")
            decisions.append(Decision(cand.name, True, f"kept without a trial: {cand.free}"))
            current, rate, before = replace(current, **{cand.piece: cand.value}), None, None
            continue
        reason = cand.ruled_out or skip(cand)
        if reason:
            say(f"{cand.name}: not tried ({reason})")
            decisions.append(Decision(cand.name, False, reason))
            continue
        t0 = time.monotonic()
        attempts = _attempts(cand, current, measure, settings, skip, say, before)
        d = _decision(cand.name, attempts, settings, time.monotonic() - t0)
        say(f"{cand.name}: {d.reason}")
        decisions.append(d)
        last = attempts[-1]  # the latest measurement of the path chosen so far opens the next trial
        if d.kept:
            current = replace(current, **{cand.piece: cand.value})
            rate, before = d.images_per_s_with, last.candidate[-1]
        else:
            rate, before = d.images_per_s_without, last.reference[-1]
    return Choice(current, decisions, predicted_images_per_s=rate)


def precision_candidate(cap: dict[str, Any], device: torch.device) -> Candidate:
    """bf16 where the device has bf16 units, fp16 on GPUs without bf16; otherwise ruled out."""
    if cap.get("fast_bf16"):
        return Candidate("bf16", "precision", "bf16")
    if device.type == "cuda":
        return Candidate("fp16", "precision", "fp16")
    isa = cap.get("isa", "?")
    return Candidate("bf16", "precision", "bf16",
                     ruled_out=f"capability: no bf16 units on this CPU ({isa}); bf16 would be emulated, ~10x slower")


#: what the widths piece rounds every layer's channels up to: what NVIDIA's convolution guide asks of tensor cores
TENSOR_CORE_MULTIPLE = 8


def widths_candidate(device: torch.device) -> Candidate:
    """Tensor-core widths (``channel_multiple``): tried on GPUs; on a CPU only extra MACs."""
    cand = Candidate(f"aligned_widths (x{TENSOR_CORE_MULTIPLE})", "channel_multiple", TENSOR_CORE_MULTIPLE)
    if device.type == "cuda":
        return cand
    return replace(cand, ruled_out="capability: no tensor cores to align for on a CPU; only the added MACs")
