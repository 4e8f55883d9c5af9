"""Replays of policies over cases (a workload on a trace): the one loop every comparison runs.

``lapsd replay``, the tuning objective and the held-out comparison all replay a set of policies
on a set of cases and normalise each result by the clairvoyant ``srpt-oracle`` on the very same
arrivals and requests (the lower bound of mean latency at batch size one with free switches).
:func:`replay_matrix` is that loop; a :class:`Case` replays its reference once and keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.batch import simulate_batched
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.engine import SimResult, simulate
from lapsd.replay.metrics import Metrics, summarize_result
from lapsd.replay.policies import create
from lapsd.replay.policies.base import Policy, TraceScale
from lapsd.replay.workload import (
    PredictionSource,
    UpdateSource,
    Workload,
    WorkloadSpec,
    build_workload,
)

#: The policy every result is normalised by.
REFERENCE = "srpt-oracle"

PolicyFactory = Callable[[], Policy]


@dataclass(frozen=True)
class Server:
    """How the replayed server runs: switch cost, batch size, step-time model, KV capacity.

    At batch size one this is the paper's setting (:func:`~lapsd.replay.engine.simulate`);
    above, continuous batching (:func:`~lapsd.replay.batch.simulate_batched`), where the
    reference ``srpt-oracle`` ranks by true remaining time but is no longer a proven bound.
    """

    switch: SwitchCost = field(default_factory=SwitchCost)
    batch: int = 1
    cost: BatchCost = field(default_factory=BatchCost)
    kv_tokens: int | None = None

    @property
    def capacity(self) -> float:
        """Throughput in batch-1 servers when every step is full: ``batch / slowdown(batch)``.

        What a tuning suite's loads are relative to (:func:`build_cases`); a KV capacity that
        keeps batches from filling is not counted.
        """
        return self.batch / self.cost.factor(self.batch)

    def run(self, arrays: TraceArrays, workload: Workload, policy: Policy[Any]) -> SimResult:
        """Replay ``workload`` through ``policy`` on this server."""
        if self.batch == 1 and self.kv_tokens is None:
            return simulate(arrays, workload, policy, switch=self.switch)
        return simulate_batched(arrays, workload, policy, self.batch, cost=self.cost,
                                switch=self.switch, kv_tokens=self.kv_tokens)


@dataclass
class Case:
    """One workload on one trace: what every policy of a comparison replays."""

    trace: str
    arrays: TraceArrays
    workload: Workload
    _references: dict[Server, tuple[SimResult, Metrics]] = field(
        default_factory=dict, repr=False)

    def reference(self, server: Server) -> tuple[SimResult, Metrics]:
        """The reference policy's replay of this case on ``server`` (computed once)."""
        if server not in self._references:
            result = server.run(self.arrays, self.workload, create(REFERENCE))
            self._references[server] = (result, summarize_result(result, trace=self.trace))
        return self._references[server]


def build_cases(traces: Sequence[tuple[str, TraceArrays]],
                workloads: Sequence[WorkloadSpec | str],
                predictions: PredictionSource | None,
                updates: UpdateSource | None = None, capacity: float = 1.0) -> list[Case]:
    """A case per workload and trace, workloads outer (in the order given: cheapest first).

    ``predictions`` is the source length-aware policies are told (``None`` when none needs
    one); ``updates`` their re-predictions while requests run; ``capacity`` the server's
    throughput in batch-1 servers, which the workloads' loads are relative to.
    """
    return [Case(name, arrays, build_workload(wl, arrays, predictions, updates, capacity))
            for wl in workloads for name, arrays in traces]


@dataclass(frozen=True)
class Row:
    """One policy replayed on one case."""

    case: Case
    policy: str
    result: SimResult
    metrics: Metrics


def replay_matrix(cases: Sequence[Case], policies: Mapping[str, PolicyFactory], *,
                  server: Server | None = None,
                  progress: Callable[[Case, str], None] | None = None) -> Iterator[Row]:
    """Replay each case under each policy (fresh objects), normalised by :data:`REFERENCE`.

    Rows come case by case, in the order of ``policies``, so a caller can stop early (the
    tuner's pruner does).
    """
    server = server or Server()
    for case in cases:
        ref_result, ref = case.reference(server)
        for name, make in policies.items():
            if progress is not None:
                progress(case, name)
            result = (ref_result if name == REFERENCE
                      else server.run(case.arrays, case.workload, make()))
            metrics = summarize_result(result, policy=name, trace=case.trace, reference=ref)
            yield Row(case, name, result, metrics)


def registry_factories(names: Sequence[str], scale: TraceScale | None = None,
                       params: Mapping[str, Mapping[str, Any]] | None = None,
                       ) -> dict[str, PolicyFactory]:
    """Factories of registered policies with optional per-policy parameters.

    Parameters are checked here, once, so a bad ``--set`` fails before any replay.
    """
    params = params or {}
    out: dict[str, PolicyFactory] = {}
    for name in names:
        kwargs = dict(params.get(name, {}))
        create(name, scale, **kwargs)

        def make(name: str = name, kwargs: dict[str, Any] = kwargs) -> Policy:
            return create(name, scale, **kwargs)

        out[name] = make
    return out
