"""The workload suite a tuning objective averages over.

Kept free of optuna: the CLI reads its defaults to build ``--help``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lapsd.errors import LapsdError
from lapsd.replay.workload import WorkloadSpec


@dataclass(frozen=True)
class Suite:
    """Workloads of the objective (and, with other seeds, of the held-out comparison).

    Parameters
    ----------
    bursts
        Sizes of bursts (all requests arrive at time 0).
    loads
        Offered loads of Poisson workloads (fraction of the server's capacity).
    poisson_n
        Requests per Poisson workload.
    seeds
        Seeds; each workload is built once per seed.
    """

    bursts: tuple[int, ...] = (10, 30, 50)
    loads: tuple[float, ...] = (0.5, 0.7, 0.9)
    poisson_n: int = 150
    seeds: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        """Reject what no workload can be made of, before a tuning run starts."""
        bad: list[tuple[str, object, str]] = [
            *(("--bursts", n, "a positive number of requests") for n in self.bursts if n < 1),
            *(("--loads", x, "a finite offered load above 0, e.g. 0.9") for x in self.loads
              if not (math.isfinite(x) and x > 0)),
            *(("--seeds", s, "a seed of 0 or more") for s in self.seeds if s < 0),
        ]
        if self.poisson_n < 1:
            bad.append(("--poisson-n", self.poisson_n, "a positive number of requests"))
        if not self.seeds:
            bad.append(("--seeds", "none", "at least one seed"))
        if not self.bursts and not self.loads:
            bad.append(("--bursts/--loads", "none", "at least one burst size or load"))
        if bad:
            flag, value, want = bad[0]
            raise LapsdError(f"{flag}: {value} is not usable; give {want}")

    def workloads(self) -> list[WorkloadSpec]:
        """The workloads, cheapest first."""
        out = [WorkloadSpec("burst", n=n, seed=s) for n in self.bursts for s in self.seeds]
        out += [WorkloadSpec("poisson", n=self.poisson_n, load=float(x), seed=s)
                for x in self.loads for s in self.seeds]
        return out

    def with_seeds(self, seeds: Sequence[int]) -> Suite:
        """The same workloads with other seeds (the held-out suite)."""
        return Suite(self.bursts, self.loads, self.poisson_n, tuple(seeds))
