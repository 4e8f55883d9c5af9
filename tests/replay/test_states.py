"""The states side table: written and read with the trace, and malformed ones refused.

Every malformed table or ``states`` block must end, through the real command line (``lapsd
inspect`` and ``lapsd merge``), as one line on stderr, exit status 2, no traceback, and no file
changed (bytes and modification times compared; merge's output folder not created).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from one_line import one_line_error
from sim_reference import synthetic_trace

from lapsd.replay.trace import (
    STATES_FILE,
    STATES_SCHEMA_VERSION,
    Trace,
    make_trace,
    read_states,
    read_trace,
    write_trace,
)
from tests.replay.test_bad_input import EXAMPLES, edit_manifest

LAYERS, EVERY, HIDDEN = [2, 4], 4, 8
NAN, INF = math.nan, math.inf


def with_states(trace: Trace) -> Trace:
    """``trace`` with states: prompt ones at ``LAYERS``, decode ones at layer 2 every 4."""
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, int, int]] = []
    for rid, out in trace.requests.select("request_id", "output_tokens").iter_rows():
        rows += [(rid, kind, layer, 0) for layer in LAYERS
                 for kind in ("prompt_last", "prompt_mean")]
        rows += [(rid, "decode", 2, g) for g in range(EVERY, out + 1, EVERY)]
    ids, kinds, layers, generated = (list(c) for c in zip(*rows, strict=True))
    states = pl.DataFrame({
        "request_id": ids, "kind": kinds, "layer": layers, "generated_tokens": generated,
        "state": pl.Series(rng.normal(size=(len(rows), HIDDEN)).astype(np.float16))})
    block = {"schema_version": STATES_SCHEMA_VERSION, "layers": LAYERS, "decode_layer": 2,
             "every": EVERY, "hidden_size": HIDDEN, "dtype": "float16", "saturated": 0}
    return make_trace(trace.requests, trace.rounds, {**trace.manifest, "states": block}, states)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(with_states(synthetic_trace(1)), tmp_path_factory.mktemp("g") / "trace")


def test_states_round_trip(good: Path) -> None:
    states = read_states(good)
    assert states is not None and states.schema["state"] == pl.Array(pl.Float16, HIDDEN)
    trace = read_trace(good)
    assert trace.states is not None and trace.states.equals(states)
    assert states.filter(pl.col("kind") == "decode")["generated_tokens"].max() is not None


def test_traces_without_states_keep_working(tmp_path: Path) -> None:
    path = write_trace(synthetic_trace(2), tmp_path / "plain")
    assert read_states(path) is None and not (path / STATES_FILE).exists()
    assert read_trace(path).states is None


def test_writing_keeps_the_states(good: Path, tmp_path: Path) -> None:
    """A trace read and written again (a tool's output) keeps its states table."""
    trace = read_trace(good)
    again = read_trace(write_trace(dataclasses.replace(trace), tmp_path / "copy"))
    assert again.states is not None and trace.states is not None
    assert again.states.equals(trace.states) and again.manifest == trace.manifest


# ------------------------------------------------------------------------------ bad tables
def table_edit(good: Path, dest: Path, edit: Callable[[pl.DataFrame], pl.DataFrame]) -> Path:
    """``good`` copied to ``dest`` with its states table edited."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(good, dest)
    edit(pl.read_parquet(dest / STATES_FILE)).write_parquet(dest / STATES_FILE)
    return dest


def at(row: int, column: str, value: Any) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """An edit setting ``column`` of ``row`` to ``value``."""
    def edit(df: pl.DataFrame) -> pl.DataFrame:
        lit = pl.lit(value, dtype=df.schema[column])
        return df.with_columns(pl.when(pl.int_range(pl.len()) == row).then(lit)
                               .otherwise(pl.col(column)).alias(column))
    return edit


def vector_value(row: int, i: int, value: float | None) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """An edit setting element ``i`` of ``row``'s state vector to ``value`` (None: null)."""
    def edit(df: pl.DataFrame) -> pl.DataFrame:
        vectors = df["state"].to_list()
        vectors[row][i] = value
        return df.with_columns(pl.Series("state", vectors, dtype=df.schema["state"]))
    return edit


DECODE = 4  # the first decode row of request r0 (after its 4 prompt rows)
TABLE_CASES: list[tuple[Callable[[pl.DataFrame], pl.DataFrame], str]] = [
    (lambda df: df.drop("kind"), "missing column"),
    (lambda df: df.with_columns(pl.col("layer").cast(pl.String)), "wrong type"),
    (lambda df: df.with_columns(pl.col("state").cast(pl.Array(pl.Float32, HIDDEN))),
     "wrong type"),
    (lambda df: df.with_columns(pl.col("state").cast(pl.List(pl.Float16))), "wrong type"),
    (at(0, "kind", None), "null value"),
    (at(0, "state", None), "null value"),
    (at(0, "kind", "middle"), "kind must be one of"),
    (at(0, "layer", 3), "layer must be one of"),
    (at(DECODE, "layer", 4), "decode states are at layer 2"),
    (at(0, "generated_tokens", 5), "prompt states have generated_tokens 0"),
    (at(DECODE, "generated_tokens", 6), "multiples of every=4"),
    (at(DECODE, "generated_tokens", 0), "multiples of every=4"),
    (at(DECODE, "generated_tokens", -4), "multiples of every=4"),
    (at(DECODE, "generated_tokens", 4000), "past its request's output_tokens"),
    (at(0, "request_id", "nobody"), "a state of no request"),
    (lambda df: pl.concat([df, df.head(1)]), "the same state twice"),
    (lambda df: df.slice(1), "prompt states, not 4"),
    (vector_value(0, 3, NAN), "null, NaN or infinite"),
    (vector_value(2, 0, INF), "null, NaN or infinite"),
    (vector_value(DECODE, 7, -INF), "null, NaN or infinite"),
    (vector_value(1, 1, None), "null, NaN or infinite"),
]
BLOCK_CASES: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda m: {**m, "states": "yes"}, "states must be a JSON object"),
    (lambda m: {**m, "states": [1]}, "states must be a JSON object"),
    *[(lambda m, key=key, value=value: {**m, "states": {**m["states"], key: value}},
       f"states.{key} must be")
      for key, value in [("schema_version", 2), ("schema_version", None), ("layers", []),
                         ("layers", [4, 2]), ("layers", ["2", 4]), ("layers", [0, 2]),
                         ("layers", [2, 2, 4]), ("layers", "2,4"), ("layers", [2, 4.0]),
                         ("decode_layer", 3), ("decode_layer", True), ("every", 0),
                         ("every", True), ("every", 4.5), ("hidden_size", -1),
                         ("hidden_size", "8"), ("dtype", "int8"), ("dtype", None),
                         ("saturated", -1), ("saturated", 0.5)]],
    (lambda m: {**m, "states": {k: v for k, v in m["states"].items() if k != "every"}},
     "states.every must be"),
    (lambda m: {**m, "states": {**m["states"], "hidden_size": 9}}, "wrong type"),
    (lambda m: {**m, "states": {**m["states"], "dtype": "float32"}}, "wrong type"),
    (lambda m: {**m, "states": {**m["states"], "every": 3}}, "multiples of every=3"),
    (lambda m: {**m, "states": {**m["states"], "layers": [1, 2]}}, "layer must be one of"),
    (lambda m: {k: v for k, v in m.items() if k != "states"}, "no 'states' block"),
]
COMMANDS = {"inspect": lambda bad, out: ["inspect", str(bad)],
            "merge": lambda bad, out: ["merge", str(bad), "--out", str(out)]}


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], bad: Path, out: Path) -> str:
    line = one_line_error(argv, capsys, bad)
    assert not out.exists()
    return line


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("edit", "message"), TABLE_CASES)
def test_bad_states_tables(good, tmp_path, capsys, command, edit, message) -> None:
    bad = table_edit(good, tmp_path / "t", edit)
    line = refused(COMMANDS[command](bad, tmp_path / "o"), capsys, bad, tmp_path / "o")
    assert message in line and STATES_FILE in line


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("edit", "message"), BLOCK_CASES)
def test_bad_states_blocks(good, tmp_path, capsys, command, edit, message) -> None:
    bad = edit_manifest(good, tmp_path / "t", edit)
    line = refused(COMMANDS[command](bad, tmp_path / "o"), capsys, bad, tmp_path / "o")
    assert message in line


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.unlink(), "the manifest's 'states' block describes a states table"),
    (lambda p: p.write_bytes(b"PAR1 not really"), "cannot read Parquet"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "cannot read Parquet"),
])
def test_missing_or_corrupt_states_file(good, tmp_path, capsys, command, damage,
                                        message) -> None:
    bad = tmp_path / "t"
    shutil.copytree(good, bad)
    damage(bad / STATES_FILE)
    line = refused(COMMANDS[command](bad, tmp_path / "o"), capsys, bad, tmp_path / "o")
    assert message in line and STATES_FILE in line


NOT_WHOLE = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=5),
                      st.lists(st.integers(max_value=0), max_size=2), st.integers(max_value=0))


@EXAMPLES
@given(key=st.sampled_from(["every", "hidden_size", "decode_layer", "layers", "dtype",
                            "schema_version"]),
       value=NOT_WHOLE)
def test_any_bad_block_value(good, tmp_path, capsys, key, value) -> None:
    """Values that no key takes: not a whole number >= 1 (nor a dtype, nor a layer list)."""
    bad = edit_manifest(good, tmp_path / "t", lambda m: {**m, "states": {**m["states"],
                                                                         key: value}})
    one_line_error(["inspect", str(bad)], capsys, bad)


@EXAMPLES
@given(row=st.integers(0, 40), i=st.integers(0, HIDDEN - 1),
       value=st.sampled_from([NAN, INF, -INF, None]))
def test_any_bad_vector_value(good, tmp_path, capsys, row, i, value) -> None:
    bad = table_edit(good, tmp_path / "t", vector_value(row, i, value))
    line = one_line_error(["inspect", str(bad)], capsys, bad)
    assert f"row {row}" in line
