"""Replays of several policies over several workloads: the library behind ``lapsd replay``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replay.engine import SwitchCost, TraceArrays, Workload, simulate
from replay.metrics import Metrics, normalize, summarize_result
from replay.policies import REGISTRY, create
from replay.policies.base import Policy
from replay.workload import build_workload


@dataclass
class ReplaySetup:
    """Everything a batch of replays shares.

    Parameters
    ----------
    policies
        Registry names to compare.
    params
        Per-policy parameter overrides, e.g. ``{"laps-sd": {"K": 6}}``.
    predictions
        Prediction source for length-aware policies (see :mod:`replay.workload`).
    switch
        Preemption cost model.
    factories
        Optional per-name policy builders that replace ``create`` (e.g. a scheduler built from
        an exported config).
    """

    policies: list[str]
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    predictions: str | Callable | None = "oracle:sigma=0.5"
    switch: SwitchCost = field(default_factory=SwitchCost)
    factories: Mapping[str, Callable[[], Policy]] = field(default_factory=dict)

    def make(self, name: str, arrays: TraceArrays) -> Policy:
        if name in self.factories:
            return self.factories[name]()
        return create(name, arrays.scale, **self.params.get(name, {}))


def replay_all(arrays: TraceArrays, workloads: Iterable[str | Workload], setup: ReplaySetup,
               progress: Callable[[str, str], None] | None = None) -> list[Metrics]:
    """Replay every workload under every policy; metrics normalised by ``srpt-oracle``."""
    unknown = [p for p in setup.policies if p not in REGISTRY and p not in setup.factories]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; available: {', '.join(REGISTRY)}")
    needs_pred = any(REGISTRY[p].needs_prediction for p in setup.policies if p in REGISTRY)
    out: list[Metrics] = []
    for wl in workloads:
        workload = wl if isinstance(wl, Workload) else build_workload(
            wl, arrays, setup.predictions if needs_pred or setup.factories else None)
        for name in setup.policies:
            if progress is not None:
                progress(workload.name, name)
            result = simulate(arrays, workload, setup.make(name, arrays), switch=setup.switch)
            out.append(summarize_result(result))
    return normalize(out)
