"""A collection run: checks, the request loop, chunked atomic writes, resume, shards, merge.

Output layout of ``--out DIR``: ``DIR`` is the trace (``lapsd inspect DIR`` reads it)::

    DIR/requests.parquet, rounds.parquet, manifest.json   the merged trace, rewritten at the end
    DIR/states.parquet        with --states: the target's hidden states (lapsd.collect.states)
    DIR/.chunks/s0of1-00000/  complete trace folders, one per chunk, each written atomically
    DIR/errors.jsonl          requests that failed (out of memory), one JSON object a line

A killed run loses at most the chunk in progress; ``--resume`` skips every request already in a
chunk, so nothing is run twice or dropped. The merged trace's tables are replaced one file at a
time with the manifest removed first and written last, so a reader sees the old trace, no trace
(no manifest), or the new one, never a mix; the chunks stay the record either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapsd.collect import states as hidden
from lapsd.collect.loading import check_models, load_engine, resolve_device, resolve_dtype
from lapsd.errors import LapsdError
from lapsd.replay.costs import profiled_round
from lapsd.replay.trace import (
    MANIFEST_FILE,
    REQUESTS_FILE,
    ROUNDS_FILE,
    STATES_FILE,
    Trace,
    TraceError,
    make_trace,
    new_manifest,
    read_trace,
    write_trace,
)

logger = logging.getLogger(__name__)

CHUNKS = ".chunks"
ERRORS = "errors.jsonl"
#: What a collection folder may hold besides its chunks and errors: the merged trace.
TRACE_FILES = (REQUESTS_FILE, ROUNDS_FILE, STATES_FILE, MANIFEST_FILE)


@dataclass
class CollectConfig:
    """Everything ``lapsd collect`` takes (see the CLI help for each field)."""

    target: Path
    draft: str
    prompts: Path
    out: Path
    k: int = 4
    max_new_tokens: int = 512
    device: str = "auto"
    dtype: str = "auto"
    temperature: float = 0.0
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    seed: int = 0
    chunk_size: int = 25
    resume: bool = False
    chat: bool = True
    states: str | None = None
    states_every: int | None = None
    batch_size: int = 1


def preflight(cfg: CollectConfig) -> tuple[Any, list[Any], Any, hidden.StatesSpec | None]:
    """Checks that need no weights: paths, prompt file, draft vocabulary, states' layers.

    Returns ``(draft_spec, prompts_to_run, target_tokenizer, states)``.
    """
    from lapsd.collect.prompts import load_prompts, select

    prompts = select(load_prompts(cfg.prompts), shard=cfg.shard, limit=cfg.limit)
    if cfg.k < 1 or cfg.max_new_tokens < 1:
        raise LapsdError("--k and --max-new-tokens must be >= 1")
    if cfg.batch_size < 1:
        raise LapsdError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.batch_size > 1 and cfg.temperature > 0:
        raise LapsdError(f"--batch-size {cfg.batch_size} needs greedy decoding (--temperature 0): "
                         "batched steps run the static path, which samples nothing")
    spec, tok = check_models(cfg.target, cfg.draft)
    return spec, prompts, tok, states_spec(cfg.target, cfg.states, cfg.states_every)


def states_spec(target: Path, layers: str | None, every: int | None
                ) -> hidden.StatesSpec | None:
    """``--states`` and ``--states-every`` for ``target`` (its config is read, no weights)."""
    from lapsd.collect.models import load_config

    hidden.check_options(layers, every)
    if layers is None:
        return None
    config = load_config(target)
    return hidden.resolve(layers, every, config.num_hidden_layers, config.hidden_size)


def done_ids(out: Path) -> set[str]:
    """Request ids already written in ``out``'s chunks."""
    ids: set[str] = set()
    for chunk in chunk_dirs(out):
        ids.update(read_trace(chunk).requests["request_id"].to_list())
    return ids


def chunk_dirs(out: Path) -> list[Path]:
    """Complete chunk folders (temporary ``.name.*`` folders of a killed write are skipped)."""
    base = out / CHUNKS
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def collect(cfg: CollectConfig, *, log: Callable[[str], Any] | None = None) -> Path:
    """Run every selected prompt not yet collected and return the merged trace folder.

    ``log`` receives progress lines (default: the ``lapsd.collect`` logger, level INFO).
    """
    log = log or logger.info
    from lapsd.collect.prompts import encode

    spec, prompts, tok, states = preflight(cfg)
    out = cfg.out
    if chunk_dirs(out) and not cfg.resume:
        raise LapsdError(f"{out} already holds chunks: pass --resume to continue that run "
                              "or choose another --out")
    foreign = sorted(p.name for p in out.iterdir()  # (hidden names: staging of a killed run)
                     if p.name not in (ERRORS, *TRACE_FILES) and not p.name.startswith(".")
                     ) if out.is_dir() else []
    if foreign:
        raise LapsdError(f"{out} is not a collection folder (it holds {', '.join(foreign[:3])}"
                         f"{' ...' if len(foreign) > 3 else ''}); choose a new or empty --out")
    done = done_ids(out) if cfg.resume else set()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if done:
        _check_resumable(out, {"timing": _timing(cfg.batch_size),
                               "collector": {"target": cfg.target.name, "draft": spec.name,
                                             "k": cfg.k, "dtype": dtype,
                                             "temperature": cfg.temperature}}, states)
    todo = [p for p in prompts if p.request_id not in done]
    log(f"{len(prompts)} prompts in shard {cfg.shard[0]}/{cfg.shard[1]}, {len(done)} done, "
        f"{len(todo)} to run")
    engine, target, collector = load_engine(
        cfg.target, spec, tok, k=cfg.k, dtype=dtype, device=device,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        chat=cfg.chat, states=states)
    encoded = [(p, encode(tok, p.text, chat=cfg.chat)) for p in todo]
    profile = None
    if cfg.batch_size > 1:
        profile = _reserve_batched(engine, encoded, cfg)
        log(f"batch-1 rounds profiled at {len(profile) // (cfg.k + 1)} contexts; collecting "
            f"{cfg.batch_size} requests at a time")
    manifest = new_manifest(
        timing=_timing(cfg.batch_size),
        sources=[cfg.prompts],
        response_offsets="exact: decoded text length after each round",
        collector={**collector, "shard": list(cfg.shard), "batch_size": cfg.batch_size},
    )
    if profile is not None:
        manifest["round_profile"] = profile
    seq = len(chunk_dirs(out))
    buffer: list[tuple[Any, Any, str, list[int]]] = []

    def flush() -> None:
        nonlocal seq, buffer
        if not buffer:
            return
        name = f"s{cfg.shard[0]}of{cfg.shard[1]}-{seq:05d}"
        write_chunk(buffer, manifest, out / CHUNKS / name, target.name, spec.name, cfg.k,
                    engine.states)
        seq += 1
        buffer = []

    runs = (_one_at_a_time(engine, encoded, cfg, out, log) if profile is None
            else _batched(engine, encoded, cfg, profile))
    try:
        for finished, (prompt, result) in enumerate(runs, 1):
            buffer.append((prompt, result, *response_text(tok, result)))
            if len(buffer) >= cfg.chunk_size:
                flush()
                log(f"{len(done) + finished}/{len(prompts)} requests written")
    finally:
        flush()  # also on Ctrl-C: what is done is kept
    return publish(merged([out]), out)


def _timing(batch_size: int) -> str:
    """How a collection at ``batch_size`` times its rounds (the manifest's ``timing``)."""
    return "measured_per_round" if batch_size == 1 else "profiled_per_round"


def _one_at_a_time(engine: Any, encoded: list[tuple[Any, list[int]]], cfg: CollectConfig,
                   out: Path, log: Callable[[str], Any]) -> Iterator[tuple[Any, Any]]:
    """Run each request alone, its rounds timed as they run: ``(prompt, generation)``.

    A request that runs out of memory is logged to ``errors.jsonl`` and skipped.
    """
    import torch

    for prompt, ids in encoded:
        try:
            result = engine.generate(ids, cfg.max_new_tokens,
                                     seed=request_seed(cfg.seed, prompt.request_id))
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            _log_error(out, prompt.request_id, len(ids), exc)
            log(f"request {prompt.request_id}: out of memory ({len(ids)} prompt tokens), "
                "skipped")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield prompt, result


def _reserve_batched(engine: Any, encoded: list[tuple[Any, list[int]]], cfg: CollectConfig
                     ) -> list[dict[str, Any]]:
    """Size the working cache for ``--batch-size`` rows and profile its batch-1 rounds.

    Returns the profile (:func:`lapsd.collect.profile.batch_one_rounds`) that times the
    batched collection's rounds as if each had run alone.
    """
    from lapsd.collect.profile import batch_one_rounds

    longest = max((len(ids) for _, ids in encoded), default=1)
    try:
        capacity = engine.reserve(longest + cfg.max_new_tokens + cfg.k + 1, batch=cfg.batch_size)
    except ValueError as exc:
        raise LapsdError(f"--batch-size {cfg.batch_size}: {exc}") from None
    return batch_one_rounds(engine, capacity - cfg.k - 2, repeats=10)


def _batched(engine: Any, encoded: list[tuple[Any, list[int]]], cfg: CollectConfig,
             profile: list[dict[str, Any]]) -> Iterator[tuple[Any, Any]]:
    """Run up to ``cfg.batch_size`` requests per step, a new one joining as one finishes.

    Every round keeps the step it ran in (``batch``: its size; ``step_s``: its measured time)
    and gets the time it takes alone (``round_s``, ``draft_s``, ``verify_s``) from ``profile``
    at its drafted count and context, so the trace replays as a batch-1 collection would.
    Yields ``(prompt, generation)`` in the order requests finish.
    """
    waiting = iter(encoded)
    running: list[tuple[Any, Any]] = []
    while True:
        while len(running) < cfg.batch_size and (nxt := next(waiting, None)) is not None:
            running.append((nxt[0], engine.start(nxt[1], cfg.max_new_tokens)))
        if not running:
            return
        sessions = [s for _, s in running]
        records = engine.step_batch(sessions)
        for r in records:
            r.batch = len(sessions)
        still = []
        for prompt, session in running:
            if not session.done:
                still.append((prompt, session))
                continue
            result = session.result()
            for r in result.rounds:
                r.step_s = r.round_s
                r.draft_s, r.verify_s, r.round_s = profiled_round(profile, r.drafted,
                                                                  r.context_tokens)
            yield prompt, result
        running = still


def request_seed(seed: int, request_id: str) -> int:
    """The sampling seed of one request: from the run's seed and the request id alone.

    So a sampled request draws the same tokens whichever shard runs it, and after ``--resume``.
    """
    digest = hashlib.sha256(f"{seed}\0{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _log_error(out: Path, request_id: str, prompt_tokens: int, exc: BaseException) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / ERRORS).open("a") as f:
        f.write(json.dumps({"request_id": request_id, "prompt_tokens": prompt_tokens,
                            "error": f"{type(exc).__name__}: {exc}"[:500],
                            "time": time.time()}) + "\n")


def response_text(tokenizer: Any, generation: Any) -> tuple[str, list[int]]:
    """The generated text, and its length in characters after each round.

    The lengths come from decoding the tokens produced up to each round (special tokens
    skipped), made non-decreasing and capped at the whole text's length.
    """
    tokens = generation.tokens
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    offsets, produced, longest = [], 0, 0
    for r in generation.rounds:
        produced += r.emitted
        longest = max(longest, len(tokenizer.decode(tokens[:produced],
                                                    skip_special_tokens=True)))
        offsets.append(min(longest, len(text)))
    return text, offsets


def rows(items: list[tuple[Any, Any, str, list[int]]], target: str, draft: str, k: int,
         source: str = "lapsd-collect") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Request and round rows for (prompt, generation, text, per-round offsets) items."""
    req, rnd = [], []
    for prompt, g, text, offsets in items:
        req.append({
            "request_id": prompt.request_id, "source": source,
            "dataset": prompt.dataset, "category": prompt.category, "prompt": prompt.text,
            "prompt_tokens": g.prompt_tokens, "target_model": target, "draft_model": draft,
            "k": k, "finish_reason": g.finish_reason, "total_s": g.total_s,
            "prefill_s": g.prefill_s, "response": text,
        })
        for j, (r, chars) in enumerate(zip(g.rounds, offsets, strict=True)):
            rnd.append({
                "request_id": prompt.request_id, "round": j, "drafted": r.drafted,
                "accepted": r.accepted, "emitted": r.emitted, "draft_s": r.draft_s,
                "verify_s": r.verify_s, "round_s": r.round_s, "context_tokens": r.context_tokens,
                "response_chars": chars,
                **({} if r.step_s is None else {"batch": r.batch, "step_s": r.step_s}),
            })
    return req, rnd


def write_chunk(items: list[tuple[Any, Any, str, list[int]]], manifest: dict[str, Any],
                dest: Path, target: str, draft: str, k: int,
                states: hidden.StatesSpec | None = None) -> Path:
    """Write one chunk as a complete trace folder (atomic: renamed into place when done)."""
    return write_trace(collection_trace(items, manifest, target, draft, k, states), dest)


def collection_trace(items: list[tuple[Any, Any, str, list[int]]], manifest: dict[str, Any],
                     target: str, draft: str, k: int, states: hidden.StatesSpec | None,
                     source: str = "lapsd-collect") -> Trace:
    """The trace of (prompt, generation, text, per-round offsets) items, with their states."""
    import polars as pl

    req, rnd = rows(items, target, draft, k, source)
    table = None
    if states is not None:
        table, block = hidden.table(((prompt.request_id, g.states) for prompt, g, *_ in items
                                     if g.states is not None), states)
        manifest = {**manifest, "states": block}
    return make_trace(pl.DataFrame(req, infer_schema_length=None),
                      pl.DataFrame(rnd, infer_schema_length=None), manifest, table)


def merge(sources: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    """Merge collection folders (their chunks) or trace folders into one trace folder ``out``.

    Raises
    ------
    TraceError
        When a request id occurs twice, or the parts disagree on target, draft, k or dtype.
    """
    return write_trace(merged(sources), out, overwrite=overwrite)


def merged(sources: list[Path]) -> Trace:
    """The trace that merges ``sources``: a collection folder's chunks, a trace folder itself."""
    import polars as pl

    parts: list[Path] = []
    for src in sources:
        found = chunk_dirs(src)
        if found:
            parts.extend(found)
        elif (src / MANIFEST_FILE).exists():
            parts.append(src)
        else:
            raise TraceError(f"neither a collection folder (with {CHUNKS}/) nor a trace folder",
                             path=src)
    if not parts:
        raise TraceError("nothing to merge: no chunks found", path=sources[0])
    owner: dict[str, Path] = {}
    reqs, rnds, states = [], [], []
    manifest: dict[str, Any] | None = None
    for part in parts:
        t = read_trace(part)
        for rid in t.requests["request_id"].to_list():
            if rid in owner:
                raise TraceError(f"request id {rid!r} occurs in {owner[rid]} and in {part}; "
                                 "the parts overlap (same shard collected twice?)", path=part)
            owner[rid] = part
        if manifest is None:
            manifest = dict(t.manifest)
        else:
            _check_compatible(manifest, t.manifest, part)
        reqs.append(t.requests)
        rnds.append(t.rounds)
        if t.states is not None:
            states.append((t.states, t.manifest["states"]["saturated"]))
    assert manifest is not None
    manifest["merged_from"] = [str(p) for p in parts]
    if "collector" in manifest:
        manifest["collector"] = {**manifest["collector"], "shard": None}
    if states:  # every part has them (_check_compatible)
        manifest["states"] = {**manifest["states"], "saturated": sum(n for _, n in states)}
    return make_trace(pl.concat(reqs, how="diagonal_relaxed"),
                      pl.concat(rnds, how="diagonal_relaxed"), manifest,
                      pl.concat([df for df, _ in states]) if states else None)


def publish(trace: Trace, out: Path) -> Path:
    """Write ``trace`` at the top of the collection folder ``out`` (see the module docstring)."""
    import os

    staged = write_trace(trace, out / ".merged", overwrite=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for name in TRACE_FILES:  # the manifest last
        if (staged / name).exists():
            os.replace(staged / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    staged.rmdir()
    return out


def _check_resumable(out: Path, manifest: dict[str, Any],
                     states: hidden.StatesSpec | None) -> None:
    """Refuse to ``--resume`` with a setup that the chunks in ``out`` were not collected with.

    ``manifest``: what the run's manifest will say (its ``collector`` block's setup keys).
    """
    planned = manifest if states is None else {
        **manifest, "states": states.manifest_block(hidden.stored_dtype(), 0)}
    differs = _difference(read_trace(chunk_dirs(out)[0]).manifest, planned)
    if differs is not None:
        key, chunks, here = differs
        raise LapsdError(f"--resume: {key} is {chunks!r} in {out}'s chunks and {here!r} with "
                         "these options; resume with the options that wrote them, or choose "
                         "another --out")


def _states_setup(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What a part's states were recorded with (``None``: no states)."""
    block = manifest.get("states")
    return None if block is None else {k: v for k, v in block.items() if k != "saturated"}


def _check_compatible(a: dict[str, Any], b: dict[str, Any], where: Path) -> None:
    differs = _difference(a, b)
    if differs is not None:
        key, first, here = differs
        raise TraceError(f"cannot merge: {key} is {first!r} in the first part and {here!r} "
                         "here", path=where)


def _difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setup key two parts' manifests disagree on, with both values (``None``: none).

    How round times were obtained, the collector's target, draft, k, dtype and temperature,
    and the states recorded.
    """
    if a.get("timing") != b.get("timing"):
        return "timing", a.get("timing"), b.get("timing")
    ca, cb = a.get("collector", {}), b.get("collector", {})
    for key in ("target", "draft", "k", "dtype", "temperature"):
        if ca.get(key) != cb.get(key):
            return key, ca.get(key), cb.get(key)
    sa, sb = _states_setup(a), _states_setup(b)
    if sa is None or sb is None:
        return None if sa is sb else ("states", "none" if sa is None else "recorded",
                                      "none" if sb is None else "recorded")
    return next(((f"states.{k}", sa.get(k), sb.get(k)) for k in sorted({*sa, *sb})
                 if sa.get(k) != sb.get(k)), None)

