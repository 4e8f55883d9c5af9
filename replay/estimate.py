"""Estimates shared by the schedulers and the reports.

* :class:`LengthPrediction`: a request's predicted output length as a log-normal belief, with the
  expected remaining length given that ``g`` tokens are already out (what LAPS-SD and lp-srpt need
  once a request outlives its prediction).

The execution-time estimate ``T = L * (k t_draft + t_verify) / (k A + 1)`` and the stability
test are compiled with the policies' inner loops, in :mod:`lapsd.replay.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lapsd.replay.kernels import remaining_many, remaining_tokens

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
        """Expected tokens still to come after each value of ``generated``, never below 1.

        Before the median: ``median - g`` (the paper's ``max(L_hat - g, 1)``). Past it, the
        log-normal's conditional mean ``E[L | L > g] - g`` (or 1 token for a point prediction).
        """
        return remaining_many(self.median, self.sigma,
                              np.array(generated, dtype=np.float64, ndmin=1))

    def remaining_one(self, generated: int) -> float:
        """:meth:`remaining` for one value."""
        return remaining_tokens(self.median, self.sigma, float(generated))
