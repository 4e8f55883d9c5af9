"""The length belief a scheduler is given about each request.

:class:`LengthPrediction` is a request's predicted output length as a distribution: capped
log-normal, ``L = min(X, cap)`` with ``log X ~ Normal(log median, sigma)`` (``cap`` is the
server's ``max_new_tokens``). For a request that has produced ``g`` tokens it answers what a
scheduler needs: the remaining length's conditional mean and quantiles given ``L > g``
(:mod:`lapsd.replay.lognormal` computes them, compiled, for the policies' inner loops). Policies
read these; they never re-derive them.

A prediction may be replaced while the request runs (re-prediction from the output so far): a
server calls :meth:`~lapsd.replay.policies.base.Policy.update_prediction`; the simulator
delivers a workload's precomputed updates at the rounds they were made for.

The execution-time estimate ``T = L * (k t_draft + t_verify) / (k A + 1)`` and the stability
test are compiled with the policies' inner loops, in :mod:`lapsd.replay.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lapsd.replay.lognormal import (
    conditional_mean,
    conditional_quantile,
    gittins_index,
    gittins_table,
    log_survival,
    remaining_tokens,
)

_Z90 = 1.2815515655446004  # standard normal 0.9 quantile


@dataclass(frozen=True, slots=True)
class LengthPrediction:
    """Predicted output length of one request (a capped log-normal belief).

    Parameters
    ----------
    median
        Median of the uncapped length ``X``, in tokens (> 0).
    sigma
        Spread of ``log X`` (>= 0); 0 is a point prediction.
    cap
        The most tokens the request may produce (the server's ``max_new_tokens``), or
        ``inf`` when unknown.
    """

    median: float
    sigma: float = 0.0
    cap: float = math.inf

    @classmethod
    def from_quantiles(cls, p50: float, p90: float | None, cap: float = math.inf,
                       ) -> LengthPrediction:
        """Fit the log-normal to a median and a 0.9 quantile (as the predictor gives them)."""
        p50 = max(float(p50), 1.0)
        if p90 is None or not math.isfinite(p90) or p90 <= p50:
            return cls(p50, 0.0, cap)
        return cls(p50, (math.log(p90) - math.log(p50)) / _Z90, cap)

    def remaining_one(self, generated: int) -> float:
        """The paper's remaining length after ``generated`` tokens (at least 1).

        ``min(median, cap) - g`` while positive, then the conditional mean (see
        :func:`~lapsd.replay.lognormal.remaining_tokens`).
        """
        return remaining_tokens(self.median, self.sigma, self.cap, float(generated))

    def mean_remaining(self, generated: int) -> float:
        """``E[L - g | L > g]``: expected tokens still to come (at least 1)."""
        return conditional_mean(self.median, self.sigma, self.cap, float(generated))

    def quantile_remaining(self, generated: int, q: float) -> float:
        """The ``q``-quantile of the tokens still to come, given ``L > g`` (at least 1)."""
        return conditional_quantile(self.median, self.sigma, self.cap, float(generated), q)

    def survival(self, tokens: float) -> float:
        """``P(L > tokens)``."""
        if tokens >= self.cap:
            return 0.0
        return math.exp(log_survival(self.median, self.sigma, float(tokens)))

    def gittins_index(self, generated: int) -> float:
        """The Gittins index after ``generated`` tokens, per token (higher: serve first).

        ``sup_d P(L - g <= d | L > g) / E[min(L - g, d) | L > g]``, see
        :mod:`lapsd.replay.lognormal`.
        """
        return gittins_index(self.median, self.sigma, self.cap, float(generated),
                             *gittins_table())
