"""``lapsd-config.json``: the scheduler a server runs, read and validated.

A server needs this module and the policies, nothing else: no optuna, no scikit-learn.
:mod:`lapsd.tune` writes configs; this module owns their format. :class:`LapsdConfig` is the one
model of the file: it validates it, names the first bad field (``policy.parameters.K: Input
should be less than or equal to 64 (got 65)``) and generates its JSON Schema
(``lapsd-config.schema.json`` beside this module; ``python -m lapsd.replay.config`` rewrites it).

Fields of version 2:

``version``
    Format version (2; version 1 files, which could only hold LAPS-SD, still load).
``policy``
    ``name`` (any registered policy), ``parameters`` (every field of its parameters, spelled
    out, so that a later lapsd's defaults never change what a deployed config means) and
    ``units`` (the unit of each parameter).
``prediction``
    What the scheduler was tuned with and must be given at run time: ``source`` (``predictor``,
    ``column``, or the noisy-oracle what-if ``oracle:sigma=S``, then ``what_if`` is true),
    ``predictor`` (path and sha256 of the length predictor, or null), ``repredict_every``
    (rounds between re-predictions, or null) and ``recorded_updates`` (true: tuned on the
    re-predictions a probe made while decoding, so a server must give them, as ``lapsd live
    --predictor PROBE`` does).
``switch_cost``
    The preemption cost model the parameters were tuned under.
``load_bands``
    ``null``, or LAPS-SD parameter sets by the number of requests in the system
    (:class:`~lapsd.replay.policies.banded.BandedLapsSD`).
``family``
    The policies the tuner compared, each with its best tuning objective and held-out result:
    why this one was exported.
``pareto_front``
    With a second objective: every Pareto-optimal trial.
``provenance``
    Trace hashes, workloads, studies, search spaces, lapsd version, date.

The files a config names (its predictor, its traces) are recorded relative to the config's own
folder, so that a run folder can move and be used from anywhere: :func:`config_predictor` and
:func:`config_traces` find them and check them against their recorded hashes. Configs of
earlier lapsd versions recorded them relative to the working directory they were made in;
that place is tried second, and the hash decides between the two.
``heldout``
    Held-out metrics of the exported scheduler beside every baseline, and the verdict.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lapsd.errors import LapsdError
from lapsd.io import atomic_write_text, sha256_file
from lapsd.replay.policies import REGISTRY, construct
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand, check_bands
from lapsd.replay.policies.base import Policy
from lapsd.replay.policies.laps_sd import LapsSDParams
from lapsd.replay.policies.params import PolicyParams, describe, file_model, standard_json

VERSION = 2
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
#: LAPS-SD's parameters as a file holds them: every field spelled out.
LapsSDFields = file_model(LapsSDParams)


class ConfigError(LapsdError):
    """An invalid config; the message starts with the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRef(_Strict):
    """A file and its SHA-256."""

    path: str
    sha256: Sha256


def params_class(name: str) -> type[PolicyParams] | None:
    """The parameter dataclass of a registered policy (``None``: it takes none)."""
    return getattr(REGISTRY[name], "Params", None)


class PolicySection(_Strict):
    """The exported policy and its parameters (checked against the policy's own fields)."""

    name: str
    parameters: dict[str, Any]
    units: dict[str, str]

    def params(self) -> PolicyParams | None:
        """The parameters as the policy takes them (``None`` for a policy without any)."""
        cls = params_class(self.name)
        return None if cls is None else cls(**self.parameters)

    def build(self) -> Policy[Any]:
        """A fresh scheduler of this policy."""
        return construct(self.name, self.params())


class PredictionSection(_Strict):
    """What the scheduler's length-aware decisions were tuned with (and must be given)."""

    source: str
    what_if: bool
    predictor: FileRef | None = None
    repredict_every: Annotated[int, Field(ge=1)] | None = None
    recorded_updates: bool = False


class AcceptanceStatistic(BaseModel):
    """What the stability test of LAPS-SD looks at."""

    name: Literal["running_acceptance_rate"]
    definition: str


class SwitchCostSection(_Strict):
    """The preemption cost ``c0 + c1 * context_tokens`` the parameters were tuned under."""

    model: Literal["c0 + c1 * context_tokens"]
    c0_s: NonNegative
    c1_s_per_token: NonNegative


class Band(_Strict):
    """Parameters used while at most ``max_waiting`` requests are in the system (null: last)."""

    max_waiting: Annotated[int, Field(ge=1)] | None
    parameters: LapsSDFields  # type: ignore[valid-type]


class LoadBands(_Strict):
    """LAPS-SD parameter sets by the number of requests in the system."""

    by: Literal["waiting_requests"]
    bands: Annotated[list[Band], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> LoadBands:
        check_bands(self.load_bands())
        return self

    def load_bands(self) -> list[LoadBand]:
        """The bands as :class:`~lapsd.replay.policies.banded.LoadBand` objects."""
        return [LoadBand(b.max_waiting,
                         LapsSDParams(**cast(BaseModel, b.parameters).model_dump()))
                for b in self.bands]


class ParetoPoint(BaseModel):
    """One Pareto-optimal trial of a two-objective study."""

    trial: Annotated[int, Field(ge=0)]
    values: list[float]
    parameters: dict[str, Any]


class FamilyMember(BaseModel):
    """One policy the tuner compared: its best parameters and how it did."""

    model_config = ConfigDict(extra="allow")

    tuning_objective: NonNegative
    parameters: dict[str, Any]
    trials: Annotated[int, Field(ge=1)]
    heldout_norm_mean: NonNegative | None = None


class Provenance(BaseModel):
    """Where the config came from (further fields are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    traces: Annotated[list[FileRef], Field(min_length=1)]
    workloads: list[str]
    study: str
    lapsd_version: str
    created: str
    trial: Annotated[int, Field(ge=0)] | None = None
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
    """The exported scheduler beside every baseline on held-out prompts, and the verdict."""

    model_config = ConfigDict(extra="allow")

    workloads: list[str]
    policies: dict[str, HeldoutMetrics]
    requests: dict[str, int] | None = None
    exported: str | None = None
    verdict: str | None = None


class LapsdConfig(_Strict):
    """``lapsd-config.json`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", title="lapsd-config.json: a tuned scheduler "
                                                    "for serving")

    version: Literal[2]
    policy: PolicySection
    prediction: PredictionSection
    switch_cost: SwitchCostSection
    load_bands: LoadBands | None = None
    acceptance_statistic: AcceptanceStatistic | None = None
    family: dict[str, FamilyMember] | None = None
    pareto_front: list[ParetoPoint] | None = None
    provenance: Provenance
    heldout: Heldout

    @model_validator(mode="after")
    def _bands_are_laps_sd(self) -> LapsdConfig:
        if self.load_bands is not None and not REGISTRY[self.policy.name].load_bands:
            raise ValueError("load bands hold LAPS-SD parameters: the policy must be laps-sd")
        return self

    def scheduler(self) -> Policy[Any]:
        """A fresh scheduler: :class:`BandedLapsSD` with load bands, else the policy."""
        if self.load_bands is not None:
            return BandedLapsSD(self.load_bands.load_bands())
        return self.policy.build()

    def to_json(self) -> str:
        """The file's text (fields left unset when read stay unset)."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"


def _check_policy(section: Mapping[str, Any], where: str) -> None:
    """The policy exists and its parameters are its own, all given and in range."""
    name = section.get("name")
    if name not in REGISTRY:
        raise ConfigError(f"{where}.name: unknown policy {name!r}; this lapsd has "
                          f"{', '.join(REGISTRY)}")
    cls = params_class(name)
    params = section.get("parameters") or {}
    if cls is None:
        if params:
            raise ConfigError(f"{where}.parameters: policy {name!r} takes none, got "
                              f"{sorted(params)}")
        return
    try:
        file_model(cls).model_validate(params)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe(exc, (*where.split("."), "parameters"))) from None


def _from_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 config (LAPS-SD only, lapsd 0.1) as version 2.

    Its LAPS-SD parameters predate ``length_estimate``, ``quantile`` and ``max_spread``: they
    get the paper's values, which is what version 1 ran.
    """
    out = {k: v for k, v in data.items() if k not in ("predictor", "predictions")}
    out["version"] = 2
    paper = {"length_estimate": "paper", "quantile": 0.5, "max_spread": None}

    def upgrade(params: Any) -> Any:
        return {**paper, **params} if isinstance(params, Mapping) else params

    policy = dict(data.get("policy") or {})
    if "parameters" in policy:
        policy["parameters"] = upgrade(policy["parameters"])
    out["policy"] = policy
    if data.get("load_bands"):
        out["load_bands"] = {**data["load_bands"], "bands": [
            {**b, "parameters": upgrade(b.get("parameters"))}
            for b in data["load_bands"].get("bands", [])]}
    if data.get("pareto_front"):
        out["pareto_front"] = [{**p, "parameters": upgrade(p.get("parameters"))}
                               for p in data["pareto_front"]]
    source = data.get("predictions") or "column"
    out["prediction"] = {"source": source, "what_if": str(source).startswith("oracle"),
                         "predictor": data.get("predictor")}
    return out


def parse_config(data: Any, where: str = "") -> LapsdConfig:
    """Validate a parsed config (version 2, or version 1 upgraded).

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
    if data["version"] not in (1, VERSION):
        raise ConfigError(f"{prefix}version: unsupported config version {data['version']!r}; "
                          f"this lapsd reads versions 1 and {VERSION}")
    if data["version"] == 1:
        data = _from_v1(data)
    try:
        if isinstance(data.get("policy"), Mapping):
            _check_policy(data["policy"], "policy")
        for i, point in enumerate(data.get("pareto_front") or []):
            if isinstance(point, Mapping):
                _check_policy({"name": data["policy"].get("name"), **point},
                              f"pareto_front.{i}")
        return LapsdConfig.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
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
        data = standard_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (write one with `lapsd tune`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"(top level): {path} is not JSON: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"(top level): {path} is not standard JSON: {exc}; write finite "
                          "numbers") from None
    return parse_config(data)


def write_config(cfg: LapsdConfig | Mapping[str, Any], path: str | Path) -> None:
    """Validate, then write atomically (nothing is written when validation fails)."""
    atomic_write_text(path, load_config(cfg).to_json())


def scheduler_from_config(source: str | Path | Mapping[str, Any] | LapsdConfig,
                          ) -> Policy[Any]:
    """A fresh scheduler from a config (see :meth:`LapsdConfig.scheduler`)."""
    return load_config(source).scheduler()


def scheduler_factory(source: str | Path | Mapping[str, Any] | LapsdConfig,
                      ) -> Callable[[], Policy[Any]]:
    """A zero-argument builder of fresh schedulers from a config (read and checked once)."""
    return load_config(source).scheduler


def relative_to_config(path: str | Path, config: str | Path) -> str:
    """``path`` as a config written to ``config`` records it: relative to the config's folder."""
    return os.path.relpath(Path(path).absolute(), Path(config).absolute().parent)


def _locate(ref: FileRef, config: str | Path, digest: Callable[[Path], str], what: str,
            fix: str) -> Path:
    """The file ``ref`` of the config at ``config`` names, with the hash it records.

    Tried relative to the config's folder, then (configs of earlier lapsd versions) to the
    working directory; the recorded hash picks the one meant.

    Raises
    ------
    ConfigError
        When neither exists, or what exists is not the file the config was made with (``fix``
        says what to do instead).
    """
    places = list(dict.fromkeys([Path(config).parent / ref.path, Path(ref.path)]))
    found: dict[Path, str | None] = {}
    for place in places:
        if place.exists():
            try:
                found[place] = digest(place)
            except OSError:
                found[place] = None  # not the kind of file the config names
    for place, got in found.items():
        if got == ref.sha256:
            return place
    if not found:
        raise ConfigError(f"{what} {ref.path} of {config} not found (looked in "
                          f"{', '.join(map(str, places))}); {fix}")
    place, got = next(iter(found.items()))
    raise ConfigError(f"{what} {place} is not the one {config} was made with (sha256 "
                      f"{(got or 'unreadable')[:12]}, the config records {ref.sha256[:12]}); "
                      f"{fix}")


def config_predictor(config: str | Path, given: str | Path | None = None,
                     cfg: LapsdConfig | None = None) -> Path | None:
    """The predictor file to run the config at ``config`` with.

    ``given`` (a ``--predictor``) when the config records none; else the config's own, or
    ``given`` when it is that very file (same sha256). ``cfg``: the config, when already read.

    Raises
    ------
    ConfigError
        When the config's predictor is missing or changed, or ``given`` is another one: a
        scheduler is only trusted with the predictor it was tuned with.
    """
    cfg = cfg or load_config(config)
    ref = cfg.prediction.predictor
    if ref is None:
        return None if given is None else Path(given)
    fix = "restore the predictor the config was tuned with, or tune a new config (lapsd tune)"
    if given is None:
        return _locate(ref, config, sha256_file, "predictor", fix)
    got = sha256_file(given) if Path(given).is_file() else "missing"
    if got != ref.sha256:
        raise ConfigError(f"--predictor {given} is not the predictor {config} was tuned with "
                          f"(sha256 {got[:12]}, the config records {ref.sha256[:12]}); leave "
                          "--predictor out to use the config's own, or " + fix)
    return Path(given)


def config_traces(config: str | Path, cfg: LapsdConfig | None = None) -> list[Path]:
    """The trace folders the config at ``config`` was tuned on, checked against their hashes.

    Raises
    ------
    ConfigError
        When one is missing or changed.
    """
    from lapsd.replay.trace import trace_digest

    cfg = cfg or load_config(config)
    return [_locate(ref, config, trace_digest, "trace",
                    "pass the traces to use instead (--calibration TRACE_DIR)")
            for ref in cfg.provenance.traces]


def policy_section(name: str, params: PolicyParams | None) -> dict[str, Any]:
    """The ``policy`` section of a config for a policy and its parameters."""
    if params is None:
        return {"name": name, "parameters": {}, "units": {}}
    return {"name": name, "parameters": asdict(params),  # type: ignore[call-overload]
            "units": params.units()}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``lapsd-config.json``, generated from :class:`LapsdConfig`.

    ``policy`` is spelled out per registered policy (its name and its parameters, all
    required), as :func:`parse_config` checks it.
    """
    schema = LapsdConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for name in REGISTRY:
        cls = params_class(name)
        if cls is None:
            params: dict[str, Any] = {"type": "object", "maxProperties": 0}
        else:
            sub = file_model(cls).model_json_schema(ref_template="#/$defs/{model}")
            defs.update(sub.pop("$defs", {}))
            defs[f"{cls.__name__}"] = sub
            params = {"$ref": f"#/$defs/{cls.__name__}"}
        variants.append({"type": "object", "required": ["name", "parameters", "units"],
                         "properties": {"name": {"const": name}, "parameters": params,
                                        "units": {"type": "object"}}})
    defs["PolicySection"] = {"description": PolicySection.__doc__, "oneOf": variants}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema}


def schema_text() -> str:
    """:func:`json_schema` as the text of ``lapsd-config.schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    atomic_write_text(SCHEMA_PATH, schema_text())
    sys.stdout.write(f"wrote {SCHEMA_PATH}\n")
