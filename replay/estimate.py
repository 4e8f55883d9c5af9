"""Estimates shared by the schedulers and the reports.

* :class:`LengthPrediction`: a request's predicted output length as a log-normal belief, with the
  expected remaining length given that ``g`` tokens are already out (what LAPS-SD and lp-srpt need
  once a request outlives its prediction).
* :func:`window_variance`: the stability statistic of LAPS-SD (variance of the running acceptance
  rate over the last ``gamma`` rounds), vectorised so that a whole run of rounds is tested at once.
* :func:`service_estimate`: the paper's execution-time estimate
  ``T = L * (k t_draft + t_verify) / (k A + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

_Z90 = 1.2815515655446004  # standard normal 0.9 quantile


@dataclass(frozen=True, slots=True)
class LengthPrediction:
    """Predicted output length of one request.

    The belief is log-normal: ``log L ~ Normal(log(median), sigma)``. A point prediction is the
    case ``sigma = 0``.

    Parameters
    ----------
    median
        Predicted median output length in tokens (> 0).
    sigma
        Spread of the belief in log space (>= 0); from the predictor's quantiles, or the noise of
        the noisy oracle.
    """

    median: float
    sigma: float = 0.0

    @classmethod
    def from_quantiles(cls, p50: float, p90: float | None) -> LengthPrediction:
        """Fit the log-normal to a median and a 0.9 quantile (as the predictor gives them)."""
        p50 = max(float(p50), 1.0)
        if p90 is None or not math.isfinite(p90) or p90 <= p50:
            return cls(p50, 0.0)
        return cls(p50, (math.log(p90) - math.log(p50)) / _Z90)

    def remaining(self, generated: np.ndarray) -> np.ndarray:
        """Expected tokens still to come after ``generated`` tokens, never below 1.

        Before the median: ``median - g`` (the paper's ``max(L_hat - g, 1)``). Past it, the
        log-normal's conditional mean ``E[L | L > g] - g`` (or 1 token for a point prediction).
        """
        g = np.array(generated, dtype=np.float64, ndmin=1)
        out = self.median - g
        past = out < 1.0
        if past.any():
            if self.sigma > 1e-9:
                out[past] = _conditional_mean(np.log(self.median), self.sigma, g[past]) - g[past]
            np.maximum(out, 1.0, out=out)
        return out

    def remaining_one(self, generated: int) -> float:
        """:meth:`remaining` for one value (same arithmetic, scalar result)."""
        if self.median - generated >= 1.0:
            return self.median - generated
        return float(self.remaining(generated)[0])


def _conditional_mean(mu: float, sigma: float, g: np.ndarray) -> np.ndarray:
    """``E[L | L > g]`` for ``log L ~ Normal(mu, sigma)``, computed in log space for stability."""
    lg = np.log(np.maximum(g, 1e-12))
    log_num = mu + 0.5 * sigma * sigma + log_ndtr((mu + sigma * sigma - lg) / sigma)
    log_den = log_ndtr((mu - lg) / sigma)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = np.exp(log_num - log_den)
    # Far in the tail both terms underflow; the conditional mean then tends to g itself.
    return np.where(np.isfinite(mean) & (mean > g), mean, g)


def window_variance(history: np.ndarray, new: np.ndarray, gamma: int) -> np.ndarray:
    """Variance of the last ``gamma`` values ending at each entry of ``new``.

    ``history`` holds the values before ``new`` (only its last ``gamma - 1`` matter). Entries whose
    window is not full yet are ``inf``. The result for a value does not depend on how the values
    were split between calls, so round-by-round and batched observation agree bit for bit.
    """
    full = np.concatenate((history[-(gamma - 1):] if gamma > 1 else history[:0], new))
    out = np.full(new.shape[0], np.inf)
    if full.shape[0] >= gamma:
        rows = full.shape[0] - gamma + 1
        # Window w is full[w : w + gamma]; its j-th values across windows are full[j : j + rows].
        # Summing column by column repeats the same additions in the same order whatever the
        # number of windows (numpy's pairwise reductions would not guarantee that).
        total = full[0:rows].copy()
        for j in range(1, gamma):
            total += full[j : j + rows]
        mean = total / gamma
        d = full[0:rows] - mean
        sq = d * d
        for j in range(1, gamma):
            d = full[j : j + rows] - mean
            sq += d * d
        var = sq / gamma
        # window w ends at full[w + gamma - 1]; new[i] sits at full[offset + i]
        offset = full.shape[0] - new.shape[0]
        first = offset - gamma + 1
        take = var[max(first, 0):]
        out[out.shape[0] - take.shape[0]:] = take
    return out


def service_estimate(tokens: np.ndarray | float, round_cost: np.ndarray | float,
                     tokens_per_round: np.ndarray | float) -> np.ndarray | float:
    """Execution time of ``tokens`` more tokens: ``tokens * round_cost / tokens_per_round``.

    ``tokens_per_round`` is the observed ``k * A_hat + 1``; ``round_cost`` is
    ``k * t_draft + t_verify`` (measured mean round time of the request) in the attained-service
    unit.
    """
    return tokens * round_cost / tokens_per_round
