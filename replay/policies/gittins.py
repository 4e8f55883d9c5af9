"""Gittins-index scheduling over each request's own predicted length distribution.

With sizes known only in distribution, serving the job of highest Gittins index minimises mean
response time on one server (Gittins; Scully and Harchol-Balter's SOAP framework derives it for
M/G/1). Here each request has its own belief (:class:`~lapsd.replay.estimate.LengthPrediction`,
calibrated by the predictor, refreshed when it re-predicts), so its index
``G(g) = sup_d P(L - g <= d | L > g) / E[min(L - g, d) | L > g]`` after ``g`` tokens is computed
from that belief (tabulated, :mod:`lapsd.replay.lognormal`). Speculative decoding makes a
token's cost differ by request: the index is turned into time with the request's own observed
seconds per token (acceptance-aware), blended with the trace's typical seconds per token for
its first rounds. A request's *rank* is ``seconds per token / G(g)``: expected work per unit of
completion probability; smaller runs first, preemptively at round boundaries.

Switches cost time (``c0 + c1 * context``, the preempted request's KV cache out and back).
The running request keeps the server unless a waiting one's rank plus ``switch_weight`` times
that cost is below its own: the exchange argument for two jobs (running the rival first delays
the current one by the rival's work plus the switch), so the policy does not thrash.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass
from typing_extensions import override

from lapsd.replay import kernels, timeshare
from lapsd.replay.lognormal import gittins_beliefs, gittins_table
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    TraceScale,
    prediction_of,
)
from lapsd.replay.policies.params import (
    MAX_AMOUNT,
    PARAMS_CONFIG,
    PolicyParams,
    Tunable,
    build,
)
from lapsd.replay.policies.registry import register

#: The largest finite ``prior_tokens``: already the typical cost alone for any real request
#: (larger ones overflow the ranks' float arithmetic; ``inf`` says it directly).
MAX_PRIOR_TOKENS = 1e15


def _finite_at_most_max_or_inf(tokens: float) -> float:
    if MAX_PRIOR_TOKENS < tokens < math.inf:
        raise ValueError(f"Input should be at most {MAX_PRIOR_TOKENS:g}, or inf to ignore the "
                         "request's own cost per token")
    return tokens


@dataclass(frozen=True, config=PARAMS_CONFIG)
class GittinsParams(PolicyParams):
    """Parameters of :class:`Gittins`.

    Parameters
    ----------
    seconds_per_token
        The typical seconds per token of the served workload (its median round time over its
        mean tokens per round): a request's cost per token before its own rounds say more.
        Default: from the served trace.
    prior_tokens
        How many tokens' worth of that typical cost is blended into a request's observed cost
        per token; ``inf`` ignores the request's own acceptance entirely.
    c0, c1
        The switch cost the policy assumes, seconds per preemption and per context token of
        the preempted request (set from the deployment's measured cost).
    switch_weight
        How much of that cost a rival's rank must overcome to preempt (0: preempt freely).
    """

    unit_field = None

    seconds_per_token: Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False),
                                 Tunable("seconds per token", search=False)] = 0.012
    prior_tokens: Annotated[float, Field(ge=0), AfterValidator(_finite_at_most_max_or_inf),
                            Tunable("tokens", 0.5, 256.0, log=True)] = 16.0
    c0: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False),
                  Tunable("seconds per preemption", search=False, switch_cost="c0")] = 0.0
    c1: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False),
                  Tunable("seconds per context token", search=False, switch_cost="c1")] = 0.0
    switch_weight: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False),
                             Tunable("-", 0.0, 4.0)] = 1.0

    @classmethod
    def with_defaults(cls, scale: Any = None, **given: Any) -> GittinsParams:
        """Parameters from ``given``; the typical cost per token from ``scale``'s trace."""
        if scale is not None and "seconds_per_token" not in given:
            given["seconds_per_token"] = scale.round_s / max(scale.tokens_per_round, 1e-9)
        return build(cls, given)


@register
class Gittins(Policy[RequestState]):
    """Serve the request with the best Gittins rank (see the module docstring)."""

    name = "gittins"
    needs_prediction = True
    Params = GittinsParams
    shares = True

    def __init__(self, params: GittinsParams | None = None) -> None:
        super().__init__()
        p = self.params = params or GittinsParams.with_defaults(TraceScale())
        self._r0 = p.seconds_per_token * NS_PER_S
        self._c0, self._c1 = p.c0 * NS_PER_S, p.c1 * NS_PER_S
        self._h, self._arg = gittins_table()

    def _rank(self, st: RequestState) -> float:
        pred = st.prediction
        return kernels.gittins_rank(pred.median, pred.sigma, pred.cap, st.generated,
                                    st.service_ns, self._r0, self.params.prior_tokens,
                                    self._h, self._arg)

    def _key(self, st: RequestState) -> tuple:
        return (self._rank(st), st.seq)

    @override
    def _shared_key(self, st: RequestState, i: int, state: timeshare.State) -> tuple:
        return (float(state.key[i]), st.seq)  # the kernel's gittins_rank of the same counters

    def admission_rank(self, info: RequestInfo) -> float:
        """The rank at zero attained service, seconds: typical cost per token / ``G(0)``."""
        pred = prediction_of(info)
        return kernels.gittins_rank(pred.median, pred.sigma, pred.cap, 0, 0, self._r0,
                                    self.params.prior_tokens, self._h, self._arg) / NS_PER_S

    def _running_key(self, st: RequestState) -> tuple:
        # The rival must beat the running request's rank by the cost of switching it out.
        switch = self._c0 + self._c1 * (st.info.prompt_tokens + st.generated)
        return (st.key[0] - self.params.switch_weight * switch, st.seq)

    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        rival = self._rival()
        pred = st.prediction
        c = rounds.arrays
        n, _ = kernels.gittins_run(
            c["emitted"], c["ns"], rounds.start, rounds.n, st.generated, st.service_ns,
            st.info.prompt_tokens + st.generated, pred.median, pred.sigma, pred.cap, self._r0,
            self.params.prior_tokens, self._c0, self._c1, self.params.switch_weight, self._h,
            self._arg, st.seq, rival is not None,
            0.0 if rival is None else float(rival[0]), 0 if rival is None else rival[1])
        return n

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        key = np.fromiter((st.key[0] for st in self._states.values()), np.float64, n)
        p = self.params
        median, sigma, cap = self._beliefs(n)
        return timeshare.State(
            timeshare.GITTINS, key=key, median=median, sigma=sigma, cap=cap,
            terms=gittins_beliefs(median, sigma, cap), r0=self._r0,
            prior=float(p.prior_tokens), c0=self._c0, c1=self._c1,
            weight=float(p.switch_weight), h=self._h, arg=self._arg)
