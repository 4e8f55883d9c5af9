"""The trace format: one folder, two Parquet tables and a JSON manifest.

A trace is what every part of lapsd exchanges: collectors and importers write it, the predictor
trains on it, the simulator replays it. This module is its only owner: the schema, reading with
polars, validation with precise errors, and atomic writing.

Layout of a trace folder::

    requests.parquet   one row per request
    rounds.parquet     one row per speculative-decoding round
    manifest.json      schema version, units, provenance, how times were obtained
    states.parquet     optional: the target's hidden states (``lapsd collect --states``)

A request's ``prefill_s`` is apart from its rounds' ``round_s`` (a collection times them apart),
unless the manifest says ``"round_s_includes_prefill": true`` (a live server's trace: its round 0
is the server time from the request's start, prefill included).

The states table (:data:`STATE_COLUMNS`) has one row per recorded hidden state: ``request_id``,
``kind`` (``prompt_last``: at the prompt's last token; ``prompt_mean``: the mean over the
prompt's tokens; ``decode``: at a generated token), ``layer`` (``hidden_states[layer]`` of Hugging
Face's ``output_hidden_states``), ``generated_tokens`` (0 for prompt kinds; for ``decode`` the
generated token's number, a multiple of ``every``) and ``state``, the vector (a fixed-size list
of float16 or float32). The manifest's ``states`` block (:data:`STATES_BLOCK`) describes it;
a trace has both or neither. :mod:`lapsd.collect.states` records them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsd import __version__
from lapsd.errors import LapsdError
from lapsd.io import atomic_dir, sha256_file
from lapsd.replay.clock import HORIZON_S, check_horizon

SCHEMA_VERSION = 1

REQUESTS_FILE = "requests.parquet"
ROUNDS_FILE = "rounds.parquet"
MANIFEST_FILE = "manifest.json"
STATES_FILE = "states.parquet"

#: Version of the states table and the manifest's ``states`` block.
STATES_SCHEMA_VERSION = 1
#: What a state row is (the ``kind`` column).
STATE_KINDS = ("prompt_last", "prompt_mean", "decode")
#: Element types of the ``state`` vectors (the block's ``dtype``).
STATE_DTYPES = ("float16", "float32")
#: The states table's columns but ``state``, an ``Array(dtype, hidden_size)``.
STATE_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "request_id": (pl.String(), False),
    "kind": (pl.String(), False),
    "layer": (pl.Int64(), False),
    "generated_tokens": (pl.Int64(), False),
}
#: The manifest's ``states`` block: key -> what its value must be.
STATES_BLOCK = {
    "schema_version": f"{STATES_SCHEMA_VERSION}",
    "layers": "a list of ascending distinct integers >= 1",
    "decode_layer": "one of the layers",
    "every": "an integer >= 1",
    "hidden_size": "an integer >= 1",
    "dtype": " or ".join(STATE_DTYPES),
    "saturated": "an integer >= 0 (values clipped to float16's range)",
}

def prefill_in_rounds(manifest: dict[str, Any]) -> bool:
    """Whether a trace's first rounds already hold the prefill (module docstring).

    Live traces written before the manifest said so are recognised by their ``live`` block.
    """
    return bool(manifest.get("round_s_includes_prefill", "live" in manifest))


#: Column name -> (polars dtype, nullable). Order is the on-disk order.
REQUEST_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "request_id": (pl.String(), False),
    "source": (pl.String(), False),
    "dataset": (pl.String(), True),
    "category": (pl.String(), True),
    "prompt": (pl.String(), True),
    "prompt_tokens": (pl.Int64(), True),
    "output_tokens": (pl.Int64(), False),
    "n_rounds": (pl.Int64(), False),
    "target_model": (pl.String(), True),
    "draft_model": (pl.String(), True),
    "k": (pl.Int64(), True),
    "finish_reason": (pl.String(), True),
    "total_s": (pl.Float64(), True),
    "prefill_s": (pl.Float64(), True),
}

#: Optional request columns: the generated text (collectors and importers that have it) and
#: the predictor's output (``lapsd predict apply``).
OPTIONAL_REQUEST_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "response": (pl.String(), True),
    "predicted_tokens": (pl.Float64(), True),
    "predicted_tokens_p90": (pl.Float64(), True),
}

ROUND_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "request_id": (pl.String(), False),
    "round": (pl.Int64(), False),
    "drafted": (pl.Int64(), True),
    "accepted": (pl.Int64(), False),
    "emitted": (pl.Int64(), False),
    "draft_s": (pl.Float64(), True),
    "verify_s": (pl.Float64(), True),
    "round_s": (pl.Float64(), False),
    "context_tokens": (pl.Int64(), True),
}

#: Optional round columns: ``response_chars``, the length in characters of the request's
#: ``response`` after the round (to cut the text at a round; the manifest's
#: ``response_offsets`` says whether they are exact or estimated); ``batch`` and ``step_s``,
#: the size and measured time of the batched step that ran the round, in a collection whose
#: ``round_s`` is profiled (timing ``profiled_per_round``); ``belief_median`` and
#: ``belief_sigma``, a re-prediction made after the round (a hidden-state probe's, ``lapsd
#: predict apply``, or the live server's): the request's total-length belief from then on,
#: ``LengthPrediction(belief_median, belief_sigma, max_new_tokens)``, null where it did not
#: change. A replay delivers each to the policy after that round (:func:`recorded_updates`).
OPTIONAL_ROUND_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "response_chars": (pl.Int64(), True),
    "batch": (pl.Int64(), True),
    "step_s": (pl.Float64(), True),
    "belief_median": (pl.Float64(), True),
    "belief_sigma": (pl.Float64(), True),
}

UNITS = {
    "prompt_tokens": "tokens",
    "output_tokens": "tokens",
    "total_s": "seconds",
    "prefill_s": "seconds",
    "draft_s": "seconds",
    "verify_s": "seconds",
    "round_s": "seconds",
    "context_tokens": "tokens",
    "step_s": "seconds",
    "belief_median": "tokens",
}

#: How round times were obtained (``manifest["timing"]``). ``profiled_per_round``: a batched
#: collection's rounds, each timed by the collecting engine's batch-1 profile (the manifest's
#: ``round_profile``) at its drafted count and context.
TIMING_MODES = ("measured_per_round", "profiled_per_round", "per_turn_mean", "synthetic")


class TraceError(LapsdError):
    """A trace that cannot be used, with where the problem is.

    Parameters
    ----------
    message
        What is wrong and how to fix it.
    path
        The file the problem is in.
    column
        The offending column, when there is one.
    row
        The first offending row (0-based), when there is one.
    """

    def __init__(
        self, message: str, *, path: Path | str | None = None, column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.column = column
        self.row = row
        where = []
        if self.path:
            where.append(self.path)
        if column:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)


@dataclass
class Trace:
    """An in-memory trace: the two tables, the manifest and the optional states table.

    ``requests`` and ``rounds`` follow :data:`REQUEST_COLUMNS` and :data:`ROUND_COLUMNS`;
    ``rounds`` is sorted by ``request_id`` order of ``requests`` then ``round``. ``states``
    (:data:`STATE_COLUMNS`) is there when the manifest has a ``states`` block.
    """

    requests: pl.DataFrame
    rounds: pl.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    states: pl.DataFrame | None = None

    @property
    def n_requests(self) -> int:
        """The number of requests."""
        return self.requests.height

    @property
    def n_rounds(self) -> int:
        """The number of rounds."""
        return self.rounds.height


def number(value: object) -> float:
    """A polars aggregate (typed as any Python literal) as a float; null is an error."""
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def new_manifest(
    *, timing: str, sources: Sequence[Path | str] = (), notes: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A manifest with provenance filled in (source files and their hashes, tool version)."""
    if timing not in TIMING_MODES:
        raise ValueError(f"timing must be one of {TIMING_MODES}, got {timing!r}")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "units": UNITS,
        "timing": timing,
        "provenance": {
            "tool": "lapsd",
            "tool_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "sources": [{"path": str(p), "sha256": sha256_file(p)} for p in sources],
        },
    }
    if notes:
        manifest["notes"] = notes
    manifest.update(extra)
    return manifest


def _conform(df: pl.DataFrame, columns: dict[str, tuple[pl.DataType, bool]],
             optional: dict[str, tuple[pl.DataType, bool]] | None = None) -> pl.DataFrame:
    """Add missing nullable columns as nulls and cast to the schema types (for writers)."""
    exprs = []
    for name, (dtype, _) in columns.items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    for name, (dtype, _) in (optional or {}).items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype))
    return df.select(exprs)


def make_trace(requests: pl.DataFrame, rounds: pl.DataFrame, manifest: dict[str, Any],
               states: pl.DataFrame | None = None) -> Trace:
    """Build a validated :class:`Trace` from rows produced by a collector or importer.

    Missing nullable columns are added as nulls; ``n_rounds`` and ``output_tokens`` may be left
    out of ``requests`` and are then derived from ``rounds``. ``states``: the states table
    (with the manifest's ``states`` block).
    """
    derived = rounds.group_by("request_id").agg(
        pl.len().cast(pl.Int64).alias("_n"), pl.col("emitted").sum().cast(pl.Int64).alias("_out")
    )
    requests = requests.join(derived, on="request_id", how="left", maintain_order="left")
    if "n_rounds" not in requests.columns:
        requests = requests.with_columns(pl.col("_n").alias("n_rounds"))
    if "output_tokens" not in requests.columns:
        requests = requests.with_columns(pl.col("_out").alias("output_tokens"))
    requests = requests.drop("_n", "_out")
    trace = Trace(
        _conform(requests, REQUEST_COLUMNS, OPTIONAL_REQUEST_COLUMNS),
        _sort_rounds(_conform(rounds, ROUND_COLUMNS, OPTIONAL_ROUND_COLUMNS),
                     requests["request_id"]),
        manifest, states,
    )
    validate(trace)
    return trace


def _sort_rounds(rounds: pl.DataFrame, order: pl.Series) -> pl.DataFrame:
    rank = pl.DataFrame({"request_id": order, "_rank": pl.int_range(order.len(), eager=True)})
    return (
        rounds.join(rank, on="request_id", how="left")
        .sort(["_rank", "round"], nulls_last=True)
        .drop("_rank")
    )


def _check_schema(df: pl.DataFrame, columns: dict[str, tuple[pl.DataType, bool]],
                  path: Path | str, optional: dict[str, tuple[pl.DataType, bool]] | None = None,
                  ) -> None:
    for name, (dtype, nullable) in {**columns, **(optional or {})}.items():
        if name not in df.columns:
            if optional and name in optional:
                continue
            raise TraceError(
                f"missing column (expected {dtype}); the file has {df.columns}",
                path=path, column=name,
            )
        got = df.schema[name]
        ok = got == dtype or (dtype.is_integer() and got.is_integer()) or (
            dtype.is_float() and (got.is_float() or got.is_integer())
        )
        if not ok:
            raise TraceError(f"wrong type {got}, expected {dtype}", path=path, column=name)
        if not nullable:
            nulls = df[name].is_null()
            if nulls.any():
                raise TraceError("null value in a column that must be set", path=path,
                                 column=name, row=int(nulls.arg_true()[0]))


def _not_time(column: str) -> pl.Expr:
    """Where a seconds column is not a number from 0 to the replay clock's end (nulls pass)."""
    return ~pl.col(column).is_finite() | (pl.col(column) < 0) | (pl.col(column) >= HORIZON_S)


def _not_count(column: str) -> pl.Expr:
    """Where a token column is not a finite number >= 0 (nulls pass)."""
    return ~pl.col(column).is_finite() | (pl.col(column) < 0)


def _count_below(column: str, low: int) -> tuple[str, pl.Expr, str]:
    return column, pl.col(column) < low, f"{column} must be >= {low}"


def _time(column: str) -> tuple[str, pl.Expr, str]:
    return column, _not_time(column), (f"{column} must be a finite number of seconds from 0 "
                                       f"to {HORIZON_S:.4g} (the replay clock's end)")


#: ``(column, where it is bad, what it must be)`` of the rounds and of the requests.
_ROUND_CHECKS = [
    _count_below("emitted", 1), _count_below("accepted", 0), _count_below("drafted", 0),
    ("accepted", pl.col("accepted") > pl.col("drafted"), "accepted > drafted (at most drafted)"),
    _count_below("context_tokens", 0),
    _time("round_s"), _time("draft_s"), _time("verify_s"),
    ("belief_median", ~pl.col("belief_median").is_finite() | (pl.col("belief_median") <= 0),
     "belief_median must be a finite number of tokens > 0"),
    ("belief_sigma", _not_count("belief_sigma"), "belief_sigma must be a finite number >= 0"),
]
_REQUEST_CHECKS = [
    _count_below("prompt_tokens", 0), _count_below("k", 0),
    _time("total_s"), _time("prefill_s"),
    ("predicted_tokens", _not_count("predicted_tokens"),
     "predicted_tokens must be a finite number >= 0"),
    ("predicted_tokens_p90", _not_count("predicted_tokens_p90"),
     "predicted_tokens_p90 must be a finite number >= 0"),
]


def _check_manifest(manifest: Any, path: Path) -> None:
    """The manifest is an object and what replays read from it is usable."""
    if not isinstance(manifest, dict):
        raise TraceError(f"the manifest must be a JSON object, got a {type(manifest).__name__}; "
                         "re-create the trace (a collector or `lapsd import` writes it)",
                         path=path)
    collector = manifest.get("collector") or {}
    if not isinstance(collector, dict):
        raise TraceError(f"collector must be a JSON object, got {collector!r}", path=path)
    cap = collector.get("max_new_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise TraceError(f"collector.max_new_tokens must be an integer >= 1, got {cap!r}; fix "
                         "it or remove it (the cap is then the longest request that stopped "
                         "for length)", path=path)


def _first_bad(df: pl.DataFrame, mask: pl.Expr) -> int | None:
    idx = df.select(mask.fill_null(False).arg_true().first()).item()
    return None if idx is None else int(idx)


def validate(trace: Trace, where: Path | str | None = None) -> None:
    """Check a trace's schema and invariants; raise :class:`TraceError` at the first problem.

    Invariants: a manifest object, unique request ids, every request has rounds and every
    round a request, rounds numbered 0..n-1, ``emitted >= 1``, ``0 <= accepted <= drafted``
    (when drafted is known), non-negative counts, finite non-negative times and predictions,
    some time in the rounds and no more than the replay clock holds (:mod:`lapsd.replay.clock`),
    and ``n_rounds``/``output_tokens`` equal to what the rounds add up to. Every reader of
    traces (inspect, replay, tune, predict, validate) goes through here.
    """
    base = Path(where) if where is not None else Path("<memory>")
    rq_path, rd_path = base / REQUESTS_FILE, base / ROUNDS_FILE
    _check_manifest(trace.manifest, base / MANIFEST_FILE)
    req, rnd = trace.requests, trace.rounds
    _check_schema(req, REQUEST_COLUMNS, rq_path, OPTIONAL_REQUEST_COLUMNS)
    _check_schema(rnd, ROUND_COLUMNS, rd_path, OPTIONAL_ROUND_COLUMNS)
    if req.height == 0:
        raise TraceError("the trace has no requests", path=rq_path)

    row = _first_bad(req, ~pl.col("request_id").is_first_distinct())
    if row is not None:
        raise TraceError(f"duplicated request_id {req['request_id'][row]!r}", path=rq_path,
                         column="request_id", row=row)

    for df, path, checks in ((rnd, rd_path, _ROUND_CHECKS), (req, rq_path, _REQUEST_CHECKS)):
        for column, mask, message in checks:
            if column not in df.columns:
                continue
            row = _first_bad(df, mask)
            if row is not None:
                raise TraceError(f"{message}, got {df[column][row]!r}; fix or drop this row",
                                 path=path, column=column, row=row)
    has = [c for c in ("belief_median", "belief_sigma") if c in rnd.columns]
    if has:
        if len(has) == 1:
            raise TraceError(f"{has[0]} without its pair: a belief needs both belief_median and "
                             "belief_sigma", path=rd_path, column=has[0])
        row = _first_bad(rnd, pl.col("belief_median").is_null() != pl.col("belief_sigma")
                         .is_null())
        if row is not None:
            raise TraceError("belief_median and belief_sigma must be both set or both null",
                             path=rd_path, column="belief_sigma", row=row)
    if not number(rnd["round_s"].sum()) > 0:
        raise TraceError("every round takes 0 s: the trace holds no timing (re-collect or "
                         "re-import it with round times)", path=rd_path, column="round_s")
    rounds_s = number(rnd["round_s"].sum())
    fix = "are they seconds? fix the values that are not"
    check_horizon(rounds_s, f"{rd_path}, column 'round_s': the trace's rounds", fix)
    check_horizon(rounds_s + number(req["prefill_s"].sum()),
                  f"{rq_path}, column 'prefill_s': the trace's rounds and prefills", fix)

    known = set(req["request_id"].to_list())
    row = _first_bad(rnd, ~pl.col("request_id").is_in(list(known)))
    if row is not None:
        raise TraceError(f"round of unknown request {rnd['request_id'][row]!r}", path=rd_path,
                         column="request_id", row=row)

    per = rnd.group_by("request_id", maintain_order=True).agg(
        pl.len().alias("_n"), pl.col("emitted").sum().alias("_out"),
        pl.col("round").min().alias("_lo"), pl.col("round").max().alias("_hi"),
        pl.col("round").n_unique().alias("_uniq"),
    )
    joined = req.select("request_id", "n_rounds", "output_tokens").join(
        per, on="request_id", how="left", maintain_order="left"
    )
    row = _first_bad(joined, pl.col("_n").is_null())
    if row is not None:
        raise TraceError(f"request {req['request_id'][row]!r} has no rounds", path=rq_path,
                         column="request_id", row=row)
    row = _first_bad(joined, (pl.col("_lo") != 0) | (pl.col("_hi") != pl.col("_n") - 1)
                     | (pl.col("_uniq") != pl.col("_n")))
    if row is not None:
        raise TraceError(f"rounds of request {req['request_id'][row]!r} are not numbered "
                         "0..n-1 without gaps or repeats", path=rd_path, column="round")
    row = _first_bad(joined, pl.col("n_rounds") != pl.col("_n"))
    if row is not None:
        raise TraceError(f"n_rounds={joined['n_rounds'][row]} but the rounds table has "
                         f"{joined['_n'][row]} rounds for this request", path=rq_path,
                         column="n_rounds", row=row)
    row = _first_bad(joined, pl.col("output_tokens") != pl.col("_out"))
    if row is not None:
        raise TraceError(f"output_tokens={joined['output_tokens'][row]} but its rounds emit "
                         f"{joined['_out'][row]} tokens", path=rq_path, column="output_tokens",
                         row=row)
    if trace.manifest.get("schema_version") != SCHEMA_VERSION:
        raise TraceError(
            f"schema_version {trace.manifest.get('schema_version')!r} is not supported "
            f"(this lapsd reads version {SCHEMA_VERSION})", path=base / MANIFEST_FILE,
        )
    _check_states(trace, base)


def _states_block(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """The manifest's ``states`` block, each key checked against :data:`STATES_BLOCK`."""
    block = manifest["states"]
    if not isinstance(block, dict):
        raise TraceError(f"states must be a JSON object, got {block!r}; fix it or re-collect "
                         "with --states", path=path)

    def whole(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    layers = block.get("layers")
    good = {
        "schema_version": whole(block.get("schema_version"), 1)
        and block["schema_version"] == STATES_SCHEMA_VERSION,
        "layers": isinstance(layers, list) and bool(layers)
        and all(whole(x, 1) for x in layers) and layers == sorted(set(layers)),
        "decode_layer": isinstance(layers, list) and whole(block.get("decode_layer"), 1)
        and block.get("decode_layer") in layers,
        "every": whole(block.get("every"), 1),
        "hidden_size": whole(block.get("hidden_size"), 1),
        "dtype": block.get("dtype") in STATE_DTYPES,
        "saturated": whole(block.get("saturated"), 0),
    }
    for key, ok in good.items():
        if not ok:
            raise TraceError(f"states.{key} must be {STATES_BLOCK[key]}, got "
                             f"{block.get(key)!r}; fix it or re-collect with --states",
                             path=path)
    if block["dtype"] == "float16" and not hasattr(pl, "Float16"):
        raise TraceError(f"the states are float16, which polars {pl.__version__} cannot "
                         "read; upgrade polars", path=path)
    return block


def _check_states(trace: Trace, base: Path) -> None:
    """The states table and the manifest's block agree, and every row is usable."""
    path = base / STATES_FILE
    if "states" not in trace.manifest:
        if trace.states is not None:
            raise TraceError("a states table but no 'states' block in the manifest (layers, "
                             "every, hidden size, dtype); re-collect with --states or delete "
                             "the table", path=path)
        return
    block = _states_block(trace.manifest, base / MANIFEST_FILE)
    df = trace.states
    if df is None:
        raise TraceError("missing: the manifest's 'states' block describes a states table; "
                         "restore it, or remove the block", path=path)
    inner = pl.Float16() if block["dtype"] == "float16" else pl.Float32()
    _check_schema(df, {**STATE_COLUMNS, "state": (pl.Array(inner, block["hidden_size"]),
                                                  False)}, path)
    layers, every = block["layers"], block["every"]
    decode = pl.col("kind") == "decode"
    req = trace.requests.select("request_id", "output_tokens")
    checks = [
        ("kind", ~pl.col("kind").is_in(list(STATE_KINDS)), f"kind must be one of {STATE_KINDS}"),
        ("layer", ~pl.col("layer").is_in(layers), f"layer must be one of {layers}"),
        ("layer", decode & (pl.col("layer") != block["decode_layer"]),
         f"decode states are at layer {block['decode_layer']} (decode_layer)"),
        ("generated_tokens", ~decode & (pl.col("generated_tokens") != 0),
         "prompt states have generated_tokens 0"),
        ("generated_tokens", decode & ((pl.col("generated_tokens") < 1)
                                       | (pl.col("generated_tokens") % every != 0)),
         f"decode states are at generated token multiples of every={every}"),
        ("request_id", ~pl.col("request_id").is_in(req["request_id"].implode()),
         "a state of no request of the trace"),
        ("request_id", ~pl.struct("request_id", "kind", "layer",
                                  "generated_tokens").is_first_distinct(),
         "the same state twice (request_id, kind, layer, generated_tokens)"),
    ]
    for column, mask, message in checks:
        row = _first_bad(df, mask)
        if row is not None:
            raise TraceError(f"{message}, got {df[column][row]!r}; fix or drop this row",
                             path=path, column=column, row=row)
    joined = df.join(req, on="request_id", how="left", maintain_order="left")
    row = _first_bad(joined, decode & (pl.col("generated_tokens") > pl.col("output_tokens")))
    if row is not None:
        raise TraceError(f"a decode state at generated token {df['generated_tokens'][row]} "
                         "is past its request's output_tokens; fix or drop this row",
                         path=path, column="generated_tokens", row=row)
    counts = req.join(df.filter(~decode).group_by("request_id").len(), on="request_id",
                      how="left", maintain_order="left")
    row = _first_bad(counts, pl.col("len").fill_null(0) != 2 * len(layers))
    if row is not None:
        raise TraceError(f"request {counts['request_id'][row]!r} has "
                         f"{counts['len'].fill_null(0)[row]} prompt states, not "
                         f"{2 * len(layers)} (prompt_last and prompt_mean at layers {layers}); "
                         "re-collect it", path=path, column="kind")
    bad = ~np.isfinite(df["state"].to_numpy()).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise TraceError("a state vector holds a null, NaN or infinite value; re-collect it",
                         path=path, column="state", row=row)


def read_trace(path: Path | str) -> Trace:
    """Read and validate a trace folder.

    Raises
    ------
    TraceError
        When a file is missing or corrupt, or the content breaks the schema or an invariant.
    """
    base = Path(path)
    if not base.is_dir():
        raise TraceError("not a trace folder (expected a directory with requests.parquet, "
                         "rounds.parquet and manifest.json)", path=base)
    manifest_path = base / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise TraceError("missing manifest", path=manifest_path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"manifest is not valid JSON: {exc}", path=manifest_path) from None
    tables = []
    for name in (REQUESTS_FILE, ROUNDS_FILE):
        p = base / name
        if not p.exists():
            raise TraceError("missing table", path=p)
        tables.append(_read_table(p))
    states = None
    if (base / STATES_FILE).exists():
        states = _read_table(base / STATES_FILE)
    trace = Trace(tables[0], tables[1], manifest, states)
    validate(trace, base)
    return trace


def _read_table(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types for corrupt files
        reason = " ".join(str(exc).split())  # one line
        raise TraceError(f"cannot read Parquet ({type(exc).__name__}: {reason}); the file is "
                         "corrupt or not Parquet: re-create it", path=path) from None


def read_states(path: Path | str) -> pl.DataFrame | None:
    """The validated states table of a trace folder (:data:`STATE_COLUMNS`); ``None``: none.

    The manifest's ``states`` block says what it holds (layers, every, hidden size, dtype).

    Raises
    ------
    TraceError
        As :func:`read_trace`, and when the states table or its block is malformed.
    """
    return read_trace(path).states


def write_trace(trace: Trace, path: Path | str, *, overwrite: bool = False) -> Path:
    """Validate and write a trace folder atomically (:func:`lapsd.io.atomic_dir`).

    Readers never see a half-written trace and a crash leaves the old one intact.
    """
    validate(trace)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        trace.requests.write_parquet(tmp / REQUESTS_FILE)
        trace.rounds.write_parquet(tmp / ROUNDS_FILE)
        if trace.states is not None:
            trace.states.write_parquet(tmp / STATES_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(trace.manifest, indent=2) + "\n")
    return Path(path)


def trace_digest(path: Path | str) -> str:
    """A hash of a trace folder's tables, for provenance in configs and model cards."""
    base = Path(path)
    h = hashlib.sha256()
    for name in (REQUESTS_FILE, ROUNDS_FILE):
        h.update(sha256_file(base / name).encode())
    return h.hexdigest()


def summarize(trace: Trace) -> dict[str, Any]:
    """Summary statistics for ``lapsd inspect``: counts and distributions."""

    def dist(s: pl.Series) -> dict[str, float]:
        s = s.cast(pl.Float64)
        return {
            "mean": number(s.mean()), "p10": number(s.quantile(0.1)),
            "p50": number(s.median()), "p90": number(s.quantile(0.9)),
            "p99": number(s.quantile(0.99)), "max": number(s.max()),
        }

    req, rnd = trace.requests, trace.rounds
    per_req = rnd.group_by("request_id").agg(pl.col("round_s").sum().alias("service_s"))
    drafted = rnd.filter(pl.col("drafted").is_not_null())
    out: dict[str, Any] = {
        "requests": req.height,
        "rounds": rnd.height,
        "targets": sorted(x for x in req["target_model"].unique().to_list() if x is not None),
        "drafts": sorted(x for x in req["draft_model"].unique().to_list() if x is not None),
        "timing": trace.manifest.get("timing"),
        "output_tokens": dist(req["output_tokens"]),
        "rounds_per_request": dist(req["n_rounds"]),
        "tokens_per_round": dist(rnd["emitted"]),
        "round_s": dist(rnd["round_s"]),
        "service_s": dist(per_req["service_s"]),
        # Accepted / drafted over the rounds whose draft count is known (None when none is:
        # a variable draft length); accepted tokens per round is always defined.
        "acceptance_rate": (
            number(drafted["accepted"].sum()) / number(drafted["drafted"].sum())
            if drafted.height and number(drafted["drafted"].sum()) > 0 else None
        ),
        "accepted_per_round": number(rnd["accepted"].mean()),
        "draft_length": ("fixed" if drafted.height == rnd.height else
                         "variable" if drafted.height == 0 else "partly variable"),
        "categories": dict(
            req.group_by("category").len().sort("len", descending=True)
            .select(pl.col("category").fill_null("(none)"), "len").iter_rows()
        ),
        "has_predictions": "predicted_tokens" in req.columns,
    }
    return out
