"""Trace format: validation errors name file, column and row; writes are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from sim_reference import synthetic_trace

from lapsd.errors import LapsdError
from lapsd.replay.trace import (
    REQUESTS_FILE,
    ROUNDS_FILE,
    Trace,
    TraceError,
    read_trace,
    summarize,
    write_trace,
)


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    return write_trace(synthetic_trace(1), tmp_path / "t")


def _rewrite(path: Path, name: str, fn) -> None:
    df = pl.read_parquet(path / name)
    fn(df).write_parquet(path / name)


def test_round_trip(trace_dir: Path) -> None:
    original = synthetic_trace(1)
    again = read_trace(trace_dir)
    assert again.requests.equals(original.requests)
    assert again.rounds.equals(original.rounds)
    s = summarize(again)
    assert s["requests"] == original.n_requests and s["rounds"] == original.n_rounds
    assert 0 < s["acceptance_rate"] < 1


@pytest.mark.parametrize(("table", "mutate", "column", "row", "message"), [
    (ROUNDS_FILE, lambda d: d.drop("accepted"), "accepted", None, "missing column"),
    (ROUNDS_FILE, lambda d: d.with_columns(pl.col("emitted").cast(pl.String)), "emitted", None,
     "wrong type"),
    (ROUNDS_FILE, lambda d: d.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.col("drafted") + 1)
        .otherwise(pl.col("accepted")).alias("accepted")), "accepted", 5, "accepted > drafted"),
    (REQUESTS_FILE, lambda d: d.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("r0")).otherwise(pl.col("request_id"))
        .alias("request_id")), "request_id", 3, "duplicated request_id"),
    (ROUNDS_FILE, lambda d: d.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit(0)).otherwise(pl.col("emitted"))
        .alias("emitted")), "emitted", 2, "emitted must be >= 1"),
])
def test_bad_traces_name_the_problem(trace_dir, table, mutate, column, row, message):
    _rewrite(trace_dir, table, mutate)
    with pytest.raises(TraceError, match=message) as exc:
        read_trace(trace_dir)
    assert exc.value.column == column
    assert exc.value.row == row
    assert exc.value.path.endswith(table)


def test_request_without_rounds(trace_dir: Path) -> None:
    _rewrite(trace_dir, ROUNDS_FILE, lambda d: d.filter(pl.col("request_id") != "r4"))
    with pytest.raises(TraceError, match="'r4' has no rounds") as exc:
        read_trace(trace_dir)
    assert exc.value.row == 4


def test_corrupt_parquet(trace_dir: Path) -> None:
    (trace_dir / ROUNDS_FILE).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TraceError, match="corrupt or not Parquet") as exc:
        read_trace(trace_dir)
    assert exc.value.path.endswith(ROUNDS_FILE)


def test_unsupported_schema_version(trace_dir: Path) -> None:
    manifest = json.loads((trace_dir / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (trace_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceError, match="schema_version 99"):
        read_trace(trace_dir)


def test_failed_write_leaves_old_trace(trace_dir: Path, monkeypatch) -> None:
    before = read_trace(trace_dir)
    bad = Trace(before.requests, before.rounds.drop("emitted"), before.manifest)
    with pytest.raises(TraceError):
        write_trace(bad, trace_dir, overwrite=True)

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(OSError, match="disk full"):
        write_trace(before, trace_dir, overwrite=True)
    monkeypatch.undo()
    assert read_trace(trace_dir).rounds.equals(before.rounds)
    assert sorted(p.name for p in trace_dir.parent.iterdir()) == ["t"]


def test_refuses_to_overwrite(trace_dir: Path) -> None:
    with pytest.raises(LapsdError, match="pass --force"):
        write_trace(read_trace(trace_dir), trace_dir)


def test_prefill_is_service_of_the_first_round(examples_dir: Path) -> None:
    """A collection times prefills apart: the replay adds each to its request's first round;
    a live trace's round 0 already holds it, so nothing is added twice."""
    from dataclasses import replace

    import numpy as np

    from lapsd.replay.arrays import TraceArrays

    trace = read_trace(examples_dir / "smollm2-ngram4")
    arrays = TraceArrays.from_trace(trace)
    prefill = trace.requests["prefill_s"].to_numpy()
    rounds = trace.rounds.group_by("request_id", maintain_order=True).agg(
        pl.col("round_s").sum(), pl.col("round_s").first().alias("first"))
    assert prefill.min() > 0
    assert np.allclose(arrays.service_ns / 1e9, rounds["round_s"].to_numpy() + prefill,
                       atol=2e-9 * trace.rounds.height)
    first = np.diff(arrays.cum["ns"])[arrays.offsets[:-1]] / 1e9
    assert np.allclose(first, rounds["first"].to_numpy() + prefill, atol=1e-9)
    live = TraceArrays.from_trace(replace(trace, manifest={**trace.manifest,
                                                           "round_s_includes_prefill": True}))
    assert np.allclose(live.service_ns / 1e9, rounds["round_s"].to_numpy(),
                       atol=2e-9 * trace.rounds.height)
