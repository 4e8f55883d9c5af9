"""``lapsd-config.json``: the scheduler a server runs, read and validated.

A server needs this module and the policies, nothing else: no optuna, no scikit-learn.
:mod:`lapsd.tune` writes configs; this module owns their format. :class:`LapsdConfig` is the one
model of the file: it validates it, names the first bad field (``policy.parameters.K: Input
should be less than or equal to 64 (got 65)``) and generates its JSON Schema
(``lapsd-config.schema.json`` beside this module; ``python -m lapsd.replay.config`` rewrites it).

Fields of version 1:

``version``
    Format version (1).
``policy``
    ``name`` (``laps-sd``), ``parameters`` (:class:`~lapsd.replay.policies.laps_sd.LapsSDParams`)
    and ``units`` (the unit of each parameter: ``sup1`` is in the attained-service unit).
``acceptance_statistic``
    What ``gamma`` and ``delta`` apply to: the running acceptance rate.
``switch_cost``
    The preemption cost model the parameters were tuned under.
``predictor``, ``predictions``
    The length predictor (path and sha256) the parameters were tuned with, or ``null`` and the
    prediction source used instead.
``load_bands``
    ``null``, or parameter sets by the number of requests in the system
    (:class:`~lapsd.replay.policies.banded.BandedLapsSD`).
``pareto_front``
    With a second objective: every Pareto-optimal trial.
``provenance``
    Trace hashes, workloads, study, trial, search space, lapsd version, date.
``heldout``
    Held-out metrics of the exported scheduler beside every baseline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lapsd.errors import LapsdError
from lapsd.io import atomic_write_text
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand, check_bands
from lapsd.replay.policies.base import Policy
from lapsd.replay.policies.laps_sd import LapsSD, LapsSDParams
from lapsd.replay.policies.params import describe, file_model

VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("lapsd-config.schema.json")
SCHEMA_ID = "https://github.com/lapsd/lapsd/replay/lapsd-config.schema.json"

ACCEPTANCE_STATISTIC = {
    "name": "running_acceptance_rate",
    "definition": "accepted draft tokens / drafted tokens over the rounds a request has run so "
                  "far, recorded after each round; a request is stable when the variance of its "
                  "last gamma values is at most delta",
}

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: LAPS-SD's parameters as a config holds them: every field spelled out.
LapsSDFields = file_model(LapsSDParams)


class ConfigError(LapsdError):
    """An invalid config; the message starts with the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicySection(_Strict):
    """The exported policy and its parameters."""

    name: Literal["laps-sd"]
    parameters: LapsSDFields  # type: ignore[valid-type]
    units: dict[str, str]

    def params(self) -> LapsSDParams:
        """The parameters as the policy takes them."""
        return _params(self.parameters)


class AcceptanceStatistic(BaseModel):
    """What the stability test of LAPS-SD looks at."""

    name: Literal["running_acceptance_rate"]
    definition: str


class SwitchCostSection(_Strict):
    """The preemption cost ``c0 + c1 * context_tokens`` the parameters were tuned under."""

    model: Literal["c0 + c1 * context_tokens"]
    c0_s: NonNegative
    c1_s_per_token: NonNegative


class FileRef(_Strict):
    """A file and its SHA-256."""

    path: str
    sha256: Sha256


class Band(_Strict):
    """Parameters used while at most ``max_waiting`` requests are in the system (null: last)."""

    max_waiting: Annotated[int, Field(ge=1)] | None
    parameters: LapsSDFields  # type: ignore[valid-type]


class LoadBands(_Strict):
    """Parameter sets by the number of requests in the system."""

    by: Literal["waiting_requests"]
    bands: Annotated[list[Band], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> LoadBands:
        check_bands(self.load_bands())
        return self

    def load_bands(self) -> list[LoadBand]:
        """The bands as :class:`~lapsd.replay.policies.banded.LoadBand` objects."""
        return [LoadBand(b.max_waiting, _params(b.parameters)) for b in self.bands]


class ParetoPoint(BaseModel):
    """One Pareto-optimal trial of a two-objective study."""

    trial: Annotated[int, Field(ge=0)]
    values: list[float]
    parameters: LapsSDFields  # type: ignore[valid-type]


class Provenance(BaseModel):
    """Where the config came from (further fields are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    traces: Annotated[list[FileRef], Field(min_length=1)]
    workloads: list[str]
    study: str
    trial: Annotated[int, Field(ge=0)]
    lapsd_version: str
    created: str
    storage: str | None = None
    n_trials: Annotated[int, Field(ge=1)] | None = None
    objective: str | None = None
    search_space: dict[str, Any] | None = None
    seed: int | None = None


class HeldoutMetrics(BaseModel):
    """Held-out metrics of one policy (means over the held-out workloads)."""

    model_config = ConfigDict(extra="allow")

    mean_s: NonNegative
    p99_s: NonNegative
    norm_mean: NonNegative


class Heldout(BaseModel):
    """The exported scheduler beside every baseline on held-out prompts."""

    model_config = ConfigDict(extra="allow")

    workloads: list[str]
    policies: dict[str, HeldoutMetrics]
    requests: dict[str, int] | None = None


class LapsdConfig(_Strict):
    """``lapsd-config.json`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", title="lapsd-config.json: a tuned scheduler "
                                                    "for serving")

    version: Literal[1]
    policy: PolicySection
    acceptance_statistic: AcceptanceStatistic
    switch_cost: SwitchCostSection
    predictor: FileRef | None
    predictions: str | None = None
    load_bands: LoadBands | None
    pareto_front: list[ParetoPoint] | None = None
    provenance: Provenance
    heldout: Heldout

    def scheduler(self) -> Policy:
        """A fresh scheduler: :class:`BandedLapsSD` with load bands, else :class:`LapsSD`."""
        if self.load_bands is not None:
            return BandedLapsSD(self.load_bands.load_bands())
        return LapsSD(self.policy.params())

    def to_json(self) -> str:
        """The file's text (fields left unset when read stay unset)."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"


def _params(fields: BaseModel) -> LapsSDParams:
    return LapsSDParams(**fields.model_dump())


def parse_config(data: Any, where: str = "") -> LapsdConfig:
    """Validate a parsed config.

    Raises
    ------
    ConfigError
        With the offending field first.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}(top level): a config is a JSON object, got "
                          f"{type(data).__name__}")
    if "version" not in data:
        raise ConfigError(f"{prefix}version: missing (required)")
    if data["version"] != VERSION:
        raise ConfigError(f"{prefix}version: unsupported config version {data['version']!r}; "
                          f"this lapsd reads version {VERSION}")
    try:
        return LapsdConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(prefix + describe(exc)) from None


def load_config(source: str | Path | Mapping[str, Any] | LapsdConfig) -> LapsdConfig:
    """Read (if a path) and validate a config.

    Raises
    ------
    ConfigError
        When the file is missing or not JSON, or a field is invalid (named first).
    """
    if isinstance(source, LapsdConfig):
        return source
    if isinstance(source, Mapping):
        return parse_config(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (write one with `lapsd tune`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"(top level): {path} is not JSON: {exc}") from None
    return parse_config(data)


def write_config(cfg: LapsdConfig | Mapping[str, Any], path: str | Path) -> None:
    """Validate, then write atomically (nothing is written when validation fails)."""
    atomic_write_text(path, load_config(cfg).to_json())


def scheduler_from_config(source: str | Path | Mapping[str, Any] | LapsdConfig) -> Policy:
    """A fresh scheduler from a config (see :meth:`LapsdConfig.scheduler`)."""
    return load_config(source).scheduler()


def scheduler_factory(source: str | Path | Mapping[str, Any] | LapsdConfig,
                      ) -> Callable[[], Policy]:
    """A zero-argument builder of fresh schedulers from a config (read and checked once)."""
    return load_config(source).scheduler


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``lapsd-config.json``, generated from :class:`LapsdConfig`."""
    schema = LapsdConfig.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema}


def schema_text() -> str:
    """:func:`json_schema` as the text of ``lapsd-config.schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    atomic_write_text(SCHEMA_PATH, schema_text())
    sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
