"""Speed-ups chosen for the machine a run is on: by capability where that settles it, else by a
short timed trial, and never one that its trial shows slower than the path without it.

A training *path* is a :class:`~.paths.PathSpec` (precision, channels_last, loader, optimizer,
host sync, compile mode).  :func:`choose` starts from a reference path and tries the candidate
pieces in turn (greedy forward selection): each candidate path is the current one with one piece
switched, the two are measured alternately ``rounds`` times, and the piece is kept only when the
candidate's median images/s beats the current one's by more than ``margin``.  A piece that the
device's capability rules out is not measured at all (bf16 without bf16 units runs about ten times
slower than fp32: one trial would cost minutes), and a piece the budget cannot hold is skipped with
the reason.  ``pyramidrepro bench`` and the ``auto`` values of a run's config use the same chooser.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..machine.devices import capability
from .paths import PathSpec

MARGIN = 0.02  # a piece must win by more than this (2 %) to be kept: run-to-run noise is about that
DECISIVE = 0.15  # a first round this far from 1.0x settles a trial (bf16, compile): no second round
AUTO = "auto"


@dataclass(frozen=True)
class Candidate:
    """One piece to try: ``PathSpec`` field ``piece`` set to ``value``, unless ``ruled_out`` says why not."""

    name: str
    piece: str
    value: Any
    ruled_out: str | None = None


@dataclass
class Decision:
    """What the chooser did with one candidate, and the figures it decided on."""

    name: str
    kept: bool
    reason: str
    images_per_s_without: float | None = None
    images_per_s_with: float | None = None
    seconds: float = 0.0

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
    """The path chosen and how: one decision per candidate, in the order tried."""

    spec: PathSpec
    decisions: list[Decision] = field(default_factory=list)
    capability: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "capability": self.capability,
                "decisions": [d.to_dict() for d in self.decisions]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        decisions = [Decision(**{k: v for k, v in x.items() if k != "ratio"}) for x in d["decisions"]]
        return cls(PathSpec(**d["spec"]), decisions, d.get("capability", {}))


def choose(reference: PathSpec, candidates: list[Candidate], measure: Callable[[PathSpec], float],
           rounds: int = 2, margin: float = MARGIN, skip: Callable[[Candidate], str | None] | None = None,
           say: Callable[[str], None] = lambda msg: None, decisive: float = DECISIVE) -> Choice:
    """Greedy forward selection of ``candidates`` from ``reference`` (see the module docstring).

    ``measure(spec)`` returns images/s of a short stretch of training on ``spec``; ``skip`` may
    name a reason to leave a candidate untried (a time budget).  A trial stops after its first
    round when that round is ``decisive`` (the ratio is further than that from 1.0x); otherwise
    it runs ``rounds`` rounds and compares medians.
    """
    current = reference
    decisions: list[Decision] = []
    for cand in candidates:
        reason = cand.ruled_out or (skip(cand) if skip else None)
        if reason:
            say(f"{cand.name}: not tried ({reason})")
            decisions.append(Decision(cand.name, False, reason))
            continue
        trial = replace(current, **{cand.piece: cand.value})
        t0 = time.monotonic()
        without, with_ = [], []
        for _ in range(rounds):
            without.append(measure(current))
            with_.append(measure(trial))
            if abs(with_[0] / without[0] - 1) > decisive:
                break
        a, b = statistics.median(without), statistics.median(with_)
        kept = b > a * (1 + margin)
        verdict = "kept" if kept else ("slower: left out" if b < a else f"within {100 * margin:.0f} %: left out")
        d = Decision(cand.name, kept, f"{b / a:.2f}x in a trial ({a:,.1f} -> {b:,.1f} images/s): {verdict}",
                     a, b, time.monotonic() - t0)
        say(f"{cand.name}: {d.reason}")
        decisions.append(d)
        if kept:
            current = trial
    return Choice(current, decisions)


def precision_candidate(cap: dict[str, Any], device: torch.device) -> Candidate:
    """bf16 where the device has bf16 units, fp16 on GPUs without bf16; otherwise ruled out."""
    if cap.get("fast_bf16"):
        return Candidate("bf16", "precision", "bf16")
    if device.type == "cuda":
        return Candidate("fp16", "precision", "fp16")
    isa = cap.get("isa", "?")
    return Candidate("bf16", "precision", "bf16",
                     ruled_out=f"capability: no bf16 units on this CPU ({isa}); bf16 would be emulated, ~10x slower")


# ---------------------------------------------------------------------------------------------
# The auto values of a run's config
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where trial results are kept: $PYRAMIDREPRO_CACHE_DIR, else $XDG_CACHE_HOME/pyramidrepro."""
    if os.environ.get("PYRAMIDREPRO_CACHE_DIR"):
        return Path(os.environ["PYRAMIDREPRO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyramidrepro"


def _cache_file() -> Path:
    return cache_dir() / "auto_choices.json"


def _cached(key: str) -> Choice | None:
    try:
        entry = json.loads(_cache_file().read_text()).get(key)
        return Choice.from_dict(entry) if entry else None
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no cache, or one from another version: measure again


def _store(key: str, choice: Choice) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[key] = choice.to_dict()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only home: the choice still holds for this run
        print(f"pyramidrepro: could not cache the auto choices in {path}: {exc}", flush=True)


@dataclass(frozen=True)
class AutoRequest:
    """What a run asks of its speed options: ``precision``, ``channels_last`` and ``compile`` as its
    config sets them (``auto`` or fixed), and the parts of its step that the trials keep as they are."""

    precision: str
    channels_last: bool | str
    compile: bool | str
    compile_mode: str | None  # None: torch.compile's default mode
    optimizer: str  # the SGD implementation, already resolved for the device
    mode: str  # train.mode: single, dp, dp_balanced or ddp

    def requested(self) -> dict[str, Any]:
        """The three options that may be ``auto``, by config name."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}

    @property
    def mode_name(self) -> str:
        """The compile mode a compiled path uses."""
        return self.compile_mode or "default"

    def reference(self) -> PathSpec:
        """The run with every ``auto`` piece off (fp32, NCHW, eager) and the fixed ones as set."""
        return PathSpec(
            precision="fp32" if self.precision == AUTO else self.precision,
            channels_last=False if self.channels_last == AUTO else bool(self.channels_last),
            loader="torch", optimizer=self.optimizer, host_sync=False,
            compile_mode=None if self.compile in (AUTO, False) else self.mode_name,
        )

    def candidates(self, cap: dict[str, Any], device: torch.device) -> list[Candidate]:
        """One candidate per ``auto`` option, in the order they are tried."""
        out = []
        if self.precision == AUTO:
            out.append(precision_candidate(cap, device))
        if self.channels_last == AUTO:
            out.append(Candidate("channels_last", "channels_last", True))
        if self.compile == AUTO:
            unsupported = "torch.compile does not support nn.DataParallel" if self.mode.startswith("dp") else None
            out.append(Candidate(f"compile ({self.mode_name})", "compile_mode", self.mode_name, ruled_out=unsupported))
        return out


def resolve_auto(request: AutoRequest, arch: tuple[int, float, str], batch: int, device: torch.device,
                 trial_steps: int = 5, say: Callable[[str], None] = print) -> Choice:
    """The run's ``precision`` / ``channels_last`` / ``compile``, ``auto`` ones chosen for this device.

    The reference is :meth:`AutoRequest.reference`; trials run the run's model at its per-process
    batch on synthetic data kept on the device, and are cached per device, model, batch and torch
    version.
    """
    cap = capability(device)
    reference, candidates = request.reference(), request.candidates(cap, device)
    if not candidates:
        return Choice(reference, [], cap)
    key = json.dumps({"device": cap, "arch": arch, "batch": batch, "optimizer": request.optimizer,
                      "mode": request.mode, "requested": {k: str(v) for k, v in request.requested().items()},
                      "compile_mode": request.mode_name, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}, sort_keys=True)
    cached = _cached(key)
    if cached is not None:
        say(f"auto: {_summary(cached)} (cached trials, {_cache_file()})")
        return cached
    say(f"auto: choosing {', '.join(c.name for c in candidates)} on {cap['device']} by short trials ...")
    choice = _trials(reference, candidates, arch, batch, device, trial_steps, lambda msg: say(f"auto: {msg}"))
    choice.capability = cap
    _store(key, choice)
    say(f"auto: {_summary(choice)}")
    return choice


def _trials(reference: PathSpec, candidates: list[Candidate], arch: tuple[int, float, str], batch: int,
            device: torch.device, trial_steps: int, say: Callable[[str], None]) -> Choice:
    """:func:`choose` on short trials of the run's model, each path built once and freed after."""
    from ..workload.data import synthetic_splits
    from ..workload.model import PyramidNet
    from .paths import TrainPath

    paths: dict[PathSpec, TrainPath] = {}

    def measure(spec: PathSpec) -> float:
        if spec not in paths:
            paths[spec] = TrainPath(spec, arch, init, splits, batch, device).warm_up(2)
        return paths[spec].train(trial_steps)

    # the trials draw random numbers of their own: the run's stream is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        init = PyramidNet(*arch).state_dict()
        splits = synthetic_splits(max(batch * (trial_steps + 2) * 2, 256), 16)
        choice = choose(reference, candidates, measure, say=say)
    paths.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the trials' memory goes back before the run's own steps
    return choice


def _summary(choice: Choice) -> str:
    s = choice.spec
    return f"precision {s.precision}, channels_last {s.channels_last}, compile {s.compile_mode or 'off'}"
