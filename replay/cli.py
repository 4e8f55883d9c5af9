"""The ``lapsd`` command: one subcommand per job.

The CLI only parses arguments and calls library functions; each package contributes its own
subcommands through a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from replay import __version__
from replay.trace import TraceError

console = Console(stderr=True, soft_wrap=True)
#: Tables go to stdout; off a terminal they get a fixed width instead of 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_assignments(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``policy.param=value`` strings into ``{policy: {param: value}}`` (values parsed as JSON
    where possible, so ``K=6`` is an int and ``unit=rounds`` a string)."""
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        policy, dot, name = target.rpartition(".")
        if not sep or not dot or not policy or not name:
            raise CLIError(f"--set {item!r}: expected POLICY.PARAM=VALUE, e.g. laps-sd.K=6")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params.setdefault(policy, {})[name] = parsed
    return params


def write_json(path: str, payload: Any) -> None:
    """Write JSON to a file atomically, or to stdout for ``-``."""
    from replay.trace import atomic_write_text

    text = json.dumps(payload, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(path, text)


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from replay.trace import read_trace, summarize

    summary = summarize(read_trace(args.trace))
    if args.json:
        write_json(args.json, summary)
        if args.json == "-":
            return 0
    table = Table(title=f"trace {args.trace}: {summary['requests']} requests, "
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
    out.print(f"targets: {', '.join(summary['targets']) or '-'}; drafts: "
              f"{', '.join(summary['drafts']) or '-'}; acceptance rate: "
              f"{'-' if acc is None else f'{acc:.3f}'}")
    cats = ", ".join(f"{k} {v}" for k, v in list(summary["categories"].items())[:12])
    out.print(f"categories: {cats}")
    return 0


# ---------------------------------------------------------------------- import
def cmd_import_specbench(args: argparse.Namespace) -> int:
    from replay.importers.specbench import import_specbench
    from replay.trace import write_trace

    k: int | str | None = "infer"
    if args.k is not None:
        k = None if args.k == "variable" else int(args.k)
    trace, report = import_specbench(
        args.files, args.questions, k=k, target_model=args.target_model,
        draft_model=args.draft_model, max_token_mismatch=args.max_token_mismatch,
    )
    write_trace(trace, args.out, overwrite=args.force)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s['file']}:{s['line']} question {s['question_id']}: "
                      f"{s['reason']}")
    console.print(f"wrote {args.out}: {trace.n_requests} requests, {trace.n_rounds} rounds from "
                  f"{report.records} records ({len(report.skipped)} skipped)")
    if args.json:
        write_json(args.json, {"out": str(args.out), "requests": trace.n_requests,
                               "rounds": trace.n_rounds, "records": report.records,
                               "skipped": report.skipped})
    return 0


# ---------------------------------------------------------------------- replay
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def metrics_table(metrics: list, title: str) -> Table:
    """A rich table of :class:`~replay.metrics.Metrics` rows."""
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
    from replay.engine import SwitchCost, TraceArrays
    from replay.run import ReplaySetup, replay_all
    from replay.trace import read_trace

    arrays = TraceArrays.from_trace(read_trace(args.trace))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    predictions: Any = args.predictions
    if args.predictor:
        from predict.apply import predictor_source

        predictions = predictor_source(args.predictor)
    elif predictions is None:
        predictions = "column" if arrays.predicted is not None else "oracle:sigma=0.5"
    factories = {}
    if args.config:
        from tune.config import scheduler_factory

        factories["laps-sd"] = scheduler_factory(args.config)
    setup = ReplaySetup(policies=policies, params=parse_assignments(args.set),
                        predictions=predictions, switch=SwitchCost(args.c0, args.c1),
                        factories=factories)
    metrics = replay_all(arrays, args.workload or ["burst:n=30"], setup)
    if args.json:
        write_json(args.json, {
            "trace": str(args.trace), "predictions": str(getattr(predictions, "name",
                                                                  predictions)),
            "switch_cost": {"c0": args.c0, "c1": args.c1},
            "results": [m.to_dict() for m in metrics],
        })
        if args.json == "-":
            return 0
    for wl in dict.fromkeys(m.workload for m in metrics):
        out.print(metrics_table([m for m in metrics if m.workload == wl], f"workload {wl}"))
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from replay.policies import available

    parser = argparse.ArgumentParser(
        prog="lapsd",
        description="Schedule speculative-decoding LLM requests: collect traces, train a length "
                    "predictor, replay schedulers, tune LAPS-SD and export its config.",
    )
    parser.add_argument("--version", action="version", version=f"lapsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="validate a trace and summarize it",
                       description="Validate a trace folder and print its summary.")
    p.add_argument("trace", type=Path, help="trace folder")
    p.add_argument("--json", metavar="OUT", help="also write the summary as JSON ('-': stdout)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("import", help="convert public traces to lapsd traces")
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
    q.add_argument("--force", action="store_true", help="replace an existing trace folder")
    q.add_argument("--json", metavar="OUT", help="write the import report as JSON")
    q.set_defaults(func=cmd_import_specbench)

    p = sub.add_parser(
        "replay", help="replay a trace through schedulers",
        description="Replay a trace under workloads through several policies and compare mean "
                    "and tail latency, normalised by srpt-oracle.",
        epilog="Workloads: burst:n=30 | poisson:load=0.9,n=1000,seed=1 | "
               "gamma:load=0.9,cv=3,n=1000,seed=1 | trace:ARRIVALS.csv,load=0.8,seed=1. "
               f"Policies: {', '.join(available())}.",
    )
    p.add_argument("trace", type=Path, help="trace folder")
    p.add_argument("--policies", default="fcfs,las,mlfq,lp-sjf,lp-srpt,srpt-oracle,laps-sd",
                   help="comma-separated policy names (default: all)")
    p.add_argument("--workload", action="append",
                   help="workload string (repeatable; default burst:n=30)")
    p.add_argument("--set", action="append", default=[], metavar="POLICY.PARAM=VALUE",
                   help="policy parameter, e.g. laps-sd.K=6 (repeatable)")
    p.add_argument("--predictions", help="oracle:sigma=S[,seed=N] or column (default: column if "
                                         "the trace has predictions, else oracle:sigma=0.5)")
    p.add_argument("--predictor", type=Path, help="a trained predictor (.skops) for lp-sjf, "
                                                  "lp-srpt and laps-sd")
    p.add_argument("--config", type=Path, help="lapsd-config.json: laps-sd uses its parameters")
    p.add_argument("--c0", type=float, default=0.0, help="switch cost, seconds per preemption")
    p.add_argument("--c1", type=float, default=0.0,
                   help="switch cost, seconds per context token of the preempted request")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON ('-': stdout)")
    p.set_defaults(func=cmd_replay)

    from collect.cli import register as register_collect
    from predict.cli import register as register_predict
    from tune.cli import register as register_tune

    for register in (register_predict, register_tune, register_collect):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapsd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, TraceError, ValueError, FileNotFoundError, FileExistsError) as exc:
        console.print(f"[bold red]lapsd {args.command}: error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
