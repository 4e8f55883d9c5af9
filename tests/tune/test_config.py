"""lapsd-config.json: round trip, schema rejections that name the field, and the consumers."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from replay.engine import TraceArrays, simulate
from replay.policies.laps_sd import LapsSD, LapsSDParams
from replay.trace import read_trace
from replay.workload import build_workload
from tune.bands import BandedLapsSD, LoadBand
from tune.config import (
    ConfigError,
    bands_section,
    load_config,
    scheduler_factory,
    scheduler_from_config,
    write_config,
)
from tune.run import CONFIG_FILE

from .conftest import TRACE


@pytest.fixture
def cfg(tiny_run: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(tiny_run["config"]).read_text())


def test_round_trip(cfg: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    write_config(cfg, path)
    assert load_config(path) == cfg
    assert cfg["provenance"]["traces"][0]["sha256"]
    assert "laps-sd (tuned)" in cfg["heldout"]["policies"]
    assert "srpt-oracle" in cfg["heldout"]["policies"]


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(version=2), "version"),
    (lambda c: c.pop("version"), "version"),
    (lambda c: c["policy"]["parameters"].pop("K"), "policy.parameters.K"),
    (lambda c: c.pop("switch_cost"), "switch_cost"),
    (lambda c: c["policy"]["parameters"].update(M=0.5), "policy.parameters.M"),
    (lambda c: c["policy"]["parameters"].update(K=0), "policy.parameters.K"),
    (lambda c: c["policy"]["parameters"].update(unit="hours"), "policy.parameters.unit"),
    (lambda c: c["switch_cost"].update(c0_s=-1), "switch_cost.c0_s"),
    (lambda c: c["provenance"].pop("trial"), "provenance.trial"),
    (lambda c: c.update(load_bands={"by": "waiting_requests", "bands": [
        {"max_waiting": None, "parameters": {**c["policy"]["parameters"], "gamma": 1}}]}),
     "load_bands.bands.0.parameters.gamma"),
])
def test_rejection_names_field(cfg: dict[str, Any], edit: Any, field: str,
                               tmp_path: Path) -> None:
    bad = copy.deepcopy(cfg)
    edit(bad)
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}: "):
        load_config(bad)
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}: "):
        write_config(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}: "):
        load_config(tmp_path / "bad.json")


def _schedule(policy: Any) -> np.ndarray:
    arrays = TraceArrays.from_trace(read_trace(TRACE))
    workload = build_workload("poisson:load=0.9,n=200,seed=3", arrays, "oracle:sigma=0.5")
    return simulate(arrays, workload, policy).completion_ns


def test_from_config_runs_the_tuned_schedule(cfg: dict[str, Any],
                                             tiny_run: dict[str, Any]) -> None:
    tuned = LapsSDParams(**tiny_run["parameters"])
    expected = _schedule(LapsSD(tuned))
    assert np.array_equal(_schedule(LapsSD.from_config(tiny_run["config"])), expected)
    cfg_single = {**cfg, "load_bands": None}
    assert np.array_equal(_schedule(scheduler_from_config(cfg_single)), expected)
    path = Path(tiny_run["out"]) / "single.json"
    write_config(cfg_single, path)
    make = scheduler_factory(path)
    assert make() is not make()
    assert np.array_equal(_schedule(make()), expected)


def test_bands_with_one_parameter_set_match_laps_sd(cfg: dict[str, Any]) -> None:
    """Re-placing requests at band changes is exact: identical bands give LAPS-SD's schedule."""
    params = LapsSDParams(**cfg["policy"]["parameters"])
    bands = [LoadBand(3, params), LoadBand(10, params), LoadBand(None, params)]
    banded = BandedLapsSD(bands)
    assert np.array_equal(_schedule(banded), _schedule(LapsSD(params)))
    assert banded.switches > 0


def test_banded_config_builds_banded_scheduler(cfg: dict[str, Any]) -> None:
    params = LapsSDParams(**cfg["policy"]["parameters"])
    other = LapsSDParams(K=6, sup1=0.2, M=3.0, gamma=params.gamma, delta=1e-2, unit="rounds")
    banded = {**cfg, "load_bands": bands_section([LoadBand(5, params), LoadBand(None, other)])}
    policy = scheduler_from_config(banded)
    assert isinstance(policy, BandedLapsSD)
    assert [b.params for b in policy.bands] == [params, other]
    expected = _schedule(BandedLapsSD([LoadBand(5, params), LoadBand(None, other)]))
    assert np.array_equal(_schedule(policy), expected)
    unordered = {**cfg, "load_bands": bands_section([LoadBand(None, params),
                                                     LoadBand(5, other)])}
    with pytest.raises(ConfigError, match=r"^load_bands"):
        load_config(unordered)
