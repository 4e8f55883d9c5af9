"""The search space of a policy's parameters, derived from its parameter dataclass.

Every field of the policy's parameters (:mod:`lapsd.replay.policies.params`) that carries a
searched range (a :class:`~lapsd.replay.policies.params.Tunable` with ``low`` and ``high``) or
has a categorical type (``bool``, ``Literal``) is searched, in field order; no bound is written
here. For LAPS-SD that is ``K`` 2..8, ``sup1`` 1..256 typical rounds (log), ``M`` 1.5..8 (log),
``gamma`` 2..20, ``delta`` 1e-5..1e-1 (log), the unit and ``perceptible_first``.

An optional field (``float | None``, e.g. LAPS-SD's ``max_spread``) is searched as a switch
``<name>_on`` and, when on, its range.

A field measured in typical rounds (``Tunable(rounds=True)``, LAPS-SD's ``sup1``) is searched as
``<name>_rounds``, a number of typical rounds, and turned into the unit's amount with
:meth:`TraceScale.per_round`: 16 rounds is 16 x the median round time in seconds, 16 rounds, or
16 x the mean tokens per round. That keeps one range valid for every trace and unit and makes the
default (16 rounds) a point of the space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, get_args

import optuna

from lapsd.replay.policies.base import TraceScale
from lapsd.replay.policies.params import PolicyParams, choices, tunables

P = TypeVar("P", bound=PolicyParams)


@dataclass(frozen=True)
class Dim:
    """One searched parameter: a range (``int`` or ``float``) or categorical ``choices``.

    ``rounds``: the trial value is a number of typical rounds (see the module docstring).
    """

    field: str
    trial_name: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    rounds: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SearchSpace(Generic[P]):
    """The searched parameters of one policy's parameter dataclass.

    Parameters
    ----------
    params_cls
        The parameter dataclass (e.g. :class:`~lapsd.replay.policies.laps_sd.LapsSDParams`).
    scale
        Typical round of the tuned traces; converts fields in typical rounds into their unit.
    fixed
        Fields held at one value (the load bands share one ``gamma``); they stay in the trial
        parameters, as a range of one value.
    given
        Values of fields that are not searched (Gittins' assumed switch cost).
    """

    params_cls: type[P]
    scale: TraceScale
    fixed: Mapping[str, Any] = field(default_factory=dict)
    given: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> list[Dim]:
        """The searched parameters, in field order."""
        out = []
        fields = self.params_cls.__pydantic_fields__  # type: ignore[attr-defined]
        for name, t in tunables(self.params_cls).items():
            if not t.search:
                continue
            options = choices(self.params_cls, name)
            optional = type(None) in get_args(fields[name].annotation)
            kind = ("categorical" if options is not None
                    else "int" if fields[name].annotation is int else "float")
            if name in self.fixed:
                value = self.fixed[name]
                out.append(Dim(name, name, kind, value, value, choices=(value,)))
            elif options is not None:
                out.append(Dim(name, name, kind, choices=options))
            elif t.low is not None and t.high is not None:
                if optional:
                    out.append(Dim(name, f"{name}_on", "categorical", choices=(False, True)))
                out.append(Dim(name, f"{name}_rounds" if t.rounds else name, kind, t.low,
                               t.high, t.log, t.rounds))
        return out

    def suggest(self, trial: optuna.Trial) -> P:
        """Sample one parameter set."""
        values: dict[str, Any] = {}
        for d in self.dims:
            if values.get(f"{d.field}_on") is False:
                continue  # an optional field switched off
            if d.kind == "categorical":
                values[d.trial_name] = trial.suggest_categorical(d.trial_name, list(d.choices))
            elif d.kind == "int":
                values[d.trial_name] = trial.suggest_int(d.trial_name, int(d.low), int(d.high),
                                                         log=d.log)
            else:
                values[d.trial_name] = trial.suggest_float(d.trial_name, d.low, d.high,
                                                           log=d.log)
        return self.to_params(values)

    def to_params(self, trial_params: Mapping[str, Any]) -> P:
        """The scheduler parameters of a trial's sampled values."""
        values: dict[str, Any] = {}
        rounds: dict[str, float] = {}
        for d in self.dims:
            if trial_params.get(f"{d.field}_on") is False:
                values[d.field] = None
            elif d.trial_name == f"{d.field}_on":
                continue
            elif d.trial_name in trial_params:
                if d.rounds:
                    rounds[d.field] = float(trial_params[d.trial_name])
                else:
                    values[d.field] = trial_params[d.trial_name]
        unit = values.get(self.params_cls.unit_field or "", "seconds")
        for name, n in rounds.items():
            values[name] = n * self.scale.per_round(unit)
        # Defaults that depend on the trace (a typical round) come from the tuned traces.
        return cast(P, self.params_cls.with_defaults(self.scale, **self.given, **values))

    def default_trial_params(self) -> dict[str, Any]:
        """The trial values of the policy's defaults (enqueued as the first trial)."""
        return default_trial_params(self.params_cls)

    def describe(self) -> dict[str, Any]:
        """The ranges, for the exported provenance."""
        out: dict[str, Any] = {d.trial_name: list(d.choices) if d.kind == "categorical"
                               else [d.low, d.high] for d in self.dims}
        out["typical_round"] = {"round_s": self.scale.round_s,
                                "tokens_per_round": self.scale.tokens_per_round}
        return out


def default_trial_params(params_cls: type[PolicyParams]) -> dict[str, Any]:
    """The trial values of a parameter dataclass's defaults (fields in rounds: in rounds)."""
    defaults = {f.name: f.default for f in dataclasses.fields(params_cls)}  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for d in SearchSpace(params_cls, TraceScale()).dims:
        t = tunables(params_cls)[d.field]
        if d.trial_name == f"{d.field}_on":
            out[d.trial_name] = defaults[d.field] is not None
        elif d.rounds:
            out[d.trial_name] = float(t.default_rounds or 0)
        elif defaults[d.field] is not None:
            out[d.trial_name] = defaults[d.field]
    return out


def combined_scale(scales: list[TraceScale]) -> TraceScale:
    """One typical round for several traces (the mean of their typical rounds).

    A single scale is used for all traces so that the tuned ``sup1`` is one absolute amount: the
    one the exported config holds.
    """
    n = len(scales)
    return TraceScale(round_s=sum(s.round_s for s in scales) / n,
                      tokens_per_round=sum(s.tokens_per_round for s in scales) / n)
