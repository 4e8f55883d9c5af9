"""What `lapsd tune` exports: the family's best, a valid config whose scheduler replays the
tuned schedule, the comparison on held-out prompts, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.config import load_config, scheduler_from_config
from lapsd.replay.engine import simulate
from lapsd.replay.policies import construct
from lapsd.replay.policies.banded import BandedLapsSD
from lapsd.replay.trace import read_trace
from lapsd.replay.workload import build_workload
from lapsd.tune.run import TuneResult

from .conftest import BATCHED_SPEC, COST_TABLE, TRACE, WHAT_IF


def _schedule(policy: Any) -> np.ndarray:
    arrays = TraceArrays.from_trace(read_trace(TRACE))
    workload = build_workload("poisson:load=0.9,n=200,seed=3", arrays, WHAT_IF)
    return simulate(arrays, workload, policy).completion_ns


def test_the_best_member_on_the_tuning_suite_is_exported(tiny_run: TuneResult) -> None:
    cfg = load_config(tiny_run.config)
    assert cfg.version == 2
    family = cfg.family
    assert family is not None and set(family) == {"laps-sd", "gittins", "lp-srpt"}
    best = min(family, key=lambda name: family[name].tuning_objective)
    assert cfg.policy.name == best == tiny_run.policy
    assert family["lp-srpt"].trials == 1 and family["laps-sd"].trials == 5
    # The exported parameters replay the exported schedule.
    expected = _schedule(construct(cfg.policy.name, cfg.policy.params()))
    assert np.array_equal(_schedule(scheduler_from_config(cfg)), expected)
    # The what-if is labelled as such.
    assert cfg.prediction.what_if and cfg.prediction.source == WHAT_IF
    assert cfg.prediction.predictor is None


def test_heldout_compares_every_member_and_baseline(tiny_run: TuneResult) -> None:
    cfg = load_config(tiny_run.config)
    names = set(cfg.heldout.policies)
    assert {"laps-sd (tuned)", "gittins (tuned)", "lp-srpt", "srpt-oracle", "fcfs", "las",
            "mlfq", "lp-sjf", "laps-sd (paper defaults)"} <= names
    assert cfg.heldout.exported in names
    # The exported policy as a server's static priority has a row of its own.
    assert f"{cfg.policy.name} as static priority" in names
    verdict = cfg.heldout.verdict
    assert verdict is not None and verdict == str(tiny_run.verdict)
    summary = cfg.heldout.policies
    mine = summary[cfg.heldout.exported].norm_mean
    others = [m.norm_mean for n, m in summary.items()
              if n not in (cfg.heldout.exported, "srpt-oracle")]
    # The verdict says the truth about the held-out comparison.
    assert verdict.startswith("WARNING") == (mine > min(others))
    heldout = json.loads((Path(tiny_run.out) / "heldout.json").read_text())
    assert heldout["verdict"] == verdict


def test_bands_are_tuned_for_laps_sd(banded_run: TuneResult) -> None:
    cfg = load_config(banded_run.config)
    assert cfg.policy.name == "laps-sd" and cfg.acceptance_statistic is not None
    assert banded_run.banded_objective is not None
    assert "laps-sd (banded)" in cfg.heldout.policies
    if banded_run.bands_exported:
        assert isinstance(scheduler_from_config(cfg), BandedLapsSD)
    else:
        assert cfg.load_bands is None


def test_a_batched_run_tunes_and_compares_on_its_server(batched_run: TuneResult) -> None:
    from lapsd.replay.batch import simulate_batched
    from lapsd.replay.costs import BatchCost
    from lapsd.tune.context import load_context
    from lapsd.tune.heldout import HELDOUT_SEEDS

    cfg = load_config(batched_run.config)
    cost = BatchCost.from_profile(COST_TABLE)
    server = cfg.provenance.model_dump()["server"]
    assert server["batch_size"] == 4 and server["capacity"] == pytest.approx(4 / cost.factor(4))
    assert "H200" in server["step_cost"]
    # Every held-out row is a batched replay at loads of the batched server's capacity.
    heldout = json.loads((Path(batched_run.out) / "heldout.json").read_text())
    ctx = load_context(BATCHED_SPEC)
    name, arrays = ctx.heldout_sets[0]
    spec = ctx.spec.suite.with_seeds(HELDOUT_SEEDS).workloads()[-1]
    assert spec.kind == "poisson"
    workload = build_workload(spec, arrays, capacity=4 / cost.factor(4))
    result = simulate_batched(arrays, workload, construct("fcfs"), 4, cost=cost)
    row, = (r for r in heldout["rows"] if r["policy"] == "fcfs" and r["trace"] == name
            and r["workload"] == spec.text)
    assert row["mean"] == pytest.approx(float(np.mean(result.latency_s)), rel=1e-9)
    at_one = simulate(arrays, build_workload(spec, arrays), construct("fcfs"))
    # At batch size one's arrival rate the same server would hardly queue: the loads differ.
    assert float(np.mean(at_one.latency_s)) != pytest.approx(row["mean"], rel=0.05)
