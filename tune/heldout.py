"""Held-out comparison: the tuned family beside every other baseline and paper LAPS-SD.

Every policy replays the same held-out workloads (requests whose prompts the tuner never saw,
with seeds the tuner never used); each row is normalised by ``srpt-oracle`` on the same workload.
The exported policy also gets a row as a static priority (``<policy> as static priority``): its
admission rank fixed for each request's life, non-preemptive, which is what vLLM's and
TensorRT-LLM's priority scheduling can run of it (``lapsd export-priorities``). The gap to the
online policy's row is what serving it through priorities alone loses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from lapsd.replay.matrix import (
    PolicyFactory,
    Server,
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


def compare(ctx: TuneContext, policies: Mapping[str, PolicyFactory]) -> dict[str, Any]:
    """Replay the held-out suite under each policy.

    Returns
    -------
    dict
        ``workloads``: the workload strings; ``rows``: one :class:`Metrics` dict per trace,
        workload and policy (with ``kind``, ``load`` and ``burst``); ``summary``: per policy,
        the means over rows of ``mean_s``, ``p99_s`` and ``norm_mean``; ``latencies``: per
        policy, the latencies (seconds) of all its held-out requests, for the CDF.
    """
    workloads = ctx.spec.suite.with_seeds(HELDOUT_SEEDS).workloads()
    # Traces outer, as the table reads: the case order only changes the row order.
    cases = [c for t in ctx.heldout_sets
             for c in build_cases([t], workloads, ctx.predictions, ctx.updates)]
    rows: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in policies}
    specs = {w.text: w for w in workloads}
    for row in replay_matrix(cases, policies, server=Server(ctx.spec.switch)):
        spec = specs[row.case.workload.name]
        rows.append({**row.metrics.to_dict(), "kind": spec.kind, "load": spec.load,
                     "burst": spec.n if spec.kind == "burst" else None})
        latencies[row.policy].extend(np.round(row.result.latency_s, 4).tolist())
    summary = {}
    for name in policies:
        mine = [r for r in rows if r["policy"] == name]
        summary[name] = {
            "mean_s": float(np.mean([r["mean"] for r in mine])),
            "p99_s": float(np.mean([r["p99"] for r in mine])),
            "norm_mean": float(np.mean([r["norm_mean"] for r in mine])),
        }
    return {"workloads": [w.text for w in workloads], "seeds": list(HELDOUT_SEEDS),
            "requests": {t: a.n_requests for t, a in ctx.heldout_sets},
            "rows": rows, "summary": summary, "latencies": latencies}
