"""``lapsd`` subcommands of the collect package.

``collect``, ``collect-profile``, ``merge``, ``live`` and ``validate``. Torch and transformers
are imported only when a command that needs them runs, so that ``lapsd``'s other commands (and
``import lapsd.replay``) never load them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from lapsd.collect.states import AUTO, DEFAULT_EVERY
from lapsd.console import add_json, console, emit, out, progress
from lapsd.errors import LapsdError, require_extra

DTYPES = ["auto", "bfloat16", "float16", "float32"]


def _model_options(p: argparse.ArgumentParser) -> None:
    """Options every command that runs the engine takes."""
    p.add_argument("--target", type=Path, required=True, help="HF model folder or .gguf file")
    p.add_argument("--draft", required=True, help="model path, layers:N or ngram:N")
    p.add_argument("--k", type=int, default=4, help="draft tokens per round (default 4)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto (default): bfloat16 on a GPU, float32 on a CPU")


def _run_options(p: argparse.ArgumentParser) -> None:
    """Options of commands that serve prompts (collect, live)."""
    p.add_argument("--prompts", type=Path, required=True,
                   help="JSON Lines prompt file (Spec-Bench question.jsonl works)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); >0: speculative rejection sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with the request id)")
    p.add_argument("--no-chat-template", dest="chat", action="store_false",
                   help="feed the prompt text as is")
    p.add_argument("--states", nargs="?", const=AUTO, metavar="LAYERS",
                   help="record the target's hidden states (a states.parquet side table): at "
                        "the prompt's end at these layers (comma-separated, 1..L; without "
                        f"LAYERS: {AUTO}, the quarter points L/4, L/2, 3L/4) and every "
                        "--states-every generated tokens at the middle one; off by default")
    p.add_argument("--states-every", type=int, metavar="G",
                   help=f"generated tokens between decode states (default {DEFAULT_EVERY})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""
    p = subparsers.add_parser(
        "collect", help="run real speculative decoding and record a per-round trace",
        description="Run a target/draft pair over a prompt file with speculative decoding and "
                    "write a trace at OUT (chunks written atomically in OUT/.chunks; the merged "
                    "trace at OUT, rewritten at the end).",
        epilog="DRAFT: a model folder or .gguf file with the target's vocabulary, layers:N "
               "(the target's first N layers) or ngram:N (prompt lookup).",
    )
    _model_options(p)
    _run_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (the trace)")
    p.add_argument("--shard", default="0/1", help="run shard i of n (every n-th prompt from i)")
    p.add_argument("--limit", type=int, help="run at most this many prompts (after sharding)")
    p.add_argument("--chunk-size", type=int, default=25, help="requests per written chunk")
    p.add_argument("--resume", action="store_true", help="continue a run in OUT")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="run up to B requests per step (greedy, static path), a new one joining "
                        "as one finishes; each round's round_s is then the engine's batch-1 "
                        "time at its draft count and context, profiled at the start (manifest "
                        "round_profile), and the measured step is kept as batch and step_s "
                        "(default 1: every round timed as it runs)")
    p.set_defaults(func=cmd_collect)

    p = subparsers.add_parser(
        "collect-profile", help="measure the engine's round cost and switch costs",
        description="Time the engine's rounds (the path collect and live run) for each draft "
                    "count 0..k and context length, and switching a request's KV cache (to "
                    "host memory and back; between device-resident requests); with --batches, "
                    "steps of several requests; write a cost table (JSON) with the "
                    "switch-cost fits c0 + c1 * context.",
    )
    _model_options(p)
    p.add_argument("--contexts", default="128,512,1024,2048")
    p.add_argument("--capacity", type=int,
                   help="static path: working-cache positions (default: the largest context; "
                        "a collection has its longest request's prompt + max-new-tokens + k)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batches", default="1", metavar="B,B,...",
                   help="static path: also time steps of these batch sizes, k drafts each "
                        "(the table replays at --batch-size read; default 1: none)")
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

    p = subparsers.add_parser(
        "live", help="serve a workload under a scheduler, for real, and record it",
        description="Serve requests arriving in real time (the workload's arrivals at a load "
                    "relative to the capacity measured in a warm-up) with speculative "
                    "decoding, one round at a time, in the order the scheduler picks; keep "
                    "every admitted request's KV cache; write the trace, the schedule and "
                    "what was measured to OUT.",
        epilog="Workloads: burst:n=30 | poisson:load=0.9,n=300,seed=1 | "
               "gamma:load=0.9,cv=3,n=300,seed=1 | trace:ARRIVALS.csv,load=0.8,seed=1.",
    )
    _model_options(p)
    _run_options(p)
    p.add_argument("--workload", required=True, help="workload string (see below)")
    p.add_argument("--policy", help="a registered policy (fcfs, las, mlfq, lp-sjf, lp-srpt, "
                                    "srpt-oracle, laps-sd, ...)")
    p.add_argument("--set", action="append", default=[], metavar="POLICY.PARAM=VALUE",
                   help="a parameter of --policy, e.g. laps-sd.K=6 (repeatable)")
    p.add_argument("--config", type=Path, help="lapsd-config.json: serve its scheduler")
    p.add_argument("--predictor", type=Path, help="a trained predictor (.skops) for the "
                                                  "length-aware policies; a probe (`lapsd "
                                                  "predict train --probe`) reads the target's "
                                                  "states: each request is prefilled on "
                                                  "arrival and re-predicted every G tokens "
                                                  "(its layers and G unless --states says)")
    p.add_argument("--predictions", help="oracle:sigma=S[,seed=N]: a what-if from the true "
                                         "lengths of --oracle-trace (true length x noise)")
    p.add_argument("--oracle-trace", type=Path,
                   help="a collection of the same prompts: true service times (srpt-oracle) "
                        "and lengths (--predictions oracle:...)")
    p.add_argument("--kv-budget-tokens", type=int,
                   help="most context tokens of KV cache kept on the device (default: no "
                        "limit); beyond it caches are swapped to host memory")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="requests per step: the scheduler names up to B and the engine runs "
                        "one round of each in one pass (default 1; above 1: greedy, static "
                        "path, no --kv-budget-tokens)")
    p.add_argument("--warmup", type=int, default=8,
                   help="requests of the capacity warm-up (default 8; after one unmeasured)")
    p.add_argument("--capacity-from", type=Path, metavar="DIR",
                   help="a live run's folder: reuse its measured capacity and typical round "
                        "(same arrivals); or a collection of the prompt file on this GPU: "
                        "the mean service of its prompts, no warm-up estimate")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="divide arrival times by this (compress time; default 1)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    add_json(p, "the run's summary (live.json)")
    p.set_defaults(func=cmd_live)

    p = subparsers.add_parser(
        "validate", help="replay live runs and compare with what they measured",
        description="Replay each live run (same arrivals, rounds, policy, predictions; a "
                    "switch-cost model) and compare mean/p50/p90/p99 latency with the run's; "
                    "with several runs, compare the policies' ranking too.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="LIVE_DIR")
    p.add_argument("--c0", type=float, help="switch cost, seconds per preemption (with --c1; "
                                            "default: fitted to the run's own switches)")
    p.add_argument("--c1", type=float, help="switch cost, seconds per context token")
    p.add_argument("--cost-table", type=Path, help="a cost table from collect-profile")
    p.add_argument("--rounds-from", type=Path, metavar="TRACE_DIR",
                   help="replay this trace's rounds of the runs' prompts (e.g. a batch-1 "
                        "collection) instead of the runs' own: a prediction, not a re-run")
    p.add_argument("--batch-cost", type=Path, metavar="TABLE",
                   help="batched runs: slow steps down as this collect-profile --batches "
                        "table says (default: steps last their members' recorded rounds)")
    add_json(p, "the comparison")
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser(
        "fit-batch-cost", help="fit a batch cost table to batched live runs' steps",
        description="For every step of the batched live runs, compare its server time with "
                    "the mean of its members' rounds in a batch-1 collection of the same "
                    "prompts, and write the slowdown by batch size (the server's own work per "
                    "step included) as a table validate --batch-cost and replay --cost-table "
                    "read.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="LIVE_DIR")
    p.add_argument("--rounds-from", type=Path, required=True, metavar="TRACE_DIR",
                   help="a batch-1 collection of the runs' prompts (lapsd collect)")
    p.add_argument("--out", type=Path, required=True, help="cost table file (.json)")
    add_json(p, "the table")
    p.set_defaults(func=cmd_fit_batch_cost)


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
        states=args.states, states_every=args.states_every, batch_size=args.batch_size,
    )
    path = collect(cfg, log=console.print)
    out.print(f"trace written to {path}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``lapsd collect-profile``."""
    require_extra("collect", "torch", "transformers")
    from lapsd.collect.profile import profile

    def ints(option: str, text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",")]
        except ValueError:
            raise LapsdError(f"{option} {text!r}: expected integers like 1,2,4") from None

    table = profile(args.target, args.draft, k=args.k, contexts=ints("--contexts", args.contexts),
                    repeats=args.repeats, device=args.device, dtype=args.dtype, out=args.out,
                    capacity=args.capacity, batches=tuple(ints("--batches", args.batches)))
    out.print(json.dumps({"switch_fit": table["switch_fit"],
                          "resident_fit": table["resident_fit"]}))
    console.print(f"cost table written to {args.out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``lapsd merge``."""
    from lapsd.collect.run import merge

    path = merge(args.sources, args.out, overwrite=args.force)
    out.print(f"merged trace written to {path}")
    return 0


def policy_params(policy: str | None, items: list[str]) -> dict[str, Any]:
    """``--set POLICY.PARAM=VALUE`` items for ``--policy``: they must name the run's policy."""
    from lapsd.replay.policies.params import parse_assignments

    params = parse_assignments(items)
    other = [name for name in params if name != policy]
    if other:
        raise LapsdError(f"--set: the run's policy is {policy!r}, not {other[0]!r}")
    return params.get(policy or "", {})


def cmd_live(args: argparse.Namespace) -> int:
    """``lapsd live``."""
    require_extra("collect", "torch", "transformers")
    from lapsd.collect.live import LiveConfig, serve

    cfg = LiveConfig(
        target=args.target, draft=args.draft, prompts=args.prompts, workload=args.workload,
        out=args.out, policy=args.policy, params=policy_params(args.policy, args.set),
        config=args.config, predictor=args.predictor, predictions=args.predictions,
        oracle_trace=args.oracle_trace, k=args.k, max_new_tokens=args.max_new_tokens,
        device=args.device, dtype=args.dtype, temperature=args.temperature, chat=args.chat,
        seed=args.seed, kv_budget_tokens=args.kv_budget_tokens, batch_size=args.batch_size,
        warmup=args.warmup,
        capacity_from=args.capacity_from, time_scale=args.time_scale, force=args.force,
        states=args.states, states_every=args.states_every,
    )
    bar = progress()
    task = None

    def advance(done: int, n: int) -> None:
        nonlocal task
        if task is None:  # serving starts: every check has passed
            bar.start()
            task = bar.add_task("requests finished", total=n)
        bar.update(task, completed=done)

    try:
        info = serve(cfg, log=console.print, progress=advance)
    finally:
        bar.stop()
    emit(args.json, info, lambda: _show_live(info, args.out))
    return 0


def _show_live(info: dict[str, Any], path: Path) -> None:
    run, lat, sched = info["run"], info["latency"], info["scheduler"]
    sw = info["switches"]
    batch = f" in {run['steps']} steps of up to {info['batch_size']}" if info.get(
        "batch_size", 1) > 1 else ""
    out.print(f"live run {path}: {run['finished']}/{run['requests']} requests, {run['rounds']} "
              f"rounds{batch} in {run['wall_s']:.2f} s (idle {run['idle_s']:.2f} s); latency mean "
              f"{lat['mean_s']:.4g} s, p90 {lat['p90_s']:.4g} s; {run['preemptions']} "
              f"preemptions, {run['swaps']} swaps to host; switches {sw['count']} "
              f"({run['switches_s']:.4g} s); scheduler {100 * (sched['overhead_ratio'] or 0):.2f}"
              "% of round time")


def cmd_validate(args: argparse.Namespace) -> int:
    """``lapsd validate``."""
    from lapsd.collect.validate import SwitchModel, validate

    given = (args.c0, args.c1) != (None, None)
    if given and args.cost_table is not None:
        raise LapsdError("give --c0/--c1 or --cost-table, not both")
    if given:
        model = SwitchModel("given", args.c0 or 0.0, args.c1 or 0.0)
    elif args.cost_table is not None:
        model = SwitchModel("table", table=args.cost_table)
    else:
        model = SwitchModel()
    from lapsd.replay.costs import BatchCost

    cost = None if args.batch_cost is None else BatchCost.from_profile(args.batch_cost)
    result = validate(args.runs, model, rounds_from=args.rounds_from, cost=cost)
    emit(args.json, result, lambda: _show_validation(result))
    return 0


def cmd_fit_batch_cost(args: argparse.Namespace) -> int:
    """``lapsd fit-batch-cost``."""
    from lapsd.collect.validate import fit_batch_cost
    from lapsd.io import write_json
    from lapsd.replay.live_run import read_live

    table = fit_batch_cost([read_live(r) for r in args.runs], args.rounds_from)
    write_json(args.out, table)

    def show() -> None:
        rows = ", ".join(f"B={r['batch']}: {r['slowdown']:.3f} ({r['steps']} steps)"
                         for r in table["batch"])
        out.print(f"slowdown over the collected rounds: {rows}; "
                  f"{table['fitted_from']['skipped_steps']} steps left out")
        console.print(f"batch cost table written to {args.out}")

    emit(args.json, table, show)
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _show_validation(result: dict[str, Any]) -> None:
    table = Table(title="replay vs live: latency error (replay - live) / live")
    for col in ("run", "policy", "n", "live mean s", "replay mean s", "mean", "p50", "p90",
                "p99", "|request| mean", "preempt live/replay", "switch s live/replay",
                "sched %"):
        table.add_column(col, justify="left" if col in ("run", "policy") else "right")
    for c in result["runs"]:
        e, sw = c["error"], c["switches"]
        table.add_row(Path(c["run"]).name, c["policy"], str(c["requests"]),
                      f"{c['live']['mean']:.4g}", f"{c['replay']['mean']:.4g}",
                      _pct(e["mean"]), _pct(e["p50"]), _pct(e["p90"]), _pct(e["p99"]),
                      f"{100 * c['per_request']['mean_abs_error']:.1f}%",
                      f"{sw['live_preemptions']}/{sw['replay_preemptions']}",
                      f"{sw['live_s']:.3g}/{sw['replay_s']:.3g}",
                      f"{100 * (c['scheduler']['overhead_ratio'] or 0):.2f}")
    out.print(table)
    for c in result["runs"]:
        sw, m = c["switches"], c["switch_model"]
        bins = ", ".join(f"{b['tokens_from']}-{b['tokens_to']}: {_pct(b['mean_error'])}"
                         for b in c["per_request"]["by_context"])
        agree = c["order_agreement"]
        if c["rounds"] != "the run's own" or c["batch_size"] > 1:
            out.print(f"{Path(c['run']).name}: batch size {c['batch_size']}, rounds from "
                      f"{c['rounds']}, batch cost {c['batch_cost']}; "
                      f"{100 * c['same_output']:.0f}% of its requests have the run's output "
                      "length there")
        out.print(f"{Path(c['run']).name}: switch model c0={m['c0']:.3g} s, c1={m['c1']:.3g} "
                  f"s/token ({m['how']}); live switch time {sw['live_s']:.4g} s "
                  f"({sw['live_at_preemptions_s']:.4g} s at preemptions, "
                  f"{sw['live_unmodelled_s']:.4g} s unmodelled), replayed {sw['replay_s']:.4g}"
                  f" s; error by context tokens: {bins}; completion order agreement "
                  f"{'-' if agree is None else f'{agree:.3f}'}")
    if "ranking" in result:
        r = result["ranking"]
        verdict = "the same" if r["same"] else "DIFFERENT"
        out.print(f"ranking by mean latency is {verdict}: live {' < '.join(r['live'])}; replay "
                  f"{' < '.join(r['replay'])}")
        if not r["same_workload"]:
            console.print(f"[yellow]the runs served different workloads: {r['workloads']}[/]")
