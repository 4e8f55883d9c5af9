"""A trace compiled to flat arrays: what a replay reads of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl

from lapsd.replay.policies.base import NS_PER_S, PrefixSums, TraceScale
from lapsd.replay.trace import Trace, number, prefill_in_rounds


@dataclass(frozen=True)
class TraceArrays:
    """A trace compiled to flat arrays for replay.

    Rounds of request ``i`` are ``offsets[i]:offsets[i+1]`` in the prefix-sum arrays ``cum``
    (``emitted``, ``drafted``, ``accepted``, ``ns``; each of length ``rounds + 1``).
    ``beliefs`` (per round, ``(median, sigma)`` columns, NaN where none) are the re-predictions
    the trace recorded (:data:`~lapsd.replay.trace.OPTIONAL_ROUND_COLUMNS`).
    ``responses`` and ``response_chars`` (per round, -1 where unknown) let a re-predictor see
    the text a request had produced after each round. ``max_new_tokens`` is the output cap the
    trace was produced under (``inf`` when unknown).
    """

    request_ids: list[str]
    offsets: np.ndarray
    cum: dict[str, np.ndarray]
    output_tokens: np.ndarray
    prompt_tokens: np.ndarray
    service_ns: np.ndarray
    categories: list[str | None]
    prompts: list[str | None]
    predicted: np.ndarray | None
    predicted_p90: np.ndarray | None
    scale: TraceScale
    responses: list[str | None] = field(default_factory=list)
    response_chars: np.ndarray | None = None
    beliefs: np.ndarray | None = None
    max_new_tokens: float = math.inf
    target_models: list[str | None] = field(default_factory=list)

    @property
    def n_requests(self) -> int:
        """The number of requests."""
        return len(self.request_ids)

    @cached_property
    def prefix(self) -> PrefixSums:
        """The prefix sums in the form :class:`Rounds` reads."""
        return PrefixSums(self.cum)

    @cached_property
    def stacked(self) -> np.ndarray:
        """The prefix sums as one array, for compiled loops: rows emitted, drafted, accepted, ns."""
        return np.stack([self.cum[f] for f in PrefixSums.FIELDS])

    @classmethod
    def from_trace(cls, trace: Trace) -> TraceArrays:
        """Compile a validated trace.

        A request's first round takes its prefill too (``prefill_s``, where known), unless the
        trace's round times already hold it (:func:`prefill_in_rounds`): a replay's service is
        everything the server spends on the request.

        Unknown ``drafted`` counts (a variable draft length) are taken as the largest
        ``accepted`` of the trace, the smallest draft length consistent with every round: the
        acceptance rate LAPS-SD's stability test watches is then the request's accepted tokens
        per round over that constant, and its execution-time estimate (tokens per round,
        seconds per round) needs no draft count at all.
        """
        req, rnd = trace.requests, trace.rounds
        k_fill = int(number(rnd["accepted"].max()))
        rnd = rnd.with_columns(pl.col("drafted").fill_null(k_fill))
        counts = req["n_rounds"].to_numpy().astype(np.int64)
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ns = np.rint(rnd["round_s"].to_numpy() * NS_PER_S).astype(np.int64)
        if not prefill_in_rounds(trace.manifest) and "prefill_s" in req.columns:
            # the server is busy with a request's prefill before its first round
            prefill = np.rint(req["prefill_s"].fill_null(0.0).to_numpy() * NS_PER_S)
            first = counts > 0
            ns[offsets[:-1][first]] += prefill.astype(np.int64)[first]
        cum = {}
        for name, values in (
            ("emitted", rnd["emitted"].to_numpy()), ("drafted", rnd["drafted"].to_numpy()),
            ("accepted", rnd["accepted"].to_numpy()), ("ns", ns),
        ):
            c = np.zeros(values.size + 1, dtype=np.int64)
            np.cumsum(values, out=c[1:])
            cum[name] = c
        service = cum["ns"][offsets[1:]] - cum["ns"][offsets[:-1]]
        has_pred = "predicted_tokens" in req.columns
        chars = (rnd["response_chars"].fill_null(-1).to_numpy().astype(np.int64)
                 if "response_chars" in rnd.columns else None)
        beliefs = (rnd.select(pl.col("belief_median", "belief_sigma").cast(pl.Float64)
                              .fill_null(np.nan)).to_numpy()
                   if "belief_median" in rnd.columns else None)
        return cls(
            request_ids=req["request_id"].to_list(),
            offsets=offsets,
            cum=cum,
            output_tokens=req["output_tokens"].to_numpy().astype(np.int64),
            prompt_tokens=req["prompt_tokens"].fill_null(0).to_numpy().astype(np.int64),
            service_ns=service,
            categories=req["category"].to_list(),
            prompts=req["prompt"].to_list(),
            predicted=req["predicted_tokens"].to_numpy() if has_pred else None,
            predicted_p90=(req["predicted_tokens_p90"].to_numpy()
                           if "predicted_tokens_p90" in req.columns else None),
            scale=TraceScale(
                round_s=number(rnd["round_s"].median()),
                tokens_per_round=number(rnd["emitted"].mean()),
            ),
            responses=(req["response"].to_list() if "response" in req.columns
                       else [None] * req.height),
            response_chars=chars,
            beliefs=beliefs,
            max_new_tokens=output_cap(trace),
            target_models=req["target_model"].to_list(),
        )

    def subset(self, indices: np.ndarray) -> TraceArrays:
        """The requests at ``indices`` as a trace of their own (for tuning/held-out splits)."""
        idx = np.asarray(indices, dtype=np.int64)
        counts = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        cum = {}
        for name, c in self.cum.items():
            values = np.diff(c)[rows]
            out = np.zeros(values.size + 1, dtype=np.int64)
            np.cumsum(values, out=out[1:])
            cum[name] = out
        pick = idx.tolist()
        return TraceArrays(
            request_ids=[self.request_ids[i] for i in pick],
            offsets=offsets,
            cum=cum,
            output_tokens=self.output_tokens[idx],
            prompt_tokens=self.prompt_tokens[idx],
            service_ns=self.service_ns[idx],
            categories=[self.categories[i] for i in pick],
            prompts=[self.prompts[i] for i in pick],
            predicted=None if self.predicted is None else self.predicted[idx],
            predicted_p90=None if self.predicted_p90 is None else self.predicted_p90[idx],
            scale=self.scale,
            responses=[self.responses[i] for i in pick],
            response_chars=None if self.response_chars is None else self.response_chars[rows],
            beliefs=None if self.beliefs is None else self.beliefs[rows],
            max_new_tokens=self.max_new_tokens,
            target_models=[self.target_models[i] for i in pick],
        )


def output_cap(trace: Trace) -> float:
    """The ``max_new_tokens`` a trace was produced under, or ``inf`` when it does not say.

    A collected trace records it; otherwise the longest request that stopped for length.
    """
    collector = trace.manifest.get("collector") or {}
    if collector.get("max_new_tokens"):
        return float(collector["max_new_tokens"])
    capped = trace.requests.filter(pl.col("finish_reason") == "length")["output_tokens"]
    return number(capped.max()) if capped.len() else math.inf
