"""The ``auto`` values of a run's config (``train.precision``, ``channels_last``, ``compile``):
settled by capability and short trials of the run's own model (:func:`.chooser.choose`), and
cached per device, model and batch so that later runs skip the trials.

A cached choice carries the images/s its trials predicted.  A run that then measures far below
that (:func:`review_prediction`) drops the entry, a choice whose trials stayed disturbed is never
cached, and ``run --retune`` (``$PYRAMIDREPRO_RETUNE``) measures again whatever is cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..machine.devices import capability
from ..step.paths import PathSpec
from .chooser import Candidate, Choice, choose, precision_candidate
from .trial_cache import cache_file, drop_entry, read_entry, write_entry

FAR_BELOW = 0.7  # a run below this share of the images/s its trials predicted drops their cached choice
AUTO = "auto"


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

    def cache_key(self, cap: dict[str, Any], arch: tuple[int, float, str], batch: int) -> str:
        """What the trials' outcome depends on: device, model, batch, step, threads and torch version."""
        return json.dumps({"device": cap, "arch": arch, "batch": batch, "optimizer": self.optimizer,
                           "mode": self.mode, "requested": {k: str(v) for k, v in self.requested().items()},
                           "compile_mode": self.mode_name, "threads": torch.get_num_threads(),
                           "torch": torch.__version__}, sort_keys=True)


def resolve_auto(request: AutoRequest, arch: tuple[int, float, str], batch: int, device: torch.device,
                 trial_steps: int = 5, say: Callable[[str], None] = print, retune: bool = False,
                 writes: bool = True) -> Choice:
    """The run's ``precision`` / ``channels_last`` / ``compile``, ``auto`` ones chosen for this device.

    The reference is :meth:`AutoRequest.reference`; trials run the run's model at its per-process
    batch on synthetic data kept on the device, and are cached per device, model, batch and torch
    version (``retune``: the cached ones are ignored and replaced; ``writes``: this process keeps
    what it measured, DDP's rank 0 only).  A choice whose trials stayed disturbed is not cached.
    """
    cap = capability(device)
    reference, candidates = request.reference(), request.candidates(cap, device)
    if not candidates:
        return Choice(reference, [], cap)
    key = request.cache_key(cap, arch, batch)
    cached = None if retune else _cached(key)
    if cached is not None:
        say(f"auto: {_summary(cached)} (cached trials, {cache_file()}: {_predicted(cached)}; "
            f"`run --retune` measures again)")
        return cached
    say(f"auto: {'measuring again (--retune): ' if retune else 'choosing '}"
        f"{', '.join(c.name for c in candidates)} on {cap['device']} by short trials ...")
    choice = _trials(reference, candidates, arch, batch, device, trial_steps, lambda msg: say(f"auto: {msg}"))
    choice.capability = cap
    say(f"auto: {_summary(choice)}")
    if writes:
        _keep(key, choice, say)
    return choice


def review_prediction(choice: Choice, images_per_s: float | None, say: Callable[[str], None] = print) -> bool:
    """After a run on ``choice``: drop its cache entry when the run's settled images/s fell below
    ``FAR_BELOW`` x what its trials predicted (they did not see the machine the run had), so the
    next run measures again.  Whether it was dropped."""
    predicted = choice.predicted_images_per_s
    if choice.cache_key is None or not predicted or images_per_s is None or not images_per_s < FAR_BELOW * predicted:
        return False  # not cached, nothing predicted, or the run held up (NaN compares False)
    if not drop_entry(choice.cache_key, choice.to_dict()):
        return False  # already replaced or dropped by another run
    say(f"auto: this run measured {images_per_s:,.1f} images/s, {images_per_s / predicted:.2f}x the "
        f"{predicted:,.1f} its {'cached ' if choice.cached else ''}trials predicted: cached choice dropped, "
        "the next run measures again")
    return True


def _cached(key: str) -> Choice | None:
    entry = read_entry(key)
    try:
        choice = Choice.from_dict(entry) if entry else None
    except (ValueError, TypeError, KeyError):
        return None  # one from another version: measure again
    if choice is not None:
        choice.cached, choice.cache_key = True, key
    return choice


def _keep(key: str, choice: Choice, say: Callable[[str], None]) -> None:
    """Cache ``choice`` under ``key`` unless its trials stayed disturbed (then no entry is left under ``key``)."""
    if choice.steady:
        write_entry(key, choice.to_dict())
        choice.cache_key = key
        return
    drop_entry(key)  # a retune that could not settle leaves no older choice behind either
    names = ", ".join(d.name for d in choice.decisions if d.disturbed)
    say(f"auto: not cached: the machine was not steady during the {names} trial{'s' if ',' in names else ''} "
        "(another job on its cores?); this run uses the choice above, the next run measures again")


def _trials(reference: PathSpec, candidates: list[Candidate], arch: tuple[int, float, str], batch: int,
            device: torch.device, trial_steps: int, say: Callable[[str], None]) -> Choice:
    """:func:`choose` on short trials of the run's model, each path built once and freed after."""
    from ..step.paths import TrainPath
    from ..workload.data import synthetic_splits
    from ..workload.model import PyramidNet

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


def _predicted(choice: Choice) -> str:
    p = choice.predicted_images_per_s
    return f"{p:,.1f} images/s predicted" if p else "nothing measured"
