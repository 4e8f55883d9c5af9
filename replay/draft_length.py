"""A trace's rounds at a shorter draft length ``k' <= k``, derived from its recorded rounds.

Under greedy decoding the output does not depend on the draft length: only how it is cut into
rounds does. A recorded round that starts at generated position ``s``, drafts ``d`` tokens and
has ``a`` accepted says, position by position, whether the drafter's proposal (given the true
prefix) was the target's token: it was at ``s .. s+a-1``; at ``s+a`` it was not when ``a < d``,
and was never tested when ``a = d`` (that token is the target's bonus). A drafter whose proposal
at a position depends only on the tokens before it (a draft model or an early-exit draft of the
target, decoding greedily) proposes the same there whichever round it starts, so a round at
``k'`` from position ``q`` accepts the agreeing run from ``q``, at most ``k'``. An untested
position is modelled: it always follows an agreeing one, so it agrees at the request's rate of
agreement after an agreeing drafted position (from its recorded rounds), drawn from a generator
seeded by ``seed`` and the request.

Only fixed-length drafting can be derived: every recorded round must draft ``min(k, M - s - 1)``
tokens (``M``: the collection's ``max_new_tokens``). Adaptive drafts (SpS with a varying
length, a prompt-lookup drafter that proposes what it finds) say where the drafter would have
stopped only at the positions where rounds started, so they are refused.

A derived round's times come from a batch-1 round profile (``draft_s``, ``verify_s`` and
``round_s`` by drafted count and context, :func:`~lapsd.replay.costs.profiled_round`): the
trace's own ``round_profile`` (a batched collection), or a cost table's ``rounds``. Columns that
belong to the recorded rounds (``response_chars``, ``batch``, ``step_s``, re-predictions) are not
carried, nor the states table.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.replay.costs import profiled_round
from lapsd.replay.trace import Trace, make_trace

#: Agreement of the drafter with the target at a generated position.
_NO, _YES, _UNTESTED = 0, 1, 2


@dataclass(frozen=True)
class Derived:
    """What :func:`at_draft_length` made, and how much of it was modelled.

    Attributes
    ----------
    trace
        The trace at the new draft length.
    positions
        Agreement tests the derived rounds made (drafted tokens).
    modelled
        Of those, the ones at positions no recorded round tested (drawn at the request's rate
        of agreement after an agreeing position).
    """

    trace: Trace
    positions: int
    modelled: int


def at_draft_length(trace: Trace, k: int, *, profile: Sequence[dict[str, Any]] | None = None,
                    seed: int = 0, where: str = "the trace") -> Derived:
    """``trace``'s requests cut into rounds that draft at most ``k`` tokens (module docstring).

    Parameters
    ----------
    trace
        A trace of fixed-length drafting at one draft length ``>= k``.
    k
        The new draft length (0: no speculation, one token a round).
    profile
        Batch-1 round times by drafted count and context; default: the trace's
        ``round_profile``.
    seed
        Seeds the model of untested positions.
    where
        The trace's name in errors (its folder).

    Raises
    ------
    LapsdError
        For a draft length the trace cannot give, adaptive drafting, or no round profile.
    """
    ks = trace.requests["k"].unique().to_list()
    if len(ks) != 1 or ks[0] is None:
        raise LapsdError(f"{where}: its requests draft {'adaptively' if None in ks else ks} "
                         "(no one fixed k); rounds at another draft length cannot be derived")
    k0 = int(ks[0])
    if not 0 <= k <= k0:
        raise LapsdError(f"draft length {k} must be between 0 and the trace's k = {k0}")
    collector = trace.manifest.get("collector") or {}
    budget = collector.get("max_new_tokens")
    if not isinstance(budget, int):
        raise LapsdError(f"{where}: the manifest's collector has no max_new_tokens, needed to "
                         "tell the budget's last short drafts from adaptive ones")
    rows = profile if profile is not None else trace.manifest.get("round_profile")
    if not rows:
        raise LapsdError(f"{where} has no round_profile: give a cost table from `lapsd "
                         "collect-profile` for the derived rounds' times (--cost-table)")
    rnd = trace.rounds
    drafted = rnd["drafted"].fill_null(-1).to_numpy()
    accepted = rnd["accepted"].to_numpy()
    emitted = rnd["emitted"].to_numpy()
    rid = rnd["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    bounds = np.r_[starts, rid.size]
    prompt = dict(zip(trace.requests["request_id"].to_list(),
                      trace.requests["prompt_tokens"].to_list(), strict=True))
    out: dict[str, list[Any]] = {c: [] for c in ("request_id", "round", "drafted", "accepted",
                                                 "emitted", "draft_s", "verify_s", "round_s",
                                                 "context_tokens")}
    positions = modelled = 0
    times: dict[tuple[int, int], tuple[float, float, float]] = {}
    for a, b in itertools.pairwise(bounds.tolist()):
        name = str(rid[a])
        agree, rate = _agreement(drafted[a:b], accepted[a:b], emitted[a:b], k0, budget, where,
                                 name)
        rng = np.random.default_rng([seed, _stable(name)])
        base = prompt[name] or 0
        q, r, total = 0, 0, agree.size
        while q < total:
            width = max(0, min(k, budget - q - 1))
            took = 0
            while took < width and q + took < total:
                state = agree[q + took]
                positions += 1
                if state == _UNTESTED:
                    modelled += 1
                    state = _YES if rng.random() < rate else _NO
                if state == _NO:
                    break
                took += 1
            step = min(took + 1, total - q)
            context = base + q
            key = (width, context)
            if key not in times:
                times[key] = profiled_round(rows, width, context)
            d_s, v_s, r_s = times[key]
            for col, v in (("request_id", name), ("round", r), ("drafted", width),
                           ("accepted", took), ("emitted", step), ("draft_s", d_s),
                           ("verify_s", v_s), ("round_s", r_s), ("context_tokens", context)):
                out[col].append(v)
            q += step
            r += 1
    rounds = pl.DataFrame(out, schema_overrides={c: pl.Int64 for c in (
        "round", "drafted", "accepted", "emitted", "context_tokens")})
    per = rounds.group_by("request_id").agg(pl.col("round_s").sum().alias("_rounds_s"))
    requests = (trace.requests.drop("n_rounds", "output_tokens")
                .join(per, on="request_id", how="left", maintain_order="left")
                .with_columns(pl.lit(k, dtype=pl.Int64).alias("k"),
                              (pl.col("prefill_s").fill_null(0.0) + pl.col("_rounds_s"))
                              .alias("total_s"))
                .drop("_rounds_s"))
    manifest = copy.deepcopy(trace.manifest)
    manifest.pop("states", None)
    manifest["timing"] = "profiled_per_round"
    manifest["round_profile"] = list(rows)
    manifest["derived_draft_length"] = {
        "from_k": k0, "k": k, "seed": seed, "positions": positions, "modelled": modelled,
        "rule": "greedy agreement of the recorded rounds; untested positions drawn at the "
                "request's agreement rate after an agreeing drafted position; times from "
                "round_profile"}
    return Derived(make_trace(requests, rounds, manifest), positions, modelled)


def _agreement(drafted: np.ndarray, accepted: np.ndarray, emitted: np.ndarray, k: int,
               budget: int, where: str, name: str) -> tuple[np.ndarray, float]:
    """Per generated position: agreed, disagreed or untested; and the untested positions' rate."""
    total = int(emitted.sum())
    agree = np.full(total, _UNTESTED, dtype=np.int8)
    s = 0
    for d, a, e in zip(drafted.tolist(), accepted.tolist(), emitted.tolist(), strict=True):
        if d != min(k, budget - s - 1):
            raise LapsdError(
                f"{where}: request {name!r} drafted {d} tokens at generated position {s}, not "
                f"min(k={k}, max_new_tokens - position - 1): its drafter proposes adaptively, "
                "and rounds at another draft length cannot be derived from it")
        agree[s:s + a] = _YES
        if a < d and s + a < total:
            agree[s + a] = _NO
        s += e
    # An untested position always follows an agreeing one: its rate is the agreement of a
    # drafted position whose predecessor in the draft agreed (positions 1 .. min(a, d-1) of a
    # round were tested so; all but the a-th agreed).
    tested = int(np.minimum(accepted, np.maximum(drafted - 1, 0)).sum())
    agreed = int(np.maximum(accepted - 1, 0).sum())
    return agree, (agreed / tested if tested else 0.0)


def _stable(name: str) -> int:
    """A request's name as a number that does not change between runs (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
