"""``lapsd`` subcommands of the tune package: ``tune`` and ``report``."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lapsd.console import add_json, add_switch_cost, console, emit, out
from lapsd.errors import LapsdError, require_extra
from lapsd.tune.defaults import (
    DEFAULT_BAND_LIMITS,
    DEFAULT_BAND_TRIALS,
    DEFAULT_FAMILY,
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    DEFAULT_TRIALS,
)
from lapsd.tune.suite import Suite

if TYPE_CHECKING:
    from lapsd.tune.run import TuneResult


def _ints(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "none"):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Bar:
    """A rich progress bar per study with the best objective value so far.

    It shows from the first report on, so that a run refused by its checks prints only the
    error.
    """

    def __init__(self) -> None:
        from rich.progress import TextColumn

        from lapsd.console import progress

        self.progress = progress(TextColumn("best {task.fields[best]}"))
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int, best: float | None) -> None:
        if not self.tasks:
            self.progress.start()
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total, best="-")
        self.progress.update(self.tasks[label], completed=done,
                             best="-" if best is None else f"{best:.4f}")


def cmd_tune(args: argparse.Namespace) -> int:
    """``lapsd tune``."""
    require_extra("tune", "optuna", "plotly", "sklearn")
    from lapsd.tune.context import TRAINED, TuneSpec
    from lapsd.tune.run import RunOptions, run_tune

    if args.predictor is not None and args.predictions is not None:
        raise LapsdError("give --predictor (a trained predictor file) or --predictions, "
                         "not both")
    predictions = "predictor" if args.predictor is not None else args.predictions or TRAINED
    suite = Suite(bursts=args.bursts, loads=args.loads, poisson_n=args.poisson_n,
                  seeds=args.seeds)
    spec = TuneSpec(
        traces=tuple(str(Path(t)) for t in args.traces), suite=suite, holdout=args.holdout,
        seed=args.seed, second_objective=args.second_objective, predictions=predictions,
        predictor=None if args.predictor is None else str(args.predictor),
        repredict_every=args.repredict_every, recorded_updates=args.recorded_updates,
        c0=args.c0, c1=args.c1, batch_size=args.batch_size,
        batch_cost=None if args.batch_cost is None else str(args.batch_cost),
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
    )
    if spec.what_if:
        console.print(f"[yellow]predictions {spec.predictions}: a what-if (true length x "
                      "noise), not a predictor a server has; every table says so[/]")
    opts = RunOptions(
        out=args.out, n_trials=args.trials, workers=args.workers, storage_url=args.storage,
        study=args.study, band_limits=args.bands, band_trials=args.band_trials,
        heartbeat=args.heartbeat, grace=args.grace,
    )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    bar = _Bar()
    try:
        summary = run_tune(spec, opts, bar)
    finally:
        if bar.tasks:
            bar.progress.stop()

    def show() -> None:
        if spec.batch_size > 1:
            server = spec.server
            out.print(f"batch size {spec.batch_size}; step-time model: {server.cost.source}; "
                      f"loads relative to {server.capacity:.2f} batch-1 servers",
                      highlight=False)
        _print_summary(summary)
        console.print(f"elapsed {summary.elapsed_s:.1f} s; config {summary.config}; "
                      f"report {summary.report}", highlight=False)

    emit(args.json, summary.to_json(), show)
    return 0


def _print_summary(summary: TuneResult) -> None:
    from rich.table import Table

    source = summary.predictions
    label = ("predictor trained on the tuning split" if source == "trained"
             else f"predictor {summary.predictor}" if source == "predictor"
             else f"{source}{' (a what-if, not a real predictor)' if 'oracle' in source else ''}")
    table = Table(title=f"held-out prompts ({len(summary.heldout_workloads)} workloads per "
                        f"trace; predictions: {label})")
    for col in ("policy", "tuning obj", "mean s", "p99 s", "mean/srpt"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    tuning = summary.tuning_objective
    for name, m in summary.heldout.items():
        mark = " <- exported" if name == summary.exported else ""
        table.add_row(name + mark, "-" if name not in tuning else f"{tuning[name]:.4f}",
                      f"{m.mean_s:.3f}", f"{m.p99_s:.3f}", f"{m.norm_mean:.3f}")
    out.print(table)
    banded = summary.banded_objective
    if banded is not None:
        out.print(f"load bands: tuning objective {banded:.4f} "
                  f"({'exported' if summary.bands_exported else 'not exported: no gain'})")
    out.print(f"exported {summary.policy}: {summary.parameters}")
    out.print(str(summary.verdict),
              style="bold green" if summary.verdict.exported_best else "bold yellow")


def cmd_report(args: argparse.Namespace) -> int:
    """``lapsd report``."""
    require_extra("tune", "optuna", "plotly")
    from lapsd.tune.report import write_report

    path = write_report(args.out_dir, args.storage)
    console.print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""
    d = Suite()
    p = subparsers.add_parser(
        "tune", help="tune a scheduler on traces and export lapsd-config.json",
        description="Train a length predictor on the tuning split, search a family of "
                    "policies (LAPS-SD, Gittins, lp-srpt, lp-sjf) with Optuna (seeded TPE) on "
                    "trace replays, export the best, and compare it with every baseline on "
                    "held-out prompts: lapsd-config.json, heldout.json, report.html. Re-running "
                    "the same command continues an interrupted run.",
    )
    p.add_argument("traces", nargs="+", type=Path, metavar="TRACE_DIR", help="trace folders")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--trials", type=_positive, default=DEFAULT_TRIALS,
                   help=f"trials of each searched policy that has parameters "
                        f"(default {DEFAULT_TRIALS})")
    p.add_argument("--policies", default=",".join(DEFAULT_FAMILY),
                   help="the policy family searched; the best on the tuning suite is exported "
                        "(default %(default)s)")
    p.add_argument("--workers", type=_positive, default=1,
                   help="worker processes (default 1: reproducible; more: faster)")
    p.add_argument("--storage", help="RDB URL shared by workers on several machines, e.g. "
                                     "postgresql://user:pass@host/db (default: a journal file "
                                     "in --out)")
    p.add_argument("--study", default="lapsd", help="study name (default lapsd)")
    p.add_argument("--seed", type=int, default=0, help="sampler and split seed (default 0)")
    p.add_argument("--second-objective", choices=["p99"],
                   help="also minimise p99 latency; exports the Pareto front")
    p.add_argument("--predictor", type=Path,
                   help="use this trained length predictor (.skops) instead of training one")
    p.add_argument("--predictions",
                   help="trained (default: a predictor trained on the tuning split's prompts, "
                        "applied to all; real predictions), column (the traces' own "
                        "predicted_tokens) or oracle:sigma=S (a what-if: true length x noise)")
    p.add_argument("--repredict-every", type=_positive, metavar="N",
                   help="re-predict a running request's length every N rounds from its output "
                        "so far (needs a predictor)")
    p.add_argument("--recorded-updates", action="store_true",
                   help="with --predictions column: replay the re-predictions the traces "
                        "record (a probe's, written by `lapsd predict apply PROBE`)")
    add_switch_cost(p)
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B",
                   help="requests per step of the replayed server (continuous batching; "
                        "default 1). Loads are then relative to its capacity, B / slowdown(B) "
                        "batch-1 servers, so that batches fill")
    p.add_argument("--batch-cost", type=Path, metavar="TABLE",
                   help="cost table with batch rows (`lapsd collect-profile --batches`): how "
                        "a step's time grows with its size (default: no slowdown)")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="fraction of prompts held out (default 0.3)")
    p.add_argument("--bursts", type=_ints, default=",".join(map(str, d.bursts)),
                   help="burst sizes of the suite (default %(default)s; 'none' for none)")
    p.add_argument("--loads", type=_floats, default=",".join(f"{x:g}" for x in d.loads),
                   help="Poisson loads of the suite (default %(default)s)")
    p.add_argument("--poisson-n", type=_positive, default=d.poisson_n,
                   help="requests per Poisson workload (default %(default)s)")
    p.add_argument("--seeds", type=_ints, default=",".join(map(str, d.seeds)),
                   help="workload seeds (default %(default)s)")
    p.add_argument("--bands", type=_ints, default=",".join(map(str, DEFAULT_BAND_LIMITS)),
                   help="load bands: largest number of waiting requests of each band but the "
                        "last (default %(default)s; 'none': one parameter set)")
    p.add_argument("--band-trials", type=_positive, default=DEFAULT_BAND_TRIALS,
                   help="trials per band study (default %(default)s)")
    p.add_argument("--heartbeat", type=_positive, default=DEFAULT_HEARTBEAT,
                   help="RDB heartbeat interval, seconds (default %(default)s)")
    p.add_argument("--grace", type=_positive, default=DEFAULT_GRACE,
                   help="RDB seconds without heartbeat before a trial is retried "
                        "(default %(default)s)")
    add_json(p, "the summary")
    p.set_defaults(func=cmd_tune)

    p = subparsers.add_parser("report", help="write report.html of a tuning run",
                              description="Write OUT_DIR/report.html: one self-contained page "
                                          "with the study's and the held-out comparison's "
                                          "plots.")
    p.add_argument("out_dir", type=Path, help="output folder of `lapsd tune`")
    p.add_argument("--storage", help="RDB URL when the study is not in the folder's journal")
    p.set_defaults(func=cmd_report)
