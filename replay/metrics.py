"""Latency metrics of replays, and the comparison table of several policies."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from replay.engine import SimResult
from replay.policies.base import NS_PER_S


@dataclass(frozen=True)
class Metrics:
    """Summary of one replay (latencies in seconds).

    ``norm_mean`` is the mean latency over that of ``srpt-oracle`` on the same workload (set by
    :func:`normalize`); ``est_error`` is LAPS-SD's mean relative error of the execution-time
    estimate made when a request became perceptible, against the service it really needed.
    """

    policy: str
    workload: str
    requests: int
    mean: float
    p50: float
    p90: float
    p99: float
    throughput_rps: float
    throughput_tps: float
    preemptions: int
    switch_share: float
    rounds: int
    decisions: int
    norm_mean: float | None = None
    est_error: float | None = None
    est_count: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_result(result: SimResult) -> Metrics:
    """:class:`Metrics` of one :class:`SimResult`."""
    lat = result.latency_s
    start = int(result.arrival_ns.min())
    span_s = max(int(result.completion_ns.max()) - start, 1) / NS_PER_S
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    est_error, est_count = None, 0
    if result.estimates:
        jobs = np.fromiter(result.estimates.keys(), dtype=np.int64)
        est = np.fromiter(result.estimates.values(), dtype=np.float64)
        true = result.service_ns[jobs] / NS_PER_S
        est_error = float(np.mean(np.abs(est - true) / true))
        est_count = int(jobs.size)
    return Metrics(
        policy=result.policy, workload=result.workload, requests=int(lat.size),
        mean=float(lat.mean()), p50=float(p50), p90=float(p90), p99=float(p99),
        throughput_rps=lat.size / span_s,
        throughput_tps=float(result.output_tokens.sum()) / span_s,
        preemptions=result.preemptions,
        switch_share=result.switch_ns / NS_PER_S / span_s,
        rounds=result.rounds, decisions=result.decisions,
        est_error=est_error, est_count=est_count,
    )


def normalize(metrics: list[Metrics], reference: str = "srpt-oracle") -> list[Metrics]:
    """Set ``norm_mean`` = mean latency / the reference policy's on the same workload."""
    ref = {m.workload: m.mean for m in metrics if m.policy == reference}
    out = []
    for m in metrics:
        r = ref.get(m.workload)
        out.append(m if r is None else Metrics(**{**asdict(m), "norm_mean": m.mean / r}))
    return out
