"""Latency metrics of one replay, normalised by the clairvoyant reference on the same workload."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lapsd.replay.engine import SimResult
from lapsd.replay.policies.base import NS_PER_S


@dataclass(frozen=True)
class Metrics:
    """Summary of one replay (latencies in seconds).

    ``norm_mean`` and ``norm_p99`` are the mean and p99 latency over those of the reference
    (``srpt-oracle``) on the same workload; ``est_error`` is LAPS-SD's mean relative error of the
    execution-time estimate made when a request became perceptible, against the service it
    really needed.
    """

    policy: str
    workload: str
    trace: str
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
    norm_p99: float | None = None
    est_error: float | None = None
    est_count: int = 0

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return asdict(self)


def summarize_result(result: SimResult, *, policy: str | None = None, trace: str = "",
                     reference: Metrics | None = None) -> Metrics:
    """:class:`Metrics` of one :class:`SimResult`.

    Parameters
    ----------
    policy
        The name to report (default: the policy's registry name).
    trace
        The trace the workload replayed.
    reference
        Metrics of the reference policy on the same workload, to normalise by.
    """
    lat = result.latency_s
    start = int(result.arrival_ns.min())
    span_s = max(int(result.completion_ns.max()) - start, 1) / NS_PER_S
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    est_error, est_count = None, 0
    if result.estimates:
        jobs = np.fromiter(result.estimates.keys(), dtype=np.int64)
        est = np.fromiter(result.estimates.values(), dtype=np.float64)
        true = result.service_ns[jobs] / NS_PER_S
        timed = true > 0  # a relative error needs some service to be relative to
        if timed.any():
            est_error = float(np.mean(np.abs(est[timed] - true[timed]) / true[timed]))
            est_count = int(timed.sum())
    mean = float(lat.mean())
    return Metrics(
        policy=policy or result.policy, workload=result.workload, trace=trace,
        requests=int(lat.size), mean=mean, p50=float(p50), p90=float(p90), p99=float(p99),
        throughput_rps=lat.size / span_s,
        throughput_tps=float(result.output_tokens.sum()) / span_s,
        preemptions=result.preemptions,
        switch_share=result.switch_ns / NS_PER_S / span_s,
        rounds=result.rounds, decisions=result.decisions,
        norm_mean=None if reference is None else _ratio(mean, reference.mean),
        norm_p99=None if reference is None else _ratio(float(p99), reference.p99),
        est_error=est_error, est_count=est_count,
    )


def _ratio(value: float, reference: float) -> float | None:
    """``value / reference``; ``None`` when the reference is 0 (requests of no service)."""
    return value / reference if reference else None
