"""Held-out comparison: the tuned family beside every other baseline and paper LAPS-SD.

Every policy replays the same held-out workloads (requests whose prompts the tuner never saw,
with seeds the tuner never used); each row is normalised by ``srpt-oracle`` on the same workload.
The exported policy also gets a row as a static priority (``<policy> as static priority``): its
admission rank fixed for each request's life, non-preemptive, which is what vLLM's and
TensorRT-LLM's priority scheduling can run of it (``lapsd export-priorities``). The gap to the
online policy's row is what serving it through priorities alone loses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.replay.config import HeldoutMetrics
from lapsd.replay.matrix import (
    REFERENCE,
    PolicyFactory,
    build_cases,
    registry_factories,
    replay_matrix,
)
from lapsd.replay.policies import REGISTRY
from lapsd.replay.policies.params import PolicyParams
from lapsd.tune.context import TuneContext

#: Seeds of the held-out workloads (the tuning suite uses small seeds).
HELDOUT_SEEDS = (101, 102)
#: The wrapper that fixes a policy's admission rank (it declares ``wraps_policy``): a row of its
#: own, not a baseline.
STATIC = "static-priority"


def summary_json(summary: Mapping[str, HeldoutMetrics]) -> dict[str, dict[str, Any]]:
    """A held-out summary as JSON values (``heldout.json``, the config, ``tune --json``)."""
    return {n: m.model_dump() for n, m in summary.items()}


@dataclass(frozen=True)
class Verdict:
    """How the exported policy fares on held-out prompts against the best baseline.

    The baselines are every other held-out row a server can run (all but an oracle's).
    """

    exported: str
    score: float
    rival: str
    rival_score: float

    @classmethod
    def of(cls, summary: Mapping[str, HeldoutMetrics], exported: str) -> Verdict:
        """The verdict of a held-out summary (normalised mean latency per row)."""
        rivals = {n: m.norm_mean for n, m in summary.items()
                  if n != exported and not (n in REGISTRY and REGISTRY[n].needs_oracle)}
        rival = min(rivals, key=rivals.__getitem__)
        return cls(exported, summary[exported].norm_mean, rival, rivals[rival])

    @property
    def exported_best(self) -> bool:
        """Whether no baseline beats the exported policy."""
        return self.score / self.rival_score <= 1.0

    def __str__(self) -> str:
        """One line: whether the exported policy is the best, and by how much."""
        ratio = self.score / self.rival_score
        if self.exported_best:
            return (f"{self.exported} is the best on held-out prompts: {self.score:.3f} x "
                    f"{REFERENCE}, {(1 - ratio) * 100:.1f}% below the next best ({self.rival}, "
                    f"{self.rival_score:.3f})")
        return (f"WARNING: on held-out prompts {self.rival} ({self.rival_score:.3f} x "
                f"{REFERENCE}) beats the exported {self.exported} ({self.score:.3f}) by "
                f"{(ratio - 1) * 100:.1f}%; {self.exported} was best on the tuning suite")


@dataclass
class HeldoutResult:
    """The held-out comparison (``heldout.json``).

    Attributes
    ----------
    workloads, seeds
        The held-out workload strings and their seeds.
    requests
        Held-out requests per trace.
    rows
        One :class:`~lapsd.replay.metrics.Metrics` dict per trace, workload and policy, with
        ``kind``, ``load`` and ``burst``.
    summary
        Per policy row, the means over its rows.
    latencies
        Per policy row, the latencies (seconds) of all its held-out requests, for the CDF.
    exported, verdict, tuning_objective
        Set by the run: the exported row, its :class:`Verdict`, each tuned row's objective.
    """

    workloads: list[str]
    seeds: list[int]
    requests: dict[str, int]
    rows: list[dict[str, Any]]
    summary: dict[str, HeldoutMetrics]
    latencies: dict[str, list[float]]
    exported: str | None = None
    verdict: Verdict | None = None
    tuning_objective: dict[str, float] = field(default_factory=dict)

    def export(self, exported: str, tuning_objective: dict[str, float]) -> None:
        """Name the exported row; its verdict follows from the summary."""
        self.exported, self.tuning_objective = exported, tuning_objective
        self.verdict = Verdict.of(self.summary, exported)

    def to_json(self) -> dict[str, Any]:
        """``heldout.json``'s object."""
        return {"workloads": self.workloads, "seeds": self.seeds, "requests": self.requests,
                "rows": self.rows, "summary": summary_json(self.summary),
                "latencies": self.latencies, "exported": self.exported,
                "verdict": None if self.verdict is None else str(self.verdict),
                "tuning_objective": self.tuning_objective}

    @classmethod
    def read(cls, path: str | Path) -> HeldoutResult:
        """Read ``heldout.json`` back (the verdict recomputed from its summary)."""
        data = json.loads(Path(path).read_text())
        summary = {n: HeldoutMetrics(**m) for n, m in data["summary"].items()}
        exported = data.get("exported")
        return cls(data["workloads"], data["seeds"], data["requests"], data["rows"], summary,
                   data["latencies"], exported,
                   None if exported is None else Verdict.of(summary, exported),
                   data.get("tuning_objective") or {})


def baseline_factories(ctx: TuneContext, exclude: set[str]) -> dict[str, PolicyFactory]:
    """Every registered policy not in ``exclude`` (the tuned family), with its defaults.

    And LAPS-SD with the paper's defaults. Scale-dependent defaults (queue bounds, quanta)
    use the tuned traces' typical round.
    """
    out = registry_factories([n for n in REGISTRY
                              if n not in exclude and not REGISTRY[n].wraps_policy], ctx.scale)
    out["laps-sd (paper defaults)"] = registry_factories(["laps-sd"], ctx.scale)["laps-sd"]
    return out


def static_label(policy: str) -> str:
    """The held-out row of ``policy`` served as a static priority."""
    return f"{policy} as static priority"


def static_priority_factory(ctx: TuneContext, policy: str, params: PolicyParams | None,
                            ) -> PolicyFactory:
    """``policy`` with ``params`` as a non-preemptive static priority (vLLM, TensorRT-LLM)."""
    parameters = {} if params is None else asdict(params)  # type: ignore[call-overload]
    return registry_factories([STATIC], ctx.scale, {
        STATIC: {"policy": policy, "parameters": parameters, "preemptive": False}})[STATIC]


def compare(ctx: TuneContext, policies: Mapping[str, PolicyFactory]) -> HeldoutResult:
    """Replay the held-out suite under each policy (no row exported yet)."""
    workloads = ctx.spec.suite.with_seeds(HELDOUT_SEEDS).workloads()
    # Traces outer, as the table reads: the case order only changes the row order.
    cases = [c for t in ctx.heldout_sets
             for c in build_cases([t], workloads, ctx.predictions, ctx.updates,
                                  ctx.spec.server.capacity)]
    rows: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in policies}
    specs = {w.text: w for w in workloads}
    for row in replay_matrix(cases, policies, server=ctx.spec.server):
        spec = specs[row.case.workload.name]
        rows.append({**row.metrics.to_dict(), "kind": spec.kind, "load": spec.load,
                     "burst": spec.n if spec.kind == "burst" else None})
        latencies[row.policy].extend(np.round(row.result.latency_s, 4).tolist())
    summary = {}
    for name in policies:
        mine = [r for r in rows if r["policy"] == name]
        summary[name] = HeldoutMetrics(mean_s=float(np.mean([r["mean"] for r in mine])),
                                       p99_s=float(np.mean([r["p99"] for r in mine])),
                                       norm_mean=float(np.mean([r["norm_mean"] for r in mine])))
    return HeldoutResult([w.text for w in workloads], list(HELDOUT_SEEDS),
                         {t: a.n_requests for t, a in ctx.heldout_sets}, rows, summary,
                         latencies)
