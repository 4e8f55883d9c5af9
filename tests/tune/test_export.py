"""What `lapsd tune` exports: a valid config whose scheduler replays the tuned schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lapsd.replay.config import load_config, scheduler_from_config
from lapsd.replay.engine import TraceArrays, simulate
from lapsd.replay.policies.laps_sd import LapsSD, LapsSDParams
from lapsd.replay.trace import read_trace
from lapsd.replay.workload import build_workload

from .conftest import TRACE


def _schedule(policy: Any) -> np.ndarray:
    arrays = TraceArrays.from_trace(read_trace(TRACE))
    workload = build_workload("poisson:load=0.9,n=200,seed=3", arrays, "oracle:sigma=0.5")
    return simulate(arrays, workload, policy).completion_ns


def test_exported_config_runs_the_tuned_schedule(tiny_run: dict[str, Any]) -> None:
    cfg = load_config(tiny_run["config"])
    assert cfg.provenance.traces[0].sha256
    assert "laps-sd (tuned)" in cfg.heldout.policies
    assert "srpt-oracle" in cfg.heldout.policies
    tuned = LapsSDParams(**tiny_run["parameters"])
    assert cfg.policy.params() == tuned
    single = cfg.model_copy(update={"load_bands": None})
    assert np.array_equal(_schedule(scheduler_from_config(single)), _schedule(LapsSD(tuned)))
    assert Path(tiny_run["report"]).is_file()
