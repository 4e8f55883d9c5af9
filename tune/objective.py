"""The tuning objective: LAPS-SD's latency over a suite of workloads, normalised by srpt-oracle.

Each workload of the suite is replayed on each tuned trace; a parameter set's score on it is its
mean latency divided by ``srpt-oracle``'s on the very same arrivals and requests (the lower bound
at batch size one with free switches), so that a burst of 50 and a light Poisson load weigh
alike. The objective is the mean of those ratios (1.0 would match the oracle). The optional second
objective is the same with p99 latency.

Workloads run cheapest first (bursts, then Poisson loads) and the running mean is reported after
each one, so a pruner can stop a poor parameter set after the first few workloads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna

from replay.engine import SwitchCost, TraceArrays, Workload, simulate
from replay.metrics import summarize_result
from replay.policies import create
from replay.policies.base import Policy
from replay.workload import build_workload
from tune.suite import Suite

PredictionSource = str | Callable[[TraceArrays, np.ndarray], list]


@dataclass
class Case:
    """One workload on one trace, with the oracle's latencies to normalise by."""

    trace: str
    arrays: TraceArrays
    workload: Workload
    ref_mean: float
    ref_p99: float


@dataclass
class Evaluator:
    """Scores LAPS-SD parameter sets on a fixed list of cases.

    Build it with :meth:`build`; it replays the ``srpt-oracle`` reference once per case.
    """

    cases: list[Case]
    switch: SwitchCost = field(default_factory=SwitchCost)

    @classmethod
    def build(cls, traces: Sequence[tuple[str, TraceArrays]], suite: Suite,
              predictions: PredictionSource, switch: SwitchCost) -> Evaluator:
        cases = []
        for wl in suite.workloads():
            for name, arrays in traces:
                workload = build_workload(wl, arrays, predictions)
                ref = summarize_result(simulate(arrays, workload, create("srpt-oracle"),
                                                switch=switch))
                cases.append(Case(name, arrays, workload, ref.mean, ref.p99))
        return cls(cases, switch)

    def score(self, make_policy: Callable[[], Policy], trial: optuna.Trial | None = None,
              ) -> tuple[float, float]:
        """Mean over cases of (mean latency / oracle's, p99 latency / oracle's).

        With a single-objective ``trial``, the running mean is reported after each case and
        :class:`optuna.TrialPruned` is raised when the pruner says so.
        """
        means, p99s = [], []
        for step, case in enumerate(self.cases):
            m = summarize_result(simulate(case.arrays, case.workload, make_policy(),
                                          switch=self.switch))
            means.append(m.mean / case.ref_mean)
            p99s.append(m.p99 / case.ref_p99)
            if trial is not None:
                trial.report(float(np.mean(means)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {step + 1} of {len(self.cases)} "
                                             "workloads")
        return float(np.mean(means)), float(np.mean(p99s))
