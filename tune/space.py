"""The search space of LAPS-SD's parameters, scaled to the trace being tuned.

Every parameter of :class:`~replay.policies.laps_sd.LapsSDParams` is searched:

=====================  ==========================================  ==========================
parameter              range                                       why
=====================  ==========================================  ==========================
``K``                  2 .. 8 queues (int)                          the paper's best K is 4..6;
                                                                    K = 1 is plain SJF/LAS
``sup1``               ``sup1_rounds`` x one typical round, with    the first bound only means
                       ``sup1_rounds`` log-uniform in 1 .. 256      something relative to the
                                                                    trace's round time
``M``                  1.5 .. 8 (log-uniform)                       geometric growth of bounds
``gamma``              2 .. 20 rounds (int)                         stability window
``delta``              1e-5 .. 1e-1 (log-uniform)                   variance tolerance of the
                                                                    running acceptance rate
``unit``               seconds, rounds, tokens                      attained-service unit
``perceptible_first``  true / false                                 the design page's choice
=====================  ==========================================  ==========================

``sup1`` is searched as ``sup1_rounds``, a number of typical rounds, and turned into the unit's
amount with :meth:`TraceScale.per_round`: 16 rounds is 16 x the median round time in seconds,
16 rounds, or 16 x the mean tokens per round. That keeps one range valid for every trace and unit
and makes the default (16 rounds) a point of the space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from replay.policies.base import UNITS, TraceScale
from replay.policies.laps_sd import LapsSDParams

#: Trial parameters of LAPS-SD's defaults (``LapsSDParams.with_defaults``), enqueued first.
DEFAULT_TRIAL_PARAMS: dict[str, Any] = {
    "K": 4, "sup1_rounds": 16.0, "M": 2.0, "gamma": 5, "delta": 1e-3, "unit": "seconds",
    "perceptible_first": True,
}


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the searched parameters (see the module docstring).

    Parameters
    ----------
    scale
        Typical round of the tuned traces; converts ``sup1_rounds`` into ``sup1``.
    """

    scale: TraceScale
    K: tuple[int, int] = (2, 8)
    sup1_rounds: tuple[float, float] = (1.0, 256.0)
    M: tuple[float, float] = (1.5, 8.0)
    gamma: tuple[int, int] = (2, 20)
    delta: tuple[float, float] = (1e-5, 1e-1)

    def suggest(self, trial: optuna.Trial) -> LapsSDParams:
        """Sample one parameter set."""
        values = {
            "K": trial.suggest_int("K", *self.K),
            "sup1_rounds": trial.suggest_float("sup1_rounds", *self.sup1_rounds, log=True),
            "M": trial.suggest_float("M", *self.M, log=True),
            "gamma": trial.suggest_int("gamma", *self.gamma),
            "delta": trial.suggest_float("delta", *self.delta, log=True),
            "unit": trial.suggest_categorical("unit", list(UNITS)),
            "perceptible_first": trial.suggest_categorical("perceptible_first", [True, False]),
        }
        return self.to_params(values)

    def to_params(self, trial_params: Mapping[str, Any]) -> LapsSDParams:
        """The scheduler parameters of a trial's sampled values."""
        values = dict(trial_params)
        rounds = float(values.pop("sup1_rounds"))
        values["sup1"] = rounds * self.scale.per_round(values["unit"])
        return LapsSDParams(**values)

    def describe(self) -> dict[str, Any]:
        """The ranges, for the exported provenance."""
        return {
            "K": list(self.K), "sup1_rounds": list(self.sup1_rounds), "M": list(self.M),
            "gamma": list(self.gamma), "delta": list(self.delta), "unit": list(UNITS),
            "perceptible_first": [True, False],
            "typical_round": {"round_s": self.scale.round_s,
                              "tokens_per_round": self.scale.tokens_per_round},
        }


def combined_scale(scales: list[TraceScale]) -> TraceScale:
    """One typical round for several traces (the mean of their typical rounds).

    A single scale is used for all traces so that the tuned ``sup1`` is one absolute amount: the
    one the exported config holds.
    """
    n = len(scales)
    return TraceScale(round_s=sum(s.round_s for s in scales) / n,
                      tokens_per_round=sum(s.tokens_per_round for s in scales) / n)
