"""The tuning objective: a policy's latency over a suite of cases, normalised by srpt-oracle.

Each workload of the suite is replayed on each tuned trace (a
:class:`~lapsd.replay.matrix.Case`); a parameter set's score on a case is its mean latency divided
by ``srpt-oracle``'s on the very same arrivals and requests, so that a burst of 50 and a light
Poisson load weigh alike. The objective is the mean of those ratios (1.0 would match the oracle).
The optional second objective is the same with p99 latency.

Cases run cheapest first (bursts, then Poisson loads) and the running mean is reported after
each one, so a pruner can stop a poor parameter set after the first few workloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import optuna

from lapsd.replay.matrix import Case, PolicyFactory, Server, replay_matrix


@dataclass
class Evaluator:
    """Scores parameter sets on a fixed list of cases (references replayed once per case)."""

    cases: list[Case]
    server: Server = field(default_factory=Server)

    def score(self, make_policy: PolicyFactory, trial: optuna.Trial | None = None,
              ) -> tuple[float, float]:
        """Mean over cases of (mean latency / oracle's, p99 latency / oracle's).

        With a single-objective ``trial``, the running mean is reported after each case and
        :class:`optuna.TrialPruned` is raised when the pruner says so.
        """
        means, p99s = [], []
        rows = replay_matrix(self.cases, {"trial": make_policy}, server=self.server)
        for step, row in enumerate(rows):
            assert row.metrics.norm_mean is not None and row.metrics.norm_p99 is not None
            means.append(row.metrics.norm_mean)
            p99s.append(row.metrics.norm_p99)
            if trial is not None:
                trial.report(float(np.mean(means)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {step + 1} of {len(self.cases)} "
                                             "workloads")
        return float(np.mean(means)), float(np.mean(p99s))
