"""Split-conformal calibration of the length beliefs, per target model.

The model gives a log-length score ``f(prompt)``; a target model ``m`` adds its verbosity
offset ``b_m``, and the belief is log-normal around ``f + b_m`` with spread ``sigma_m``. Both
come from residuals ``r = log(true length) - f`` that the model did not train on (out-of-fold
predictions, or a user's own answers for a model the predictor has never seen):

* ``b_m`` is the median residual (the belief's median; log residuals are skewed by very short
  answers, so the mean would shift the interval), shrunk toward the pooled offset when ``m``
  has few examples;
* ``sigma_m`` is the split-conformal radius: the ``ceil((n + 1) * level) / n`` empirical
  quantile of ``|r - b_m|``, divided by the standard normal quantile of ``(1 + level) / 2``, so
  that the central ``level`` interval ``exp(f + b_m ± z sigma_m)`` covers at least ``level`` of
  exchangeable new lengths. A model with fewer than :data:`MIN_SIGMA_EXAMPLES` residuals gets
  the pooled sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.replay.lognormal import ndtri

#: The interval level calibrated (the nominal 80% interval).
LEVEL = 0.8
#: Pseudo-examples of the pooled offset added to a model's own when averaging its residuals.
SHRINK = 10.0
#: Fewest residuals of a model for a sigma of its own.
MIN_SIGMA_EXAMPLES = 30


def conformal_sigma(residuals: np.ndarray, level: float = LEVEL) -> float:
    """The log-normal sigma whose central ``level`` interval covers ``level`` of residuals.

    Split-conformal: the ``ceil((n + 1) level) / n`` quantile of ``|residuals|`` (centred
    residuals expected), over the normal quantile of ``(1 + level) / 2``.
    """
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    if r.size == 0:
        raise LapsdError("no residuals to calibrate on: pass examples of the target model")
    q = min(1.0, math.ceil((r.size + 1) * level) / r.size)
    return float(np.quantile(r, q, method="higher")) / ndtri(0.5 + level / 2)


@dataclass
class Calibration:
    """Offsets and spreads per target model, and the pooled ones for other models.

    Attributes
    ----------
    offsets, sigmas, counts
        Per target model: log offset, log-normal sigma, residuals they came from.
    pooled_offset, pooled_sigma
        For a model without a calibration of its own (from all residuals).
    level
        The calibrated central-interval level.
    """

    offsets: dict[str, float] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    pooled_offset: float = 0.0
    pooled_sigma: float = 1.0
    level: float = LEVEL

    @classmethod
    def fit(cls, residuals: np.ndarray, models: Sequence[str],
            level: float = LEVEL) -> Calibration:
        """Calibrate on ``residuals = log(true) - f`` of examples answered by ``models``."""
        r = np.asarray(residuals, dtype=np.float64)
        names = np.asarray(models, dtype=object)
        out = cls(pooled_offset=0.0, pooled_sigma=1.0, level=level)
        # Pooled: every model centred on its own offset, then one spread.
        centred = np.empty_like(r)
        for m in sorted(set(models)):
            mask = names == m
            centred[mask] = r[mask] - np.median(r[mask])
        out.pooled_offset = float(np.median(r))
        out.pooled_sigma = conformal_sigma(centred, level)
        for m in sorted(set(models)):
            out.add(m, r[names == m])
        return out

    def add(self, model: str, residuals: np.ndarray) -> None:
        """Calibrate (or recalibrate) one target model from its residuals."""
        r = np.asarray(residuals, dtype=np.float64)
        n = r.size
        offset = (n * float(np.median(r)) + SHRINK * self.pooled_offset) / (n + SHRINK)
        self.offsets[model] = float(offset)
        self.sigmas[model] = (conformal_sigma(r - offset, self.level)
                              if n >= MIN_SIGMA_EXAMPLES else self.pooled_sigma)
        self.counts[model] = int(n)

    def resolve(self, model: str | None, *, strict: bool = False) -> tuple[float, float]:
        """``(offset, sigma)`` of ``model``.

        The pooled ones for ``None`` and, unless ``strict``, for a model without a calibration
        of its own.

        Raises
        ------
        LapsdError
            With ``strict``, when ``model`` has no calibration of its own.
        """
        if model is not None and model in self.offsets:
            return self.offsets[model], self.sigmas[model]
        if strict and model is not None:
            raise LapsdError(
                f"target model {model!r} has no calibration in this predictor (it knows "
                f"{sorted(self.offsets)}); calibrate it on a few hundred of its own answers "
                "with `lapsd predict calibrate --model M.skops --data TRACE_OR_ANSWERS "
                f"--target-model {model} --out M2.skops`, or leave --target-model out to use "
                "the pooled calibration")
        return self.pooled_offset, self.pooled_sigma

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in predictor files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """The inverse of :meth:`to_dict`."""
        return cls(**d)
