"""Measure how a speculative-decoding step slows down with the batch size, on the GPU.

The live engine runs one request at a time, so ``lapsd collect-profile`` times batch size one
only. Replay at batch sizes above one (``lapsd.replay.batch``) needs the *shape* of the step
time against the batch size. This script measures it with the engine's own arithmetic
(:mod:`lapsd.collect.static`: the target's modules over a static KV cache, masked attention over
the whole working cache, rotary embeddings computed in the step) given a batch dimension, each
step captured as one CUDA graph, for a SmolLM2-135M-shaped target (random weights: time does not
depend on their values). ``--eager`` times the same steps without graphs.

One SD step at batch size ``B`` with draft length ``k``:

* draft (``layers:L`` self-speculation): ``k`` passes of the first ``L`` layers over ``B`` rows
  of one token each;
* verify: one pass of the whole model over ``B`` rows of ``k + 1`` tokens (an ``ngram`` round
  is this alone).

Each row has ``context`` cached tokens in a working cache of ``capacity`` slots. Times are
CUDA-event medians. The output has ``batch`` rows that
:meth:`lapsd.replay.batch.BatchCost.from_profile` reads (``round_s``: verify plus the draft
passes, a ``layers`` round; ``verify_s`` alone is an ``ngram`` round).

Usage::

    python bench/batch_cost_gpu.py --out layers.json --out-ngram ngram.json [--batches 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# SmolLM2-135M-Instruct's architecture (from its GGUF metadata).
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rope_theta": 100000.0,
                "tie_word_embeddings": True, "rms_norm_eps": 1e-5}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class BatchedSteps:
    """The static engine's layer arithmetic with a batch dimension, over a working cache."""

    def __init__(self, model: LlamaForCausalLM, batch: int, capacity: int) -> None:
        self.model, self.base = model, model.model
        self.layers = list(self.base.layers)
        cfg = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.n_kv = cfg.num_key_value_heads
        self.hd = cfg.hidden_size // cfg.num_attention_heads
        self.inv_freq = self.base.rotary_emb.inv_freq.to(self.device, torch.float32)
        self.capacity = capacity
        self.kv = torch.zeros((len(self.layers), 2, batch, self.n_kv, capacity, self.hd),
                              dtype=self.dtype, device=self.device)
        self.slots = torch.arange(capacity, device=self.device)

    def layers_pass(self, x: torch.Tensor, pos: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Layers ``lo..hi-1`` on ``x`` (B, T, H) at positions ``pos`` (B, T)."""
        b, t, _ = x.shape
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        mask = self.slots[None, None, :] <= pos[..., None]  # (B, T, capacity)
        for i in range(lo, hi):
            layer, att = self.layers[i], self.layers[i].self_attn
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(b, t, -1, self.hd).transpose(1, 2)
            k = att.k_proj(h).view(b, t, -1, self.hd).transpose(1, 2)
            v = att.v_proj(h).view(b, t, -1, self.hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = self.kv[i, 0], self.kv[i, 1]  # (B, n_kv, capacity, hd)
            idx = pos[:, None, :, None].expand(b, self.n_kv, t, self.hd)
            keys.scatter_(2, idx, k)
            values.scatter_(2, idx, v)
            qg = q.reshape(b, self.n_kv, -1, self.hd)  # (B, n_kv, groups * T, hd)
            scores = torch.matmul(qg, keys.transpose(2, 3)) * att.scaling
            scores = scores.view(b, self.n_kv, -1, t, self.capacity).masked_fill(
                ~mask[:, None, None], float("-inf"))
            w = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
            o = torch.matmul(w.view(b, self.n_kv, -1, self.capacity), values)
            o = o.view(b, -1, t, self.hd).transpose(1, 2).reshape(b, t, -1)
            x = x + att.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The greedy next token of every position."""
        return self.model.lm_head(self.base.norm(x)).argmax(-1)


def _clock(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """A function that times ``fn()`` in seconds with the device's clock."""
    def cuda(fn: Callable[[], None]) -> float:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3

    def host(fn: Callable[[], None]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return cuda if device.type == "cuda" else host


def _graphed(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` captured as one CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


@torch.inference_mode()
def measure(model: LlamaForCausalLM, *, batch: int, context: int, capacity: int, k: int,
            draft_layers: int, repeats: int, graphs: bool) -> dict[str, float]:
    """Median times of one draft pass and one verify pass at this batch size."""
    steps = BatchedSteps(model, batch, capacity)
    dev = steps.device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, k + 1), device=dev)
    pos = context + torch.arange(k + 1, device=dev).expand(batch, -1).contiguous()
    out = torch.zeros((batch, k + 1), dtype=torch.long, device=dev)
    n = len(steps.layers)

    def verify() -> None:
        out.copy_(steps.head(steps.layers_pass(steps.base.embed_tokens(ids), pos, 0, n)))

    def draft() -> None:
        x = steps.layers_pass(steps.base.embed_tokens(ids[:, :1]), pos[:, :1], 0, draft_layers)
        out[:, :1] = steps.head(x)

    clock = _clock(dev)
    res = {}
    for name, fn in (("verify_s", verify), ("draft_step_s", draft)):
        run = _graphed(fn, dev) if graphs and dev.type == "cuda" else fn
        for _ in range(3):
            run()
        res[name] = statistics.median(clock(run) for _ in range(repeats))
    return res


def main(argv: list[str] | None = None) -> int:
    """Measure and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="the layers:N table (round = verify + k draft passes)")
    ap.add_argument("--out-ngram", type=Path, help="also the ngram table (round = verify)")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--contexts", default="128,512")
    ap.add_argument("--capacity", type=int, default=1024, help="working-cache slots per row")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--draft-layers", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (a CPU smoke test)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = dict(SMOLLM2_135M)
    if args.tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
        args.draft_layers = 1
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device=device, dtype=dtype).eval()
    rows = []
    for context in (int(c) for c in args.contexts.split(",")):
        for b in (int(x) for x in args.batches.split(",")):
            t = measure(model, batch=b, context=context, capacity=args.capacity, k=args.k,
                        draft_layers=args.draft_layers, repeats=args.repeats,
                        graphs=not args.eager)
            rows.append({"batch": b, "context": context, "capacity": args.capacity, **t})
            print(json.dumps(rows[-1]), flush=True)
    graphed = device.type == "cuda" and not args.eager
    meta = {"kind": "lapsd-batch-cost", "device": device.type,
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "target": "SmolLM2-135M architecture (random weights)", "k": args.k,
            "dtype": str(dtype).removeprefix("torch."),
            "path": "the static engine's arithmetic, batched"
                    + (", one CUDA graph per step" if graphed else ", eager"),
            "versions": {"torch": torch.__version__,
                         "transformers": sys.modules["transformers"].__version__}}
    layers = [{**r, "round_s": r["verify_s"] + args.k * r["draft_step_s"]} for r in rows]
    args.out.write_text(json.dumps(
        {**meta, "draft": f"layers:{args.draft_layers}", "batch": layers}, indent=1) + "\n")
    if args.out_ngram:
        ngram = [{**r, "round_s": r["verify_s"]} for r in rows]
        args.out_ngram.write_text(json.dumps(
            {**meta, "draft": "ngram", "batch": ngram}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
