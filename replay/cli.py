"""``lapsd`` subcommands of the replay package: inspect, import, draft-length and replay.

The commands only parse arguments, call library functions and print; errors are
:class:`~lapsd.errors.LapsdError` (one line, exit status 2, from the root command).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from lapsd.console import add_json, add_switch_cost, console, emit, out
from lapsd.errors import LapsdError
from lapsd.io import check_output
from lapsd.replay.policies.params import parse_assignments


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    """``lapsd inspect``."""
    from lapsd.replay.trace import read_trace, summarize

    summary = summarize(read_trace(args.trace))
    emit(args.json, summary, lambda: _show_summary(args.trace, summary))
    return 0


def _show_summary(trace: Path, summary: dict[str, Any]) -> None:
    table = Table(title=f"trace {trace}: {summary['requests']} requests, "
                        f"{summary['rounds']} rounds ({summary['timing']})")
    table.add_column("distribution")
    for col in ("mean", "p10", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for key in ("output_tokens", "rounds_per_request", "tokens_per_round", "round_s",
                "service_s"):
        d = summary[key]
        table.add_row(key, *(f"{d[c]:.4g}" for c in ("mean", "p10", "p50", "p90", "p99", "max")))
    out.print(table)
    acc = summary["acceptance_rate"]
    rate = "-" if acc is None else f"{acc:.3f}"
    out.print(f"targets: {', '.join(summary['targets']) or '-'}; drafts: "
              f"{', '.join(summary['drafts']) or '-'} ({summary['draft_length']} draft length); "
              f"acceptance rate: {rate}; accepted tokens per round: "
              f"{summary['accepted_per_round']:.3f}")
    cats = ", ".join(f"{k} {v}" for k, v in list(summary["categories"].items())[:12])
    out.print(f"categories: {cats}")


# ---------------------------------------------------------------------- import
def cmd_import_specbench(args: argparse.Namespace) -> int:
    """``lapsd import specbench``."""
    from lapsd.replay.importers.specbench import MAX_COUNT, import_specbench
    from lapsd.replay.trace import write_trace

    check_output(args.out, "--out", folder=True, force=args.force)
    k: int | str | None = "infer"
    if args.k == "variable":
        k = None
    elif args.k is not None:
        try:
            k = int(args.k)
        except ValueError:
            k = -1
        if not 0 <= k <= MAX_COUNT:
            raise LapsdError(f"--k {args.k}: expected 'variable' or a draft length, a whole "
                             f"number from 0 to {MAX_COUNT}")
    if args.max_token_mismatch < 0:
        raise LapsdError(f"--max-token-mismatch must be >= 0, got {args.max_token_mismatch}")
    trace, report = import_specbench(
        args.files, args.questions, k=k, target_model=args.target_model,
        draft_model=args.draft_model, max_token_mismatch=args.max_token_mismatch,
    )
    write_trace(trace, args.out, overwrite=args.force)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s['file']}:{s['line']} question {s['question_id']}: "
                      f"{s['reason']}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {args.out}: {trace.n_requests} requests, {trace.n_rounds} rounds from "
                  f"{report.records} records ({len(report.skipped)} records or turns skipped)")
    emit(args.json, {"out": str(args.out), "requests": trace.n_requests,
                     "rounds": trace.n_rounds, "records": report.records,
                     "skipped": report.skipped, "notes": report.notes})
    return 0


# ---------------------------------------------------------------------- draft-length
def cmd_draft_length(args: argparse.Namespace) -> int:
    """``lapsd draft-length``."""
    from lapsd.replay.costs import read_table
    from lapsd.replay.draft_length import at_draft_length
    from lapsd.replay.trace import read_trace, summarize, write_trace

    check_output(args.out, "--out", folder=True, force=args.force)
    trace = read_trace(args.trace)
    profile = None if args.cost_table is None else read_table(args.cost_table).get("rounds")
    if args.cost_table is not None and not profile:
        raise LapsdError(f"cost table {args.cost_table} has no batch-1 rounds; write one with "
                         "`lapsd collect-profile`")
    derived = at_draft_length(trace, args.k, profile=profile, seed=args.seed,
                              where=str(args.trace))
    write_trace(derived.trace, args.out, overwrite=args.force)
    before, after = summarize(trace), summarize(derived.trace)
    report = {"out": str(args.out), "k": args.k, "from_k": int(trace.requests["k"][0]),
              "requests": derived.trace.n_requests, "rounds_before": trace.n_rounds,
              "rounds": derived.trace.n_rounds, "positions": derived.positions,
              "modelled": derived.modelled,
              "service_s_before": before["service_s"]["mean"],
              "service_s": after["service_s"]["mean"]}

    def show() -> None:
        share = derived.modelled / derived.positions if derived.positions else 0.0
        out.print(
            f"wrote {args.out}: {report['requests']} requests at draft length {args.k} (from "
            f"{report['from_k']}): {trace.n_rounds} -> {derived.trace.n_rounds} rounds, mean "
            f"service {report['service_s_before']:.4g} -> {report['service_s']:.4g} s; "
            f"{share:.1%} of the agreement tests modelled (positions no recorded round tested)")

    emit(args.json, report, show)
    return 0


# ---------------------------------------------------------------------- replay
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def metrics_table(metrics: list, title: str) -> Table:
    """A rich table of :class:`~lapsd.replay.metrics.Metrics` rows."""
    table = Table(title=title)
    for col in ("policy", "mean s", "p50 s", "p90 s", "p99 s", "mean/srpt", "req/s",
                "preempt", "switch %", "est err"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for m in metrics:
        table.add_row(m.policy, _fmt(m.mean), _fmt(m.p50), _fmt(m.p90), _fmt(m.p99),
                      _fmt(m.norm_mean), _fmt(m.throughput_rps, ".2f"), str(m.preemptions),
                      _fmt(100 * m.switch_share, ".2f"),
                      "-" if m.est_error is None else f"{100 * m.est_error:.1f}%")
    return table


def cmd_replay(args: argparse.Namespace) -> int:
    """``lapsd replay``."""
    from lapsd.replay.arrays import TraceArrays
    from lapsd.replay.costs import SwitchCost
    from lapsd.replay.matrix import Server, build_cases, registry_factories, replay_matrix
    from lapsd.replay.policies import REGISTRY
    from lapsd.replay.trace import read_trace
    from lapsd.replay.workload import (
        PredictionSource,
        check_recorded,
        parse_workload,
        recorded_updates,
    )

    arrays = TraceArrays.from_trace(read_trace(args.trace))
    workloads = [parse_workload(w) for w in args.workload or ["burst:n=30"]]
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    params = parse_assignments(args.set, names)
    factories = registry_factories(names, arrays.scale, params)
    predictor = args.predictor
    if args.config:
        from lapsd.replay.config import config_predictor, load_config

        config = load_config(args.config)
        if config.policy.name in params:
            raise LapsdError(f"--set {config.policy.name}.*: {config.policy.name} runs with the "
                             f"parameters of --config {args.config}; edit the config or drop "
                             "the --set")
        factories[config.policy.name] = config.scheduler
        if config.policy.name not in names:
            names.append(config.policy.name)
        if args.predictions is None:  # else the what-if or column asked for
            predictor = config_predictor(args.config, predictor, config)
    factories = {n: factories[n] for n in names}
    from lapsd.replay.costs import BatchCost

    if args.batch_size < 1:
        raise LapsdError(f"--batch-size must be >= 1, got {args.batch_size}")
    cost = BatchCost.from_profile(args.cost_table) if args.cost_table else BatchCost()
    predictions: PredictionSource
    updates = None
    if args.repredict_every is not None and args.repredict_every < 1:
        raise LapsdError(f"--repredict-every must be >= 1 (rounds), got {args.repredict_every}")
    if args.repredict_every is not None and not predictor:
        raise LapsdError("--repredict-every needs --predictor: re-predictions come from a model "
                         "that reads the output so far")
    if args.recorded_updates and args.repredict_every is not None:
        raise LapsdError("--recorded-updates and --repredict-every both re-predict: the first "
                         "replays the beliefs the trace records, the second makes new ones "
                         "with --predictor; pass one")
    if predictor:
        predictions, updates = args.load_predictor(predictor, args.repredict_every)
        label = f"predictor {predictor}" + (
            f", re-predicted every {args.repredict_every} rounds" if updates else "")
    if args.recorded_updates:
        check_recorded(arrays)
        updates = recorded_updates
    needs = any(REGISTRY[n].needs_prediction for n in names if n in REGISTRY) or args.config
    if not predictor:
        if needs and not args.predictions and arrays.predicted is None:
            wanting = [n for n in names if n in REGISTRY and REGISTRY[n].needs_prediction]
            raise LapsdError(
                f"{', '.join(wanting) or 'the config'} need length predictions and "
                f"{args.trace} has no predicted_tokens column: pass --predictor model.skops "
                "(lapsd predict train), or --predictions oracle:sigma=0.5 for a what-if with "
                "noisy true lengths")
        predictions = args.predictions or "column"
        label = predictions
    if args.recorded_updates:
        label += ", re-predicted as the trace records"
    cases = build_cases([(args.trace.name, arrays)], workloads,
                        predictions if needs else None, updates if needs else None)
    server = Server(SwitchCost(args.c0, args.c1), args.batch_size, cost, args.kv_tokens)
    rows = [row.metrics for row in replay_matrix(cases, factories, server=server)]

    def show() -> None:
        if args.batch_size > 1:
            console.print(f"batch size {args.batch_size}; step-time model: {cost.source}; "
                          f"loads relative to batch size 1 (this server is worth "
                          f"{server.capacity:.2f} of it: `lapsd tune --batch-size` scales its "
                          "loads by that)", highlight=False)
        if label.startswith("oracle"):
            console.print(f"[yellow]predictions: {label}, a what-if (true length x noise), "
                          "not a real predictor[/]")
        for wl in dict.fromkeys(m.workload for m in rows):
            out.print(metrics_table([m for m in rows if m.workload == wl],
                                    f"workload {wl} (predictions: {label})"))

    emit(args.json, {"trace": str(args.trace), "predictions": label,
                     "switch_cost": {"c0": args.c0, "c1": args.c1},
                     "results": [m.to_dict() for m in rows]}, show)
    return 0


# ---------------------------------------------------------------------- parser
def register(subparsers: argparse._SubParsersAction, *,
             load_predictor: Any = None) -> None:
    """Add this package's subcommands to the ``lapsd`` parser.

    ``load_predictor(path) -> PredictionSource`` serves ``lapsd replay --predictor``; the root
    command passes it in, so that this package never imports the predictor.
    """
    from lapsd.replay.policies import available

    p = subparsers.add_parser("inspect", help="validate a trace and summarize it",
                              description="Validate a trace folder and print its summary.")
    p.add_argument("trace", type=Path, help="trace folder")
    add_json(p, "the summary")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "draft-length", help="derive a trace's rounds at a shorter draft length",
        description="Cut a trace's outputs into the rounds a shorter draft length k would run "
                    "(greedy decoding: the output is the same; agreement from the recorded "
                    "rounds, round times from a batch-1 round profile). Fixed-length drafting "
                    "only.")
    p.add_argument("trace", type=Path, help="trace folder (fixed-length drafting)")
    p.add_argument("--k", type=int, required=True, help="the new draft length (0 to the trace's)")
    p.add_argument("--out", type=Path, required=True, help="trace folder to write")
    p.add_argument("--cost-table", type=Path,
                   help="`lapsd collect-profile` table whose rounds time the derived rounds "
                        "(default: the trace's own round_profile)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the positions no recorded round tested")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_json(p, "the summary")
    p.set_defaults(func=cmd_draft_length)

    p = subparsers.add_parser("import", help="convert public traces to lapsd traces")
    isub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = isub.add_parser("specbench", help="Spec-Bench answer files (per-step accept lengths)",
                        description="Import Spec-Bench answer JSONL files: each turn becomes a "
                                    "request, each verification step a round.")
    q.add_argument("files", nargs="+", type=Path, help="answer files (.jsonl)")
    q.add_argument("--questions", type=Path, help="question.jsonl with the prompts")
    q.add_argument("--out", type=Path, required=True, help="trace folder to write")
    q.add_argument("--k", help="draft length per round: an integer, or 'variable' "
                               "(default: largest accept length - 1)")
    q.add_argument("--target-model", help="target model name (default: the model_id)")
    q.add_argument("--draft-model", help="draft model name (default: the model_id)")
    q.add_argument("--max-token-mismatch", type=int, default=0,
                   help="tolerated difference between accept lengths and new_tokens per turn")
    q.add_argument("--force", action="store_true",
                   help="replace an existing --out (folder or file)")
    add_json(q, "the import report")
    q.set_defaults(func=cmd_import_specbench)

    p = subparsers.add_parser(
        "replay", help="replay a trace through schedulers",
        description="Replay a trace under workloads through several policies and compare mean "
                    "and tail latency, normalised by srpt-oracle.",
        epilog="Workloads: burst:n=30 | poisson:load=0.9,n=1000,seed=1 | "
               "gamma:load=0.9,cv=3,n=1000,seed=1 | trace:ARRIVALS.csv,load=0.8,seed=1. "
               f"Policies: {', '.join(available())}.",
    )
    p.add_argument("trace", type=Path, help="trace folder")
    p.add_argument("--policies", default=",".join(available()),
                   help="comma-separated policy names (default: all)")
    p.add_argument("--workload", action="append",
                   help="workload string (repeatable; default burst:n=30)")
    p.add_argument("--set", action="append", default=[], metavar="POLICY.PARAM=VALUE",
                   help="policy parameter, e.g. laps-sd.K=6 (repeatable)")
    p.add_argument("--predictions", help="column (the trace's predicted_tokens; the default "
                                         "without --predictor) or oracle:sigma=S[,seed=N] (a "
                                         "what-if: true length x noise, never the default)")
    p.add_argument("--predictor", type=Path, help="a trained predictor (.skops) for the "
                                                  "length-aware policies (default with "
                                                  "--config: the config's own)")
    p.add_argument("--repredict-every", type=int, metavar="N",
                   help="with --predictor: re-predict a running request's length every N rounds "
                        "from its output so far")
    p.add_argument("--recorded-updates", action="store_true",
                   help="deliver the re-predictions the trace records (belief_median/"
                        "belief_sigma, written by `lapsd predict apply PROBE` on a trace "
                        "collected with --states) to the policies after the rounds that made "
                        "them")
    p.add_argument("--config", type=Path,
                   help="lapsd-config.json: its policy replaces the registry one of that name; "
                        "its predictor (checked against the sha256 it records) predicts unless "
                        "--predictions says otherwise")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="requests per step (continuous batching; default 1)")
    p.add_argument("--cost-table", type=Path,
                   help="collect-profile cost table: how a batch's step time grows with its size "
                        "(default: flat, said in the output)")
    p.add_argument("--kv-tokens", type=int,
                   help="KV capacity in tokens at batch sizes above one (default: unbounded)")
    add_switch_cost(p)
    add_json(p)
    p.set_defaults(func=cmd_replay, load_predictor=load_predictor)
