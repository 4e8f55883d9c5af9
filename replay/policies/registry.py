"""The policy registry: policies register themselves by name; :func:`create` builds one.

A module of its own so that the policy modules import :func:`register` from below them, not
from the package that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar, cast

from lapsd.errors import LapsdError
from lapsd.replay.policies.base import Policy, TraceScale
from lapsd.replay.policies.params import ParamsError

REGISTRY: dict[str, type[Policy[Any]]] = {}

P = TypeVar("P", bound=Policy[Any])


def register(cls: type[P]) -> type[P]:
    """Class decorator: make a policy available under ``cls.name``."""
    if cls.name in REGISTRY:
        raise TypeError(f"policy name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered policy names."""
    return list(REGISTRY)


def parameters(name: str) -> list[str]:
    """Names of the settable parameters of a policy."""
    params = getattr(_lookup(name), "Params", None)
    return [f.name for f in fields(params)] if params is not None else []


def _lookup(name: str) -> type[Policy[Any]]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise LapsdError(f"unknown policy {name!r}; available: {', '.join(REGISTRY)}") from None


def create(name: str, scale: TraceScale | None = None, **params: Any) -> Policy[Any]:
    """Build a registered policy.

    Parameters
    ----------
    name
        Registry name (``fcfs``, ``las``, ``mlfq``, ``lp-sjf``, ``lp-srpt``, ``srpt-oracle``,
        ``laps-sd``, ``gittins``, ``static-priority``).
    scale
        Typical round time and tokens per round of the workload; sets the defaults of
        scale-dependent parameters (queue thresholds) that are not given.
    **params
        Parameters of the policy's ``Params`` dataclass.
    """
    cls = _lookup(name)
    params_cls = getattr(cls, "Params", None)
    if params_cls is None:
        if params:
            raise ParamsError(f"policy {name!r} takes no parameters (got {sorted(params)})")
        return cls()
    try:
        params_obj = params_cls.with_defaults(scale or TraceScale(), **params)
    except ParamsError as exc:
        raise ParamsError(f"policy {name!r}: {exc}; its parameters: "
                          f"{', '.join(parameters(name))}") from None
    return construct(name, params_obj)


def construct(name: str, params: Any = None) -> Policy[Any]:
    """A policy from its registry name and its parameters object (``None``: it takes none)."""
    cls = _lookup(name)
    if params is None:
        return cls()
    # A policy with a Params class takes its parameters as the one constructor argument.
    return cast(Callable[[Any], Policy[Any]], cls)(params)
