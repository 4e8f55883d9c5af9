"""What a tuning run is made of, and the data every worker process rebuilds from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lapsd.errors import LapsdError
from lapsd.io import sha256_file
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.matrix import Server, build_cases
from lapsd.replay.policies import REGISTRY
from lapsd.replay.policies.base import TraceScale
from lapsd.replay.policies.params import tunables
from lapsd.replay.trace import read_trace, trace_digest
from lapsd.replay.workload import PredictionSource, UpdateSource, recorded_updates
from lapsd.tune.defaults import DEFAULT_FAMILY
from lapsd.tune.objective import Evaluator
from lapsd.tune.space import SearchSpace, combined_scale
from lapsd.tune.split import split_by_prompt
from lapsd.tune.suite import Suite

#: ``predictions`` of a spec whose predictor is trained on the tuning split (the default).
TRAINED = "trained"


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
        Seed of the sampler, of the split and of the trained predictor.
    second_objective
        ``"p99"`` to also minimise normalised p99 latency (a Pareto front), or ``None``.
    predictions
        Where length predictions come from: ``trained`` (a predictor trained on the tuning
        split's prompts, then applied to every request: real predictions), ``predictor``
        (the file ``predictor``), ``column`` (the traces' own prediction columns) or the
        noisy-oracle what-if ``oracle:sigma=S``.
    predictor
        The predictor file (with ``predictions="predictor"``; for ``trained``, where the
        trained one is saved).
    repredict_every
        Rounds between re-predictions of a running request (``None``: none).
    recorded_updates
        Deliver the re-predictions the traces record (a probe's, ``lapsd predict apply``)
        instead; with ``predictions="column"``, the same probe's admission beliefs.
    c0, c1
        Switch-cost model (seconds per preemption, per context token).
    batch_size
        Requests per step of the replayed server (continuous batching above one). The suite's
        loads are then relative to that server's capacity (:attr:`Server.capacity`), so that
        its batches fill and queue.
    batch_cost
        A cost table with batch rows (``lapsd collect-profile --batches``): how a step's time
        grows with its size. ``None``: every step as fast as one request's round.
    policies
        The policy family searched; the best on the tuning suite is exported.
    """

    traces: tuple[str, ...]
    suite: Suite = field(default_factory=Suite)
    holdout: float = 0.3
    seed: int = 0
    second_objective: str | None = None
    predictions: str = TRAINED
    predictor: str | None = None
    repredict_every: int | None = None
    recorded_updates: bool = False
    c0: float = 0.0
    c1: float = 0.0
    batch_size: int = 1
    batch_cost: str | None = None
    policies: tuple[str, ...] = DEFAULT_FAMILY

    def __post_init__(self) -> None:
        """Reject what cannot run before anything is written."""
        unknown = [p for p in self.policies if p not in REGISTRY]
        if unknown:
            raise LapsdError(f"--policies: unknown policy {unknown[0]!r}; available: "
                             f"{', '.join(REGISTRY)}")
        if not self.policies:
            raise LapsdError("--policies: name at least one policy")
        oracle = [p for p in self.policies if REGISTRY[p].needs_oracle]
        if oracle:
            raise LapsdError(f"--policies: {oracle[0]} sees true lengths and cannot be "
                             "exported; it is always in the held-out table as the lower bound")
        if not (self.predictions in (TRAINED, "predictor", "column")
                or self.predictions.startswith("oracle:")):
            raise LapsdError(f"predictions {self.predictions!r}: expected trained, predictor, "
                             "column or oracle:sigma=S")
        if self.predictions == "predictor" and not self.predictor:
            raise LapsdError("predictions 'predictor' need a predictor file (--predictor)")
        if self.repredict_every is not None and not self.uses_predictor:
            raise LapsdError("--repredict-every needs a predictor (trained or --predictor): "
                             "re-predictions come from a model reading the output so far")
        if self.recorded_updates and self.predictions != "column":
            raise LapsdError("--recorded-updates replays a probe's beliefs from the traces: "
                             "pass --predictions column, so that admission beliefs come from "
                             "the same probe (`lapsd predict apply PROBE`)")
        SwitchCost(self.c0, self.c1)  # refuses non-finite or negative costs, in one line
        if self.batch_size < 1:
            raise LapsdError(f"--batch-size: {self.batch_size} requests per step; give 1 or more")
        if self.batch_cost is not None and self.batch_size == 1:
            raise LapsdError("--batch-cost is the step-time model of batches: pass "
                             "--batch-size above 1 with it")

    @property
    def uses_predictor(self) -> bool:
        """Whether predictions come from a predictor model (trained here or given)."""
        return self.predictions in (TRAINED, "predictor")

    @property
    def what_if(self) -> bool:
        """Whether the predictions are the noisy-oracle what-if (true length x noise)."""
        return self.predictions.startswith("oracle")

    @property
    def switch(self) -> SwitchCost:
        """The switch-cost model."""
        return SwitchCost(self.c0, self.c1)

    @property
    def server(self) -> Server:
        """The replayed server: switch cost, batch size and its step-time model."""
        return _server(self.switch, self.batch_size, self.batch_cost)

    @property
    def directions(self) -> list[Literal["minimize"]]:
        """Optuna's study directions (one per objective)."""
        return ["minimize", "minimize"] if self.second_objective else ["minimize"]

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between runs of one study (JSON-able)."""
        out = asdict(self)
        out["traces"] = [trace_digest(t) for t in self.traces]
        out["suite"] = asdict(self.suite)
        # A trained predictor is determined by the traces, split and seed above; a given one
        # by its content.
        out["predictor"] = (sha256_file(self.predictor)
                            if self.predictions == "predictor" and self.predictor else None)
        out["batch_cost"] = None if self.batch_cost is None else sha256_file(self.batch_cost)
        # Options at their defaults are left out, so that studies from before them resume.
        for key, default in (("recorded_updates", False), ("batch_size", 1),
                             ("batch_cost", None)):
            if out[key] == default:
                del out[key]
        return out


@cache
def _server(switch: SwitchCost, batch: int, table: str | None) -> Server:
    """A server whose cost table is read once per process (a bad table refused in a line)."""
    try:
        cost = BatchCost() if table is None else BatchCost.from_profile(table)
    except LapsdError as exc:
        raise LapsdError(f"--batch-cost: {exc}") from None
    return Server(switch, batch, cost)


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@dataclass
class TuneContext:
    """Compiled traces, the split, predictions, search spaces and the tuning evaluator."""

    spec: TuneSpec
    arrays: list[tuple[str, TraceArrays]]
    tune_sets: list[tuple[str, TraceArrays]]
    heldout_sets: list[tuple[str, TraceArrays]]
    scale: TraceScale
    predictions: PredictionSource
    updates: UpdateSource | None
    evaluator: Evaluator

    def space(self, policy: str) -> SearchSpace[Any] | None:
        """The search space of a family member (``None``: it has no parameters)."""
        params_cls = getattr(REGISTRY[policy], "Params", None)
        if params_cls is None:
            return None
        given = {name: getattr(self.spec, t.switch_cost)
                 for name, t in tunables(params_cls).items() if t.switch_cost is not None}
        return SearchSpace(params_cls, self.scale, given=given)


@cache
def split(spec: TuneSpec) -> tuple[list[tuple[str, TraceArrays]], list[tuple[str, TraceArrays]],
                                   list[tuple[str, TraceArrays]]]:
    """The traces, and their tuning and held-out requests (split by prompt)."""
    arrays = [(Path(t).name, TraceArrays.from_trace(read_trace(t))) for t in spec.traces]
    tune_sets, heldout_sets = [], []
    for name, a in arrays:
        tune_idx, held_idx = split_by_prompt(a, spec.holdout, spec.seed)
        tune_sets.append((name, a.subset(tune_idx)))
        heldout_sets.append((name, a.subset(held_idx)))
    return arrays, tune_sets, heldout_sets


def prediction_sources(spec: TuneSpec) -> tuple[PredictionSource, UpdateSource | None]:
    """What the length-aware policies are told, and their re-predictions."""
    if spec.recorded_updates:
        return spec.predictions, recorded_updates
    if not spec.uses_predictor:
        return spec.predictions, None
    if spec.predictor is None or not Path(spec.predictor).is_file():
        raise LapsdError(f"predictor {spec.predictor} not found: with predictions "
                         f"{spec.predictions!r} it must be there before tuning")
    from lapsd.predict.apply import predictor_source, update_source
    from lapsd.predict.persist import load_predictor

    predictor = load_predictor(spec.predictor)
    updates = (None if spec.repredict_every is None
               else update_source(predictor, spec.repredict_every))
    return predictor_source(predictor), updates


@cache
def load_context(spec: TuneSpec) -> TuneContext:
    """Build (once per process) everything the objective needs from ``spec``."""
    arrays, tune_sets, heldout_sets = split(spec)
    predictions, updates = prediction_sources(spec)
    server = spec.server
    cases = build_cases(tune_sets, spec.suite.workloads(), predictions, updates,
                        server.capacity)
    return TuneContext(spec, arrays, tune_sets, heldout_sets,
                       combined_scale([a.scale for _, a in arrays]), predictions, updates,
                       Evaluator(cases, server))
