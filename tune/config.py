"""``lapsd-config.json``: the tuned scheduler a server runs, and its consumer.

The file is versioned and described by ``tune/lapsd-config.schema.json`` (JSON Schema 2020-12);
it is validated when written and when loaded. Its fields:

``version``
    Format version (1).
``policy``
    ``name`` (``laps-sd``), ``parameters`` (:class:`~replay.policies.laps_sd.LapsSDParams`) and
    ``units`` (the unit of each parameter: ``sup1`` is in the attained-service unit).
``acceptance_statistic``
    What ``gamma`` and ``delta`` apply to: the running acceptance rate.
``switch_cost``
    The preemption cost model the parameters were tuned under.
``predictor``, ``predictions``
    The length predictor (path and sha256) the parameters were tuned with, or ``null`` and the
    prediction source used instead.
``load_bands``
    ``null``, or parameter sets by the number of requests in the system
    (:class:`~tune.bands.BandedLapsSD`).
``pareto_front``
    With a second objective: every Pareto-optimal trial.
``provenance``
    Trace hashes, workloads, study, trial, search space, lapsd version, date.
``heldout``
    Held-out metrics of the exported scheduler beside every baseline.

:func:`load_config` rejects an unknown version, a missing field or an out-of-range value with a
message that names the field (``policy.parameters.K: ...``). :func:`scheduler_factory` gives
``lapsd replay --config`` (and a server) fresh schedulers built from a config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from replay.policies.base import Policy
from replay.policies.laps_sd import LapsSD, LapsSDParams
from replay.trace import atomic_write_text
from tune.bands import BandedLapsSD, LoadBand, check_bands

VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("lapsd-config.schema.json")

ACCEPTANCE_STATISTIC = {
    "name": "running_acceptance_rate",
    "definition": "accepted draft tokens / drafted tokens over the rounds a request has run so "
                  "far, recorded after each round; a request is stable when the variance of its "
                  "last gamma values is at most delta",
}


class ConfigError(ValueError):
    """An invalid config; the message starts with the offending field."""


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of ``lapsd-config.json``."""
    return json.loads(SCHEMA_PATH.read_text())


def param_units(unit: str) -> dict[str, str]:
    """The unit of each LAPS-SD parameter when attained service is measured in ``unit``."""
    return {"K": "queues", "sup1": unit, "M": "ratio (bound growth per queue)",
            "gamma": "rounds", "delta": "variance of the acceptance rate", "unit": "-",
            "perceptible_first": "-"}


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first invalid field of ``cfg``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"(top level): a config is a JSON object, got {type(cfg).__name__}")
    if "version" not in cfg:
        raise ConfigError("version: missing (required)")
    if cfg["version"] != VERSION:
        raise ConfigError(f"version: unsupported config version {cfg['version']!r}; this lapsd "
                          f"reads version {VERSION}")
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = [k for k in error.validator_value if k not in error.instance]
            raise ConfigError(f"{_field([*path, missing[0]])}: missing (required)")
        raise ConfigError(f"{_field(path)}: {error.message}")
    sets = [("policy.parameters", cfg["policy"]["parameters"])]
    if cfg["load_bands"] is not None:
        sets += [(f"load_bands.bands.{i}.parameters", b["parameters"])
                 for i, b in enumerate(cfg["load_bands"]["bands"])]
        try:
            _bands(cfg)
        except ValueError as exc:
            raise ConfigError(f"load_bands.bands: {exc}") from None
    for where, params in sets:
        try:
            LapsSDParams(**params)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read (if a path) and validate a config; return it as a dict.

    Raises
    ------
    ConfigError
        With the offending field first: ``policy.parameters.M: 0.5 is less than or equal to
        the minimum of 1``.
    """
    if isinstance(source, Mapping):
        cfg = dict(source)
    else:
        try:
            cfg = json.loads(Path(source).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"(top level): {source} is not JSON: {exc}") from None
    validate_config(cfg)
    return cfg


def write_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Validate, then write atomically."""
    validate_config(cfg)
    atomic_write_text(path, json.dumps(cfg, indent=2) + "\n")


def policy_section(params: LapsSDParams) -> dict[str, Any]:
    return {"name": "laps-sd", "parameters": asdict(params), "units": param_units(params.unit)}


def bands_section(bands: list[LoadBand] | None) -> dict[str, Any] | None:
    if bands is None:
        return None
    return {"by": "waiting_requests",
            "bands": [{"max_waiting": b.max_waiting, "parameters": asdict(b.params)}
                      for b in bands]}


def _bands(cfg: Mapping[str, Any]) -> list[LoadBand]:
    bands = [LoadBand(b["max_waiting"], LapsSDParams(**b["parameters"]))
             for b in cfg["load_bands"]["bands"]]
    check_bands(bands)
    return bands


def scheduler_from_config(source: str | Path | Mapping[str, Any]) -> Policy:
    """A fresh scheduler from a config: :class:`BandedLapsSD` with load bands, else LAPS-SD."""
    cfg = load_config(source)
    if cfg["load_bands"] is not None:
        return BandedLapsSD(_bands(cfg))
    return LapsSD.from_config(cfg)


def scheduler_factory(path: str | Path) -> Callable[[], Policy]:
    """A zero-argument builder of fresh schedulers from the config at ``path`` (read once)."""
    cfg = load_config(path)
    return lambda: scheduler_from_config(cfg)
