"""lapsd-config.json: round trip, rejections that name the field, the schema, the schedulers."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.config import (
    ACCEPTANCE_STATISTIC,
    SCHEMA_PATH,
    ConfigError,
    LapsdConfig,
    load_config,
    policy_section,
    scheduler_factory,
    scheduler_from_config,
    schema_text,
    write_config,
)
from lapsd.replay.engine import simulate
from lapsd.replay.policies import construct
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand
from lapsd.replay.policies.gittins import GittinsParams
from lapsd.replay.policies.laps_sd import LapsSD, LapsSDParams
from lapsd.replay.trace import read_trace
from lapsd.replay.workload import build_workload

PARAMS = LapsSDParams(K=5, sup1=0.3, M=2.5, gamma=4, delta=2e-3, unit="seconds")


def bands_section(bands: list[LoadBand]) -> dict[str, Any]:
    return {"by": "waiting_requests",
            "bands": [{"max_waiting": b.max_waiting, "parameters": asdict(b.params)}
                      for b in bands]}


@pytest.fixture
def cfg() -> dict[str, Any]:
    """A complete, valid config as a tuning run writes it."""
    return {
        "version": 2,
        "policy": {"name": "laps-sd", "parameters": asdict(PARAMS), "units": PARAMS.units()},
        "acceptance_statistic": ACCEPTANCE_STATISTIC,
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.001,
                        "c1_s_per_token": 1e-6},
        "prediction": {"source": "predictor", "what_if": False,
                       "predictor": {"path": "predictor.skops", "sha256": "1" * 64},
                       "repredict_every": None},
        "load_bands": None,
        "provenance": {"traces": [{"path": "t", "sha256": "0" * 64}], "workloads": ["burst:n=3"],
                       "study": "lapsd", "trial": 3, "lapsd_version": "0", "n_trials": 10,
                       "created": "2026-12-02T00:00:00+00:00", "holdout_fraction": 0.3},
        "heldout": {"workloads": ["burst:n=3"], "requests": {"t": 5},
                    "policies": {"laps-sd (tuned)": {"mean_s": 1.0, "p99_s": 2.0,
                                                     "norm_mean": 1.1}}},
    }


def test_round_trip(cfg: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "lapsd-config.json"
    write_config(cfg, path)
    assert json.loads(path.read_text()) == cfg
    assert load_config(path) == LapsdConfig.model_validate(cfg)
    assert load_config(path).policy.params() == PARAMS
    assert PARAMS.units()["sup1"] == "seconds" and PARAMS.units()["K"] == "queues"


def test_version_1_files_still_load(cfg: dict[str, Any]) -> None:
    """lapsd 0.1 wrote LAPS-SD configs without the parameters added since (paper values)."""
    old = {k: v for k, v in cfg.items() if k != "prediction"}
    old["version"] = 1
    old["predictor"] = None
    old["predictions"] = "oracle:sigma=0.5"
    old["policy"] = {**cfg["policy"], "parameters": {
        k: v for k, v in cfg["policy"]["parameters"].items()
        if k not in ("length_estimate", "quantile", "max_spread")}}
    loaded = load_config(old)
    assert loaded.version == 2 and loaded.policy.params() == PARAMS
    assert loaded.prediction.what_if and loaded.prediction.source == "oracle:sigma=0.5"


def test_any_registered_policy(cfg: dict[str, Any], examples_dir: Path) -> None:
    gittins = GittinsParams(seconds_per_token=0.01, prior_tokens=8.0, c0=0.001)
    for name, params in (("gittins", gittins), ("lp-srpt", None)):
        other = {**cfg, "policy": policy_section(name, params), "acceptance_statistic": None}
        policy = scheduler_from_config(other)
        assert policy.name == name
        assert np.array_equal(_schedule(policy, examples_dir),
                              _schedule(construct(name, params), examples_dir))
    with pytest.raises(ConfigError, match=r"^policy[.]name: unknown policy 'sjf'"):
        load_config({**cfg, "policy": {"name": "sjf", "parameters": {}, "units": {}}})
    with pytest.raises(ConfigError, match=r"^policy[.]parameters: policy 'lp-srpt' takes none"):
        load_config({**cfg, "policy": {"name": "lp-srpt", "parameters": {"K": 3},
                                       "units": {}}})
    bad = policy_section("gittins", gittins)
    bad["parameters"]["switch_weight"] = -1
    with pytest.raises(ConfigError, match=r"^policy[.]parameters[.]switch_weight: "):
        load_config({**cfg, "policy": bad})
    with pytest.raises(ConfigError, match=r"^\(top level\): load bands hold LAPS-SD"):
        load_config({**cfg, "policy": policy_section("gittins", gittins),
                     "load_bands": bands_section([LoadBand(None, PARAMS)])})


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(version=3), "version"),
    (lambda c: c.pop("version"), "version"),
    (lambda c: c["policy"]["parameters"].pop("K"), "policy.parameters.K"),
    (lambda c: c.pop("switch_cost"), "switch_cost"),
    (lambda c: c["policy"]["parameters"].update(M=0.5), "policy.parameters.M"),
    (lambda c: c["policy"]["parameters"].update(K=0), "policy.parameters.K"),
    (lambda c: c["policy"]["parameters"].update(K=65), "policy.parameters.K"),
    (lambda c: c["policy"]["parameters"].update(unit="hours"), "policy.parameters.unit"),
    (lambda c: c["policy"]["parameters"].update(color="red"), "policy.parameters.color"),
    (lambda c: c["switch_cost"].update(c0_s=-1), "switch_cost.c0_s"),
    (lambda c: c["provenance"].pop("study"), "provenance.study"),
    (lambda c: c["prediction"].pop("what_if"), "prediction.what_if"),
    (lambda c: c.update(load_bands={"by": "waiting_requests", "bands": [
        {"max_waiting": None, "parameters": {**c["policy"]["parameters"], "gamma": 1}}]}),
     "load_bands.bands.0.parameters.gamma"),
])
def test_rejection_names_field(cfg: dict[str, Any], edit: Any, field: str,
                               tmp_path: Path) -> None:
    bad = copy.deepcopy(cfg)
    edit(bad)
    pattern = rf"^{field.replace('.', '[.]')}: "
    with pytest.raises(ConfigError, match=pattern):
        load_config(bad)
    with pytest.raises(ConfigError, match=pattern):
        write_config(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=pattern):
        load_config(tmp_path / "bad.json")


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_config(tmp_path / "x.json")


def test_committed_schema_is_the_generated_one() -> None:
    """``lapsd-config.schema.json`` is generated from the model (python -m lapsd.replay.config)."""
    assert SCHEMA_PATH.read_text() == schema_text()
    schema = json.loads(SCHEMA_PATH.read_text())
    k = schema["$defs"]["LapsSDParams"]["properties"]["K"]
    assert (k["minimum"], k["maximum"]) == (1, 64)
    names = [v["properties"]["name"]["const"]
             for v in schema["$defs"]["PolicySection"]["oneOf"]]
    assert {"laps-sd", "gittins", "lp-srpt"} <= set(names)


def _schedule(policy: Any, examples_dir: Path) -> np.ndarray:
    arrays = TraceArrays.from_trace(read_trace(examples_dir / "specbench-vicuna7b-eagle"))
    workload = build_workload("poisson:load=0.9,n=200,seed=3", arrays, "oracle:sigma=0.5")
    return simulate(arrays, workload, policy).completion_ns


def test_config_builds_the_scheduler(cfg: dict[str, Any], tmp_path: Path,
                                     examples_dir: Path) -> None:
    expected = _schedule(LapsSD(PARAMS), examples_dir)
    assert np.array_equal(_schedule(scheduler_from_config(cfg), examples_dir), expected)
    path = tmp_path / "c.json"
    write_config(cfg, path)
    make = scheduler_factory(path)
    assert make() is not make()
    assert np.array_equal(_schedule(make(), examples_dir), expected)


def test_bands_with_one_parameter_set_match_laps_sd(examples_dir: Path) -> None:
    """Re-placing requests at band changes is exact: identical bands give LAPS-SD's schedule."""
    bands = [LoadBand(3, PARAMS), LoadBand(10, PARAMS), LoadBand(None, PARAMS)]
    banded = BandedLapsSD(bands)
    assert np.array_equal(_schedule(banded, examples_dir),
                          _schedule(LapsSD(PARAMS), examples_dir))
    assert banded.switches > 0


def test_banded_config_builds_banded_scheduler(cfg: dict[str, Any],
                                               examples_dir: Path) -> None:
    other = LapsSDParams(K=6, sup1=0.2, M=3.0, gamma=PARAMS.gamma, delta=1e-2, unit="rounds")
    banded = {**cfg, "load_bands": bands_section([LoadBand(5, PARAMS), LoadBand(None, other)])}
    policy = scheduler_from_config(banded)
    assert isinstance(policy, BandedLapsSD)
    assert [b.params for b in policy.bands] == [PARAMS, other]
    expected = _schedule(BandedLapsSD([LoadBand(5, PARAMS), LoadBand(None, other)]),
                         examples_dir)
    assert np.array_equal(_schedule(policy, examples_dir), expected)
    unordered = {**cfg, "load_bands": bands_section([LoadBand(None, PARAMS),
                                                     LoadBand(5, other)])}
    with pytest.raises(ConfigError, match=r"^load_bands"):
        load_config(unordered)
