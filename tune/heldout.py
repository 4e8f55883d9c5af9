"""Held-out comparison: tuned LAPS-SD beside untuned LAPS-SD and every baseline.

Every policy replays the same held-out workloads (requests whose prompts the tuner never saw,
with seeds the tuner never used); each row is normalised by ``srpt-oracle`` on the same workload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from replay.engine import simulate
from replay.metrics import Metrics, normalize, summarize_result
from replay.policies import REGISTRY, create
from replay.policies.base import Policy
from replay.workload import build_workload, parse_workload
from tune.context import TuneContext

#: Seeds of the held-out workloads (the tuning suite uses small seeds).
HELDOUT_SEEDS = (101, 102)


def baseline_factories(ctx: TuneContext) -> dict[str, Callable[[], Policy]]:
    """Every registered policy except LAPS-SD, plus LAPS-SD with its untuned defaults.

    Scale-dependent defaults (queue bounds, quanta) use the tuned traces' typical round.
    """
    scale = ctx.space.scale
    out: dict[str, Callable[[], Policy]] = {}
    for name in REGISTRY:
        if name != "laps-sd":
            out[name] = lambda name=name: create(name, scale)
    out["laps-sd (default)"] = lambda: create("laps-sd", scale)
    return out


def compare(ctx: TuneContext, policies: Mapping[str, Callable[[], Policy]]) -> dict[str, Any]:
    """Replay the held-out suite under each policy.

    Returns
    -------
    dict
        ``workloads``: the workload strings; ``rows``: one :class:`Metrics` dict per trace,
        workload and policy (with ``trace`` and ``load``); ``summary``: per policy, the means
        over rows of ``mean_s``, ``p99_s`` and ``norm_mean``; ``latencies``: per policy, the
        latencies (seconds) of all its held-out requests, for the CDF.
    """
    suite = ctx.spec.suite.with_seeds(HELDOUT_SEEDS)
    rows: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in policies}
    for trace, arrays in ctx.heldout_sets:
        for wl in suite.workloads():
            workload = build_workload(wl, arrays, ctx.predictions)
            spec = parse_workload(wl)
            metrics: list[Metrics] = []
            for name, make in policies.items():
                result = simulate(arrays, workload, make(), switch=ctx.spec.switch)
                metrics.append(replace(summarize_result(result), policy=name))
                latencies[name].extend(np.round(result.latency_s, 4).tolist())
            for m in normalize(metrics):
                rows.append({**m.to_dict(), "trace": trace, "kind": spec.kind,
                             "load": spec.load, "burst": spec.n if spec.kind == "burst" else None})
    summary = {}
    for name in policies:
        mine = [r for r in rows if r["policy"] == name]
        summary[name] = {
            "mean_s": float(np.mean([r["mean"] for r in mine])),
            "p99_s": float(np.mean([r["p99"] for r in mine])),
            "norm_mean": float(np.mean([r["norm_mean"] for r in mine])),
        }
    return {"workloads": suite.workloads(), "seeds": list(HELDOUT_SEEDS),
            "requests": {t: a.n_requests for t, a in ctx.heldout_sets},
            "rows": rows, "summary": summary, "latencies": latencies}
