"""Profiling mode: the engine's own round cost by draft count and context, and switch costs.

It measures the path ``lapsd collect`` and ``lapsd live`` run (the static cache with CUDA graphs
where it applies, else the DynamicCache loop). For each context length it prefills a random
prompt and times rounds with exactly ``d = 0..k`` drafts (:meth:`~lapsd.collect.engine.Session.
probe`: the round the engine runs, then undone), each the median of ``repeats`` after two
warm-up rounds, with the engine's clock (CUDA events on a GPU, ``perf_counter`` elsewhere).

``batches`` (static path): the same for a step of ``b`` requests of that context, each drafting
``k`` (:meth:`~lapsd.collect.engine.SpeculativeEngine.probe_batch`, the step ``lapsd live
--batch-size`` runs), one ``batch`` row per size: the table
:meth:`lapsd.replay.costs.BatchCost.from_profile` reads for replays at batch sizes above one.

On the static path a round's attention reads the whole working cache, so its cost follows the
cache's *capacity* more than the context: each row gives both. ``capacity`` defaults to the
smallest that holds the largest context; a collection sizes it for its longest request (prompt
+ ``max_new_tokens`` + ``k``, rounded up to 512), so pass that to compare with its rounds.

Switch costs, per context length, with the same session calls a live server makes:

``swap``
    The request's cache to host memory (pinned on a GPU) and back into the working cache.
``resident``
    Switching away to another request and back while both caches stay on the device: on the
    static path the cache is copied out of the working cache and back (``park_s``, ``load_s``);
    on the DynamicCache path it is a pointer change.

``switch_fit`` and ``resident_fit`` are least-squares lines ``c0 + c1 * context_tokens`` through
those (out + in) times: the switch-cost model ``lapsd replay --c0 --c1`` and ``lapsd validate
--cost-table`` take.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from lapsd.collect.engine import Clock, RoundRecord, Session, SpeculativeEngine, timing_clock
from lapsd.io import write_json
from lapsd.replay.costs import TABLE_KIND, TABLE_VERSION, fit_line


def profile(target_path: Path, draft: str, *, k: int, contexts: list[int], repeats: int,
            device: str, dtype: str, out: Path, capacity: int | None = None,
            batches: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Measure and write the cost table; returns it."""
    from lapsd.collect.loading import load_engine, resolve_device, resolve_dtype
    from lapsd.collect.models import load_tokenizer, parse_draft
    from lapsd.errors import LapsdError

    if not contexts or min(contexts) < 2 or repeats < 1 or k < 1:
        raise LapsdError("collect-profile: contexts must be >= 2 tokens, --repeats and --k >= 1")
    if not batches or min(batches) < 1:
        raise LapsdError(f"collect-profile: --batches must be sizes >= 1, got {batches}")
    sizes = tuple(sorted({1, *batches}))
    spec = parse_draft(draft)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    engine, target, collector = load_engine(
        target_path, spec, load_tokenizer(target_path), k=k, dtype=dt, device=dev,
        temperature=0.0, max_new_tokens=1, seed=0, chat=False)
    try:
        cap = engine.reserve(max(capacity or 0, max(contexts) + k + 1), batch=sizes[-1],
                             sizes=sizes)
    except ValueError as exc:
        raise LapsdError(f"collect-profile --batches: {exc}") from None
    clock = timing_clock(torch.device(dev))
    session = _random_sessions(engine)
    rounds, swaps, resident, batch = [], [], [], []
    for ctx in contexts:
        s = session(ctx + 1)  # ctx cached positions and the pending token
        rounds.extend(_rounds(s, clock, repeats, cap))
        swaps.append(_swap(clock, s, repeats))
        resident.append(_resident(clock, s, session(2), repeats))
        s.cancel()
        if sizes != (1,):
            for b in sizes:
                group = [session(ctx + 1) for _ in range(b)]
                records = _probed(functools.partial(engine.probe_batch, group, k), clock,
                                  repeats)
                batch.append({"batch": b, "context": ctx, "capacity": cap, "drafted": k,
                              **_medians(records)})
                for g in group:
                    g.cancel()
    graphs = engine.runner is not None and engine.runner.graphed
    table = {
        "kind": TABLE_KIND, "version": TABLE_VERSION, "target": target.name, "draft": spec.name,
        "k": k, "dtype": dt, "device": dev, "gpu": collector["gpu"],
        "engine_path": collector["engine_path"], "graphs": graphs, "capacity": cap,
        "timer": collector["timer"],
        "versions": collector["versions"], "rounds": rounds, "swap": swaps,
        "resident": resident, "batch": batch,
        "switch_fit": fit_line([s["context"] for s in swaps],
                               [s["out_s"] + s["in_s"] for s in swaps]),
        "resident_fit": fit_line([r["context"] for r in resident],
                                 [r["park_s"] + r["load_s"] for r in resident]),
    }
    write_json(out, table)
    return table


def batch_one_rounds(engine: SpeculativeEngine, longest: int, repeats: int
                     ) -> list[dict[str, Any]]:
    """Profile the engine's batch-1 rounds at contexts up to ``longest`` in its working cache.

    The contexts double from 64 and end at ``longest``; at each, rounds with exactly ``d = 0..k``
    drafts (rows as the cost table's ``rounds``). A batched collection times its rounds with
    these (:func:`lapsd.replay.costs.profiled_round`): the cache's capacity, which a static
    round's cost follows, is the one it collects with.
    """
    cap = engine.runner.capacity if engine.runner is not None else None
    contexts = [c for c in (64 * 2 ** i for i in range(32)) if c < longest] + [max(longest, 2)]
    clock = timing_clock(engine.device)
    session = _random_sessions(engine)
    rows = []
    for ctx in contexts:
        s = session(ctx + 1)
        rows.extend(_rounds(s, clock, repeats, cap))
        s.cancel()
    return rows


def _random_sessions(engine: SpeculativeEngine) -> Callable[[int], Session]:
    """A maker of prefilled one-token sessions over seeded random prompts of a given length."""
    vocab = int(engine.target.config.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def session(length: int) -> Session:
        prompt = torch.randint(0, vocab, (length,), generator=gen).tolist()
        s = engine.start(prompt, 1)
        s.prefill()
        return s

    return session


def _rounds(s: Session, clock: Clock, repeats: int, capacity: int | None
            ) -> list[dict[str, Any]]:
    """Rows of ``s``'s rounds with exactly ``d = 0..k`` drafts at its context."""
    rows = []
    for d in range(s.engine.k + 1):
        records = _probed(functools.partial(s.probe, d), clock, repeats)
        rows.append({"batch": 1, "context": s.cached, "capacity": capacity,
                     "drafted": records[-1].drafted, **_medians(records)})
    return rows


def _probed(probe: Callable[[], RoundRecord], clock: Clock, repeats: int) -> list[RoundRecord]:
    """``repeats`` timed records of ``probe()`` (a profiling round), after two warm-up ones."""
    records = []
    for _ in range(repeats + 2):
        r = probe()
        clock.sync()
        r.resolve(clock)
        records.append(r)
    return records[2:]


def _medians(records: list[RoundRecord]) -> dict[str, float]:
    return {name: statistics.median(_known(getattr(r, name)) for r in records)
            for name in ("draft_s", "verify_s", "round_s")}


def _known(seconds: float | None) -> float:
    if seconds is None:
        raise RuntimeError("the profiler's clock recorded no time")
    return seconds


def _timed(clock: Clock, *steps: Any) -> list[float]:
    """Seconds each of ``steps`` (callables, run in order) took on ``clock``."""
    marks = [clock.mark()]
    for step in steps:
        step()
        marks.append(clock.mark())
    clock.sync()
    return [_known(clock.seconds(a, b)) for a, b in pairwise(marks)]


def _swap(clock: Clock, s: Session, repeats: int) -> dict[str, Any]:
    """Median time to move one request's cache to host memory and back into use."""
    size = s.offload()
    s.activate()
    times = [_timed(clock, s.offload, s.activate) for _ in range(repeats + 1)][1:]
    return {"context": s.cached, "bytes": size,
            "out_s": statistics.median(t[0] for t in times),
            "in_s": statistics.median(t[1] for t in times)}


def _resident(clock: Clock, s: Session, other: Session, repeats: int) -> dict[str, Any]:
    """Median time to switch from ``s`` to a one-token ``other`` and back, both on the device."""
    times = [_timed(clock, other.activate, s.activate) for _ in range(repeats + 2)][2:]
    return {"context": s.cached, "park_s": statistics.median(t[0] for t in times),
            "load_s": statistics.median(t[1] for t in times)}

