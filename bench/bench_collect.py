"""Speed of ``lapsd collect``'s engine against Hugging Face generation, on one GPU, in one run.

For each draft it times, over the same prompts and token budget: the lapsd engine with and
without per-round recording, ``generate(assistant_model=...)`` (or ``prompt_lookup_num_tokens``
for ``ngram:N``) with a constant ``k``, and plain greedy ``generate``. It also counts how many
lapsd outputs equal plain greedy ``generate``'s output token for token, and says which engine path
ran (``static`` = :mod:`lapsd.collect.static`'s static cache and CUDA graphs, else the
DynamicCache loop).

On the static path it also prints the collector's mean round time (rounds that drafted ``k``
tokens) beside bare replays of the same steps on the same device: the captured draft and
verification graphs (plain steps on a CPU) run back to back with nothing else, timed with the
engine's clock. The difference is the engine's own per-round overhead (host work, the copy in
and out, bookkeeping).

Usage::

    python bench/bench_collect.py --target M.gguf --prompts q.jsonl --drafts layers:16,ngram:4 \
        --n 20 --max-new-tokens 128 --k 4 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lapsd.collect.engine import Clock, SpeculativeEngine, timing_clock


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_steps(eng: SpeculativeEngine, k: int, repeats: int = 50) -> tuple[float, float]:
    """Median seconds of the runner's draft(k) and verify(k) steps alone: ``(draft, verify)``.

    Replayed at the position the last round left in the runner's input (no request owns the
    working cache after ``generate``, so the writes are harmless).
    """
    runner = eng.runner
    assert runner is not None
    clock: Clock = timing_clock(runner.device)
    drafts: list[float] = []
    verifies: list[float] = []
    for _ in range(repeats + 3):
        m0 = clock.mark()
        if runner.split:
            runner.draft(k)
        m1 = clock.mark()
        runner.verify(k)
        m2 = clock.mark()
        clock.sync()
        drafts.append(clock.seconds(m0, m1) or 0.0)
        verifies.append(clock.seconds(m1, m2) or 0.0)
    return statistics.median(drafts[3:]), statistics.median(verifies[3:])


def main() -> None:
    """Run the comparison and print its table."""
    from lapsd.collect.engine import build_engine, eos_ids_of
    from lapsd.collect.loading import resolve_device
    from lapsd.collect.models import layers_draft, load_model, parse_draft
    from lapsd.collect.prompts import encode, load_prompts

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--drafts", default="layers:16,ngram:4")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    tm = load_model(args.target, dtype=args.dtype, device=dev)
    model, tok = tm.model, tm.tokenizer
    eos = eos_ids_of(model, tok)
    prompts = [encode(tok, p.text) for p in load_prompts(args.prompts)[: args.n]]
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
    print(f"device {gpu}; torch {torch.__version__}; target {tm.name}; dtype {args.dtype}; "
          f"k {args.k}; {len(prompts)} prompts; max_new_tokens {args.max_new_tokens}")

    def hf(ids: list[int], **kw: object) -> list[int]:
        x = torch.tensor([ids], device=dev)
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=args.max_new_tokens, **kw)
        return out[0, len(ids):].tolist()

    def timed(fn: object) -> tuple[float, int, list[list[int]]]:
        outs, n_tok, t_sum = [], 0, 0.0
        for ids in prompts:
            _sync()
            t0 = time.perf_counter()
            out = fn(ids)  # type: ignore[operator]
            _sync()
            t_sum += time.perf_counter() - t0
            outs.append(out)
            n_tok += len(out)
        return t_sum, n_tok, outs

    with torch.inference_mode():
        hf(prompts[0])  # warm-up
        t, n, greedy = timed(hf)
        base = n / t
        print(f"{'hf greedy generate':40s} {n / t:9.1f} tok/s  ({n} tokens, {t:.2f} s)")
        for spec_s in args.drafts.split(","):
            spec = parse_draft(spec_s)
            eng = build_engine(model, spec, None, k=args.k, eos_ids=eos, temperature=0.0,
                               device=dev)
            if spec.kind == "layers":
                draft = layers_draft(model, spec.n)
                draft.generation_config = model.generation_config.__class__.from_dict(
                    model.generation_config.to_dict())
                draft.generation_config.num_assistant_tokens = args.k
                draft.generation_config.num_assistant_tokens_schedule = "constant"
                draft.generation_config.assistant_confidence_threshold = 0.0
                hf_kw: dict[str, object] = {"assistant_model": draft}
            else:
                hf_kw = {"prompt_lookup_num_tokens": args.k, "max_matching_ngram_size": spec.n}
            for ids in prompts[:2]:  # warm-up
                eng.generate(ids, args.max_new_tokens)
                hf(ids, **hf_kw)
            t_hf, n_hf, _ = timed(lambda ids, kw=hf_kw: hf(ids, **kw))
            # recording on and off, interleaved prompt by prompt so drift hits both alike
            t_rec = t_off = 0.0
            n_rec = n_off = 0
            same = acc = drafted = rounds = 0
            full: list[tuple[float, float, float]] = []  # (round, draft, verify) of d = k rounds
            for i, ids in enumerate(prompts):
                for record in ((True, False) if i % 2 == 0 else (False, True)):
                    _sync()
                    t0 = time.perf_counter()
                    g = eng.generate(ids, args.max_new_tokens, record=record)
                    _sync()
                    dt = time.perf_counter() - t0
                    if record:
                        t_rec, n_rec = t_rec + dt, n_rec + len(g.tokens)
                        same += g.tokens == greedy[i]
                        acc += sum(r.accepted for r in g.rounds)
                        drafted += sum(r.drafted for r in g.rounds)
                        rounds += len(g.rounds)
                        full += [(r.round_s, r.draft_s or 0.0, r.verify_s or 0.0)
                                 for r in g.rounds
                                 if r.drafted == args.k and r.round_s is not None]
                    else:
                        t_off, n_off = t_off + dt, n_off + len(g.tokens)
            hf_rate, rec_rate, off_rate = n_hf / t_hf, n_rec / t_rec, n_off / t_off
            path = "static" if eng.static_split is not None else "dynamic-cache"
            print(f"--- draft {spec_s} ({path} path): acceptance {acc / max(drafted, 1):.3f}, "
                  f"{n_rec / rounds:.2f} tokens/round, greedy-identical {same}/{len(prompts)}")
            print(f"{'hf assisted generate ' + spec_s:40s} {hf_rate:9.1f} tok/s  ({n_hf} tokens)")
            print(f"{'lapsd engine, recording':40s} {rec_rate:9.1f} tok/s  ({n_rec} tokens)")
            print(f"{'lapsd engine, no recording':40s} {off_rate:9.1f} tok/s  ({n_off} tokens)")
            print(f"ratio lapsd(rec)/hf-assisted {rec_rate / hf_rate:.2f}x; lapsd(rec)/hf-greedy "
                  f"{rec_rate / base:.2f}x; recording overhead "
                  f"{100 * (t_rec / n_rec) / (t_off / n_off) - 100:+.2f}% time per token")
            if eng.runner is None or not full:
                print("engine overhead per round: n/a (DynamicCache path, or no round drafted k)")
                continue
            r_s, d_s, v_s = (statistics.fmean(x) for x in zip(*full, strict=True))
            bd, bv = bare_steps(eng, args.k)
            kind = "graphs" if eng.runner.graphed else "steps"
            print(f"collector round (d={args.k}, {len(full)} rounds) {1e3 * r_s:.3f} ms (draft "
                  f"{1e3 * d_s:.3f}, verify {1e3 * v_s:.3f}); bare {kind}: draft "
                  f"{1e3 * bd:.3f} ms, verify {1e3 * bv:.3f} ms; engine "
                  f"overhead per round {1e3 * (r_s - bd - bv):.3f} ms "
                  f"({100 * (r_s - bd - bv) / r_s:.1f}% of the round)")


if __name__ == "__main__":
    main()
