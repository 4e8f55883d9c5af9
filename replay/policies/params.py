"""Policy parameters: validated dataclasses whose fields say their range, unit and search space.

Each policy with parameters declares a frozen pydantic dataclass (``config=PARAMS_CONFIG``,
subclassing :class:`PolicyParams`). A field's type carries, in its ``Annotated`` metadata,
everything about it that other code needs, written once:

* its valid range (pydantic ``Field(ge=..., le=...)``): checked whenever parameters are built,
  whether from code, ``--set``, a config file or a tuning trial;
* a :class:`Tunable`: the unit the value is in, and the range the tuner searches (the search
  space of :mod:`lapsd.tune` is derived from it, and so is the JSON Schema of the config).

Bad values raise :class:`ParamsError`, which names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict

from lapsd.errors import LapsdError

Unit = Literal["seconds", "rounds", "tokens"]
UNITS: tuple[Unit, ...] = get_args(Unit)


class ParamsError(LapsdError):
    """Invalid policy parameters; the message starts with the offending field."""


@dataclass(frozen=True)
class Tunable:
    """What a parameter means and how the tuner searches it (``Annotated`` metadata).

    Parameters
    ----------
    unit
        The unit of the value; ``{unit}`` stands for the policy's attained-service unit.
    low, high
        The searched range (inclusive). ``None`` for categorical fields (``bool`` and
        ``Literal`` types are searched over all their values) and for fields not searched.
    log
        Search the range on a log scale.
    rounds
        The range is in *typical rounds* and the value in ``{unit}``: a trial samples a number
        of rounds and the value is that many times one typical round in the unit (see
        :meth:`lapsd.replay.policies.base.TraceScale.per_round`). The default is then
        ``default_rounds`` typical rounds of the served trace.
    default_rounds
        With ``rounds``: the default, in typical rounds.
    search
        Whether the tuner searches this parameter at all.
    switch_cost
        ``"c0"`` or ``"c1"``: the value is the deployment's switch cost of that name (the
        tuning spec's), given to every trial rather than searched.
    """

    unit: str = "-"
    low: float | None = None
    high: float | None = None
    log: bool = False
    rounds: bool = False
    default_rounds: float | None = None
    search: bool = True
    switch_cost: Literal["c0", "c1"] | None = None


#: The pydantic config of parameter dataclasses: unknown fields are errors, and values have
#: the field's type (no bool for a number, no string for a number, no float for an integer).
PARAMS_CONFIG = ConfigDict(extra="forbid", strict=True)
#: The largest amount a parameter holds, in any unit (seconds: 31 years; tokens, rounds): far
#: beyond any real one, and small enough that thresholds grown by :data:`MAX_GROWTH` per queue
#: and times in nanoseconds stay finite floats.
MAX_AMOUNT = 1e9
#: The largest growth factor of thresholds from one queue to the next.
MAX_GROWTH = 1e3

P = TypeVar("P")


class PolicyParams:
    """Base of parameter dataclasses: defaults that depend on the served trace, and errors."""

    #: Name of the attained-service unit field, when the policy has one.
    unit_field: ClassVar[str | None] = "unit"

    @classmethod
    def with_defaults(cls: type[Any], scale: Any = None, **given: Any) -> Any:
        """Parameters from ``given``; fields in typical rounds default to ``scale``'s rounds.

        Raises
        ------
        ParamsError
            Naming the first invalid or unknown field.
        """
        if scale is not None:
            unit = given.get(cls.unit_field or "") or _field_default(cls, cls.unit_field)
            for name, tunable in tunables(cls).items():
                if tunable.rounds and tunable.default_rounds is not None and name not in given:
                    given[name] = tunable.default_rounds * scale.per_round(unit)
        return build(cls, given)

    def units(self) -> dict[str, str]:
        """The unit of each parameter (``{unit}`` resolved to this set's service unit)."""
        unit = getattr(self, self.unit_field, "-") if self.unit_field else "-"
        return {name: t.unit.replace("{unit}", str(unit))
                for name, t in tunables(type(self)).items()}


def build(cls: Callable[..., P], values: dict[str, Any]) -> P:
    """``cls(**values)``, turning pydantic's error into a :class:`ParamsError`."""
    try:
        return cls(**values)
    except pydantic.ValidationError as exc:
        raise ParamsError(describe(exc)) from None


def describe(exc: pydantic.ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """The first error of a validation error as ``field.path: message (got value)``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{loc}: missing (required)"
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{loc}: unknown field"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{loc}: {msg}{shown}"


def tunables(cls: type[Any]) -> dict[str, Tunable]:
    """The :class:`Tunable` metadata of each field of a parameter dataclass, in field order."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = cls.__pydantic_fields__[f.name].metadata
        out[f.name] = next((m for m in meta if isinstance(m, Tunable)), Tunable())
    return out


def choices(cls: type[Any], name: str) -> tuple[Any, ...] | None:
    """The values of a categorical field (``bool`` or ``Literal``), else ``None``."""
    annotation = cls.__pydantic_fields__[name].annotation
    if annotation is bool:
        return (True, False)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None


def _field_default(cls: type[Any], name: str | None) -> Any:
    if name is None:
        return None
    return cls.__pydantic_fields__[name].default


def file_model(cls: type[Any]) -> type[BaseModel]:
    """A pydantic model of ``cls`` with every field required: parameters as a file holds them.

    A file (a config) must spell out every parameter, so that a default changing in a later
    lapsd never changes what a deployed config means. Same names, types and ranges as ``cls``
    (and so the same JSON Schema constraints); unknown fields are rejected, and so are
    non-finite numbers, which standard JSON cannot hold. It reads instances of ``cls`` too.
    """
    if cls not in _FILE_MODELS:
        fields: dict[str, Any] = {}
        for name, info in cls.__pydantic_fields__.items():
            annotation = (Annotated[(info.annotation, *info.metadata)] if info.metadata
                          else info.annotation)
            fields[name] = (annotation, ...)
        _FILE_MODELS[cls] = pydantic.create_model(
            cls.__name__, __config__=ConfigDict(extra="forbid", from_attributes=True,
                                                strict=True, allow_inf_nan=False),
            __doc__=cls.__doc__, **fields)
    return _FILE_MODELS[cls]


_FILE_MODELS: dict[type, type[BaseModel]] = {}


def parse_assignments(items: Sequence[str], policies: Sequence[str] | None = None,
                      ) -> dict[str, dict[str, Any]]:
    """``policy.param=value`` strings (``--set``) into ``{policy: {param: value}}``.

    Values are parsed as standard JSON where possible, so ``K=6`` is an int and ``unit=rounds``
    a string; a number JSON cannot hold (``NaN``, ``Infinity``, ``1e999``) is an error. With
    ``policies``, each item must name one of them (the policies being run).
    """
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        policy, dot, name = target.rpartition(".")
        if not sep or not dot or not policy or not name:
            raise ParamsError(f"--set {item!r}: expected POLICY.PARAM=VALUE, e.g. laps-sd.K=6")
        if policies is not None and policy not in policies:
            raise ParamsError(f"--set {item!r}: {policy!r} is not a policy being run; these "
                              f"are: {', '.join(policies)}")
        try:
            parsed: Any = standard_json(value)
        except json.JSONDecodeError:
            parsed = value
        except ValueError as exc:
            raise ParamsError(f"--set {item!r}: {exc}; give a finite number") from None
        params.setdefault(policy, {})[name] = parsed
    return params


def standard_json(text: str) -> Any:
    """Parse JSON as its standard defines it (Python's reader also takes NaN and Infinity).

    Raises
    ------
    json.JSONDecodeError
        When ``text`` is not JSON.
    ValueError
        Naming a number standard JSON cannot hold: ``NaN``, ``Infinity`` or one beyond a float's
        range (``1e999``).
    """
    return json.loads(text, parse_float=_finite, parse_constant=_not_a_number)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond a float's range")
    return value


def _not_a_number(text: str) -> float:
    raise ValueError(f"{text} is not a number standard JSON holds")
