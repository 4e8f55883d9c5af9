"""``lapsd`` subcommands of the collect package: ``collect``, ``collect-profile`` and ``merge``.

Torch and transformers are imported only when one of these commands runs, so that ``lapsd``'s
other commands (and ``import lapsd.replay``) never load them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lapsd.console import console, out
from lapsd.errors import require_extra


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""
    p = subparsers.add_parser(
        "collect", help="run real speculative decoding and record a per-round trace",
        description="Run a target/draft pair over a prompt file with speculative decoding and "
                    "write a trace (chunks written atomically; the merged trace in OUT/trace).",
        epilog="DRAFT: a model folder or .gguf file with the target's vocabulary, layers:N "
               "(the target's first N layers) or ngram:N (prompt lookup).",
    )
    p.add_argument("--target", type=Path, required=True, help="HF model folder or .gguf file")
    p.add_argument("--draft", required=True, help="model path, layers:N or ngram:N")
    p.add_argument("--prompts", type=Path, required=True,
                   help="JSON Lines prompt file (Spec-Bench question.jsonl works)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--k", type=int, default=4, help="draft tokens per round (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); >0: speculative rejection sampling")
    p.add_argument("--shard", default="0/1", help="run shard i of n (every n-th prompt from i)")
    p.add_argument("--limit", type=int, help="run at most this many prompts (after sharding)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=25, help="requests per written chunk")
    p.add_argument("--resume", action="store_true", help="continue a run in OUT")
    p.add_argument("--no-chat-template", dest="chat", action="store_false",
                   help="feed the prompt text as is")
    p.set_defaults(func=cmd_collect)

    p = subparsers.add_parser(
        "collect-profile", help="measure round cost vs batch size/context and KV swap time",
        description="Time a speculative-decoding round for batch sizes and context lengths, "
                    "and the swap of one request's KV cache to host memory and back; write a "
                    "cost table (JSON) for the replay's switch-cost model and batch sizes > 1.",
    )
    p.add_argument("--target", type=Path, required=True)
    p.add_argument("--draft", required=True, help="model path or layers:N")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--contexts", default="128,512,1024,2048")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", type=Path, required=True, help="cost table file (.json)")
    p.set_defaults(func=cmd_profile)

    p = subparsers.add_parser(
        "merge", help="merge collection folders or traces into one trace",
        description="Merge the chunks of one or more collection folders (e.g. one per shard) "
                    "or trace folders into one trace; request ids must be unique.",
    )
    p.add_argument("sources", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_merge)


def cmd_collect(args: argparse.Namespace) -> int:
    """``lapsd collect``."""
    require_extra("collect", "torch", "transformers")
    from lapsd.collect.prompts import parse_shard
    from lapsd.collect.run import CollectConfig, collect

    cfg = CollectConfig(
        target=args.target, draft=args.draft, prompts=args.prompts, out=args.out, k=args.k,
        max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype,
        temperature=args.temperature, shard=parse_shard(args.shard), limit=args.limit,
        seed=args.seed, chunk_size=args.chunk_size, resume=args.resume, chat=args.chat,
    )
    path = collect(cfg, log=console.print)
    out.print(f"trace written to {path}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``lapsd collect-profile``."""
    require_extra("collect", "torch", "transformers")
    from lapsd.collect.profile import profile

    table = profile(
        args.target, args.draft, k=args.k,
        batch_sizes=[int(x) for x in args.batch_sizes.split(",")],
        contexts=[int(x) for x in args.contexts.split(",")], repeats=args.repeats,
        device=args.device, dtype=args.dtype, out=args.out,
    )
    out.print(json.dumps(table["switch_fit"]))
    console.print(f"cost table written to {args.out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``lapsd merge``."""
    from lapsd.collect.run import merge

    path = merge(args.sources, args.out, overwrite=args.force)
    out.print(f"merged trace written to {path}")
    return 0
