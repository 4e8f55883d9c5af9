"""Fixtures of the tune tests: a tiny suite and one small finished tuning run."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lapsd.tune.context import TuneSpec
from lapsd.tune.run import RunOptions, TuneResult, run_tune
from lapsd.tune.study import FINISHED, SURPLUS, _retried_numbers
from lapsd.tune.suite import Suite

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "examples" / "specbench-vicuna7b-eagle"
#: A measured step-time table with batch rows (H200, SmolLM2-135M, ngram:4).
COST_TABLE = ROOT / "bench" / "results" / "cost_table_h200_smollm2_ngram4_batch.json"

#: Small enough that a trial takes a fraction of a second.
TINY_SUITE = Suite(bursts=(10,), loads=(0.7,), poisson_n=60, seeds=(1,))
TINY_ARGS = ["--bursts", "10", "--loads", "0.7", "--poisson-n", "60", "--seeds", "1"]


#: The noisy-oracle what-if: these tests check the tuner's mechanics, not the predictor.
WHAT_IF = "oracle:sigma=0.5"


#: A run at batch size 4 with a measured step-time table.
BATCHED_SPEC = TuneSpec(traces=(str(TRACE),), suite=TINY_SUITE, predictions=WHAT_IF,
                        policies=("gittins", "lp-srpt"), batch_size=4,
                        batch_cost=str(COST_TABLE))


@pytest.fixture(scope="session")
def tiny_spec() -> TuneSpec:
    return TuneSpec(traces=(str(TRACE),), suite=TINY_SUITE, predictions=WHAT_IF,
                    policies=("laps-sd", "gittins", "lp-srpt"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_spec: TuneSpec) -> TuneResult:
    """A finished run of three policies: 5 trials each (one for lp-srpt)."""
    out = tmp_path_factory.mktemp("tiny-run")
    return run_tune(tiny_spec, RunOptions(out=out, n_trials=5, band_limits=(4,), band_trials=2))


@pytest.fixture(scope="session")
def batched_run(tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    """A finished run at batch size 4 with a measured step-time table: 3 trials of gittins."""
    out = tmp_path_factory.mktemp("batched-run")
    return run_tune(BATCHED_SPEC, RunOptions(out=out, n_trials=3, band_limits=()))


@pytest.fixture(scope="session")
def banded_run(tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    """A finished LAPS-SD-only run with load bands: 5 trials, then 2 per band."""
    out = tmp_path_factory.mktemp("banded-run")
    spec = TuneSpec(traces=(str(TRACE),), suite=TINY_SUITE, predictions=WHAT_IF,
                    policies=("laps-sd",))
    return run_tune(spec, RunOptions(out=out, n_trials=5, band_limits=(4,), band_trials=2))


def check_accounted(study: optuna.Study, target: int) -> None:
    """Exactly ``target`` finished trials; every other trial failed and was retried, is a
    surplus trial, or failed before sampling parameters; nothing left running or waiting; no
    parameter set finished twice."""
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == target
    retried = _retried_numbers(trials)
    for t in trials:
        if t.state == TrialState.FAIL:
            # Retried, surplus, or killed before it sampled anything (nothing to retry).
            assert (t.number in retried or t.user_attrs.get("lapsd") == SURPLUS
                    or not t.params), t
        else:
            assert t.state in FINISHED, t
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == len(keys)
