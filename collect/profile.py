"""Profiling mode: round cost against batch size and context length, and KV swap time.

The cost table (JSON) holds, per (batch size, context length), the median time of ``k`` draft
steps and of one verification pass over ``k + 1`` tokens, and per context length the time to copy
one request's KV cache (target and draft) to pinned host memory and back. ``switch_fit`` is the
least-squares line ``swap_s = c0 + c1 * context_tokens`` that ``lapsd replay --c0 --c1`` takes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from lapsd.collect.engine import Clock, crop_cache, timing_clock
from lapsd.collect.models import cache_arg
from lapsd.errors import LapsdError


def _prefill(model: Any, ids: torch.Tensor) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=ids, **cache_arg(model, cache), use_cache=True, logits_to_keep=1)
    return cache


def _kv_tensors(cache: Any) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]


@torch.inference_mode()
def profile(target_path: Path, draft: str, *, k: int, batch_sizes: list[int],
            contexts: list[int], repeats: int, device: str, dtype: str, out: Path
            ) -> dict[str, Any]:
    """Measure and write the cost table; returns it."""
    from lapsd.collect.models import layers_draft, load_model, parse_draft
    from lapsd.collect.run import resolve_device

    spec = parse_draft(draft)
    if spec.kind == "ngram":
        raise LapsdError("profiling needs a draft model (a path or layers:N), not ngram:N")
    dev = resolve_device(device)
    target = load_model(target_path, dtype=dtype, device=dev)
    if spec.kind == "layers":
        dmodel = layers_draft(target.model, spec.n)
    else:
        dmodel = load_model(spec.model_path, dtype=dtype, device=dev).model
    clock: Clock = timing_clock(torch.device(dev))
    vocab = target.model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    rounds = []
    for ctx in contexts:
        for b in batch_sizes:
            ids = torch.randint(0, vocab, (b, ctx + k + 1), generator=gen).to(dev)
            tcache, dcache = _prefill(target.model, ids[:, :ctx]), _prefill(dmodel, ids[:, :ctx])
            times: list[tuple[float, float]] = []
            for rep in range(repeats + 2):  # two warm-up rounds
                m0 = clock.mark()
                inp = ids[:, ctx:ctx + 1]
                for _ in range(k):
                    logits = dmodel(input_ids=inp, **cache_arg(dmodel, dcache),
                                    use_cache=True).logits
                    inp = logits[:, -1:].argmax(-1)
                m1 = clock.mark()
                target.model(input_ids=ids[:, ctx:ctx + k + 1], **cache_arg(target.model, tcache),
                             use_cache=True)
                m2 = clock.mark()
                clock.sync()
                crop_cache(tcache, ctx)
                crop_cache(dcache, ctx)
                if rep >= 2:
                    times.append((_elapsed(clock, m0, m1), _elapsed(clock, m1, m2)))
            d_s = statistics.median(t[0] for t in times)
            v_s = statistics.median(t[1] for t in times)
            rounds.append({"batch": b, "context": ctx, "draft_s": d_s, "verify_s": v_s,
                           "round_s": d_s + v_s})
            del tcache, dcache
    swaps = [_swap(target.model, dmodel, ctx, vocab, repeats, dev, gen) for ctx in contexts]
    table = {
        "kind": "lapsd-cost-table", "version": 1, "target": target.name, "draft": spec.name,
        "k": k, "dtype": dtype, "device": dev,
        "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None,
        "torch": torch.__version__, "rounds": rounds, "swap": swaps,
        "switch_fit": _fit([s["context"] for s in swaps], [s["out_s"] + s["in_s"] for s in swaps]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    from lapsd.io import atomic_write_text

    atomic_write_text(out, json.dumps(table, indent=2) + "\n")
    return table


def _swap(target: Any, draft: Any, ctx: int, vocab: int, repeats: int,
          dev: str, gen: torch.Generator) -> dict[str, Any]:
    """Median time to copy one request's KV caches to pinned host memory and back."""
    ids = torch.randint(0, vocab, (1, ctx), generator=gen).to(dev)
    tensors = _kv_tensors(_prefill(target, ids)) + _kv_tensors(_prefill(draft, ids))
    pin = dev.startswith("cuda")
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in tensors]
    clock: Clock = timing_clock(torch.device(dev))
    outs, ins = [], []
    for rep in range(repeats + 2):
        m0 = clock.mark()
        for h, t in zip(host, tensors, strict=True):
            h.copy_(t, non_blocking=True)
        m1 = clock.mark()
        for h, t in zip(host, tensors, strict=True):
            t.copy_(h, non_blocking=True)
        m2 = clock.mark()
        clock.sync()
        if rep >= 2:
            outs.append(_elapsed(clock, m0, m1))
            ins.append(_elapsed(clock, m1, m2))
    return {"context": ctx, "bytes": sum(t.numel() * t.element_size() for t in tensors),
            "out_s": statistics.median(outs), "in_s": statistics.median(ins)}


def _elapsed(clock: Clock, a: Any, b: Any) -> float:
    seconds = clock.seconds(a, b)
    if seconds is None:
        raise RuntimeError("the profiler's clock recorded no time")
    return seconds


def _fit(x: list[int], y: list[float]) -> dict[str, float]:
    """Least-squares ``y = c0 + c1 x``, both clipped at zero (costs are never negative)."""
    if len(x) < 2:
        return {"c0": max(y[0], 0.0) if y else 0.0, "c1": 0.0}
    mx, my = statistics.fmean(x), statistics.fmean(y)
    var = sum((a - mx) ** 2 for a in x)
    c1 = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / var if var else 0.0
    return {"c0": max(my - c1 * mx, 0.0), "c1": max(c1, 0.0)}
