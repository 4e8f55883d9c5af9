"""What a tuning run is made of, and the data every worker process rebuilds from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lapsd.replay.engine import SwitchCost, TraceArrays
from lapsd.replay.matrix import build_cases
from lapsd.replay.policies.laps_sd import LapsSDParams
from lapsd.replay.trace import read_trace, trace_digest
from lapsd.replay.workload import ORACLE_WHAT_IF, PredictionSource
from lapsd.tune.objective import Evaluator
from lapsd.tune.space import SearchSpace, combined_scale
from lapsd.tune.split import split_by_prompt
from lapsd.tune.suite import Suite


@dataclass(frozen=True)
class TuneSpec:
    """The settings that define a study; a resumed study must be made with the same ones.

    Parameters
    ----------
    traces
        Trace folders.
    suite
        Tuning workloads (held-out workloads are the same kinds with other seeds).
    holdout
        Fraction of prompts held out.
    seed
        Seed of the sampler and of the split.
    second_objective
        ``"p99"`` to also minimise normalised p99 latency (a Pareto front), or ``None``.
    predictions
        Prediction source string for the replays (``column`` or ``oracle:sigma=...``); ignored
        when ``predictor`` is given.
    predictor
        Path of a trained length predictor (``.skops``), or ``None``.
    c0, c1
        Switch-cost model (seconds per preemption, per context token).
    """

    traces: tuple[str, ...]
    suite: Suite = field(default_factory=Suite)
    holdout: float = 0.3
    seed: int = 0
    second_objective: str | None = None
    predictions: str = ORACLE_WHAT_IF
    predictor: str | None = None
    c0: float = 0.0
    c1: float = 0.0

    @property
    def switch(self) -> SwitchCost:
        """The switch-cost model."""
        return SwitchCost(self.c0, self.c1)

    @property
    def directions(self) -> list[Literal["minimize"]]:
        """Optuna's study directions (one per objective)."""
        return ["minimize", "minimize"] if self.second_objective else ["minimize"]

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between runs of one study (JSON-able)."""
        out = asdict(self)
        out["traces"] = [trace_digest(t) for t in self.traces]
        out["suite"] = asdict(self.suite)
        if self.predictor:
            from lapsd.io import sha256_file

            out["predictor"] = sha256_file(self.predictor)
        return out


@dataclass
class TuneContext:
    """Compiled traces, the split, the search space and the tuning evaluator of a spec."""

    spec: TuneSpec
    arrays: list[tuple[str, TraceArrays]]
    tune_sets: list[tuple[str, TraceArrays]]
    heldout_sets: list[tuple[str, TraceArrays]]
    space: SearchSpace[LapsSDParams]
    predictions: PredictionSource
    evaluator: Evaluator


def prediction_source(spec: TuneSpec) -> PredictionSource:
    """What the length-aware policies are told: the predictor, or the spec's source."""
    if spec.predictor:
        from lapsd.predict.apply import predictor_source

        return predictor_source(Path(spec.predictor))
    return spec.predictions


@cache
def load_context(spec: TuneSpec) -> TuneContext:
    """Build (once per process) everything the objective needs from ``spec``."""
    arrays = [(Path(t).name, TraceArrays.from_trace(read_trace(t))) for t in spec.traces]
    tune_sets, heldout_sets = [], []
    for name, a in arrays:
        tune_idx, held_idx = split_by_prompt(a, spec.holdout, spec.seed)
        tune_sets.append((name, a.subset(tune_idx)))
        heldout_sets.append((name, a.subset(held_idx)))
    space = SearchSpace(LapsSDParams, combined_scale([a.scale for _, a in arrays]))
    predictions = prediction_source(spec)
    evaluator = Evaluator(build_cases(tune_sets, spec.suite.workloads(), predictions),
                          spec.switch)
    return TuneContext(spec, arrays, tune_sets, heldout_sets, space, predictions, evaluator)
