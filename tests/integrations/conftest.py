"""Fixtures of the integration tests: a small real predictor and configs that use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lapsd.io import sha256_file
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.config import policy_section, write_config
from lapsd.replay.policies import create
from lapsd.replay.trace import read_trace, trace_digest

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "examples" / "smollm2-layers-28"


@pytest.fixture(scope="session")
def predictor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A predictor trained (fast settings) on the example SmolLM2 trace's prompts."""
    from lapsd.predict.persist import save_predictor
    from lapsd.predict.train import fit_on_arrays

    arrays = TraceArrays.from_trace(read_trace(TRACE))
    predictor = fit_on_arrays([arrays], max_iter=60, inner_folds=3, offset_rounds=1)
    return save_predictor(predictor, tmp_path_factory.mktemp("predictor") / "model.skops")


def write_test_config(path: Path, policy: str, predictor: Path | None,
                      **params: Any) -> Path:
    """A valid config of ``policy`` tuned (nominally) on the example trace."""
    made = create(policy, **params)
    cfg = {
        "version": 2,
        "policy": policy_section(policy, getattr(made, "params", None)),
        "prediction": {"source": "predictor" if predictor else "column", "what_if": False,
                       "predictor": None if predictor is None else
                       {"path": str(predictor), "sha256": sha256_file(predictor)}},
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.0, "c1_s_per_token": 0.0},
        "provenance": {"traces": [{"path": str(TRACE), "sha256": trace_digest(TRACE)}],
                       "workloads": ["burst:n=10"], "study": "test", "lapsd_version": "test",
                       "created": "2026-01-01T00:00:00+00:00"},
        "heldout": {"workloads": ["burst:n=10"],
                    "policies": {policy: {"mean_s": 1.0, "p99_s": 2.0, "norm_mean": 1.1}}},
    }
    write_config(cfg, path)
    return path


@pytest.fixture(scope="session")
def srpt_config(tmp_path_factory: pytest.TempPathFactory, predictor_file: Path) -> Path:
    return write_test_config(tmp_path_factory.mktemp("cfg") / "lapsd-config.json", "lp-srpt",
                             predictor_file)
