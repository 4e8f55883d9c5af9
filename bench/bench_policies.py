"""The exported scheduler against every baseline on held-out prompts (issue 12, section 4).

Drives the tuner as a user does: one ``lapsd tune ... --json`` per trace and setting (each trace
is its own deployment and gets its own exported policy), plus the README's main job (Vicuna-7B
EAGLE and SmolLM2 ``layers:28`` in one run). Every run uses the default suite (bursts of
10/30/50, Poisson loads 0.5/0.7/0.9 with 150 requests, tuning seeds 1 and 2; the held-out
comparison replays the same workloads with seeds 101 and 102 on the 30% of prompts the tuner
never saw), ``--workers 1`` and modest trial counts. The tables are read from each run's
``heldout.json``: all policies there were replayed with the same predictions.

Settings:

* ``trained``: the default, a predictor trained on the tuning split's prompts; free switches
  and with the H100 SmolLM2 switch cost (``c0`` = 1.1 ms, ``c1`` = 1.2 µs per context token);
* ``alpaca``: a predictor trained on alpaca_eval (``lapsd predict train``, read from
  ../shared/data, never copied), passed with ``--predictor``; free switches and switch cost;
* ``alpaca + repredict``: the same predictor re-predicting every 8 rounds (the trained
  predictor cannot: the example traces keep no response text);
* ``oracle``: the noisy-oracle what-if ``oracle:sigma=0.5`` (true length x noise).

Levers, each measured with one setting's predictions: distribution-aware ranking (Gittins
against lp-srpt, tuned and with defaults), re-prediction (every 8 rounds against none) and
acceptance-awareness (tuned Gittins against the same parameters with ``prior_tokens`` = 1e12:
every request costed at the typical seconds per token). The extra Gittins rows are replayed
in this process through :func:`lapsd.tune.heldout.compare` on the run's own context, checked
first against the run's ``heldout.json``.

Run (about 12 minutes on 2 cores)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_policies.py \
        [--trials 30] [--band-trials 10] [--work /tmp/lapsd-bench-policies] \
        [--out bench/results/policies_cpu.txt]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.predict.persist import load_predictor
from lapsd.predict.split import seen_prompts
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.matrix import registry_factories
from lapsd.replay.trace import read_trace
from lapsd.tune.context import TRAINED, TuneSpec, load_context
from lapsd.tune.defaults import CONFIG_FILE, HELDOUT_FILE, PREDICTOR_FILE
from lapsd.tune.heldout import compare
from lapsd.tune.split import split_by_prompt

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "prompts_alpaca_eval"
TRACES = ("smollm2-layers-28", "smollm2-ngram4", "specbench-vicuna7b-eagle")
MAIN_JOB = ("specbench-vicuna7b-eagle", "smollm2-layers-28")
#: Switch cost measured by ``collect-profile`` for SmolLM2 on an H100 (issue 12).
C0, C1 = 0.0011, 1.2e-6
BASELINES = ("fcfs", "las", "mlfq", "lp-srpt", "lp-sjf")
REPREDICT_EVERY = 8
#: ``prior_tokens`` that makes Gittins cost every request at the typical seconds per token.
NO_ACCEPTANCE_PRIOR = 1e12
GOAL_P09, GOAL_EVERY, GOAL_ORACLE, MOONSHOT = 0.90, 1.00, 1.25, 1.15
#: Workload groups of the suite (each: two held-out seeds), and their column labels.
GROUPS: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
    ("b10", lambda r: r["kind"] == "burst" and r["burst"] == 10),
    ("b30", lambda r: r["kind"] == "burst" and r["burst"] == 30),
    ("b50", lambda r: r["kind"] == "burst" and r["burst"] == 50),
    ("p.5", lambda r: r["kind"] == "poisson" and r["load"] == 0.5),
    ("p.7", lambda r: r["kind"] == "poisson" and r["load"] == 0.7),
    ("p.9", lambda r: r["kind"] == "poisson" and r["load"] == 0.9),
    ("all", lambda _r: True),
)
GROUP_OF = dict(GROUPS)

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Setting:
    """One way of running the tuner: where predictions come from, switch cost, re-prediction."""

    key: str
    title: str
    predictions: str
    switch: bool = False
    repredict: bool = False

    def args(self, alpaca: Path) -> list[str]:
        """The ``lapsd tune`` options of this setting."""
        out = (["--predictor", str(alpaca)] if self.predictions == "alpaca"
               else [] if self.predictions == TRAINED else ["--predictions", self.predictions])
        if self.switch:
            out += ["--c0", f"{C0:g}", "--c1", f"{C1:g}"]
        if self.repredict:
            out += ["--repredict-every", str(REPREDICT_EVERY)]
        return out


SETTINGS = (
    Setting("trained", "predictor trained on the tuning split (default), free switches", TRAINED),
    Setting("trained-switch", f"predictor trained on the tuning split (default), switch cost "
            f"c0={C0:g} s, c1={C1:g} s/token", TRAINED, switch=True),
    Setting("alpaca", "predictor trained on alpaca_eval (--predictor), free switches", "alpaca"),
    Setting("alpaca-switch", f"predictor trained on alpaca_eval (--predictor), switch cost "
            f"c0={C0:g} s, c1={C1:g} s/token", "alpaca", switch=True),
    Setting("alpaca-repredict", f"predictor trained on alpaca_eval, re-predicting every "
            f"{REPREDICT_EVERY} rounds, free switches", "alpaca", repredict=True),
    Setting("oracle", "WHAT-IF, not a predictor a server has: noisy oracle "
            "(true length x lognormal noise, sigma 0.5), free switches", "oracle:sigma=0.5"),
)


@dataclass
class Run:
    """One ``lapsd tune`` run: its command, summary and held-out rows."""

    setting: Setting
    traces: tuple[str, ...]
    out: Path
    command: str
    seconds: float
    summary: dict[str, Any]
    rows: Rows = field(default_factory=list)

    @property
    def name(self) -> str:
        """The traces' names, joined."""
        return " + ".join(self.traces)

    @property
    def exported(self) -> str:
        """The held-out row label of the exported policy."""
        return str(self.summary["exported"])


def lapsd(argv: Sequence[str], log: Path) -> None:
    """Run ``python -m lapsd ARGV`` from the repository root, output to ``log``; fail loudly."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "lapsd", *argv], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        sys.exit(f"lapsd {shlex.join(argv)} failed ({rc}):\n{log.read_text()[-3000:]}")


def train_alpaca(work: Path) -> tuple[Path, str, float]:
    """The alpaca_eval predictor: its file, command and training seconds."""
    path = work / "alpaca_eval.skops"
    argv = ["predict", "train", "--data", str(ALPACA), "--out", str(path)]
    start = time.perf_counter()
    lapsd(argv, work / "alpaca_eval.log")
    return path, f"lapsd {shlex.join(argv)}", time.perf_counter() - start


def tune(setting: Setting, traces: tuple[str, ...], work: Path, alpaca: Path,
         trials: int, band_trials: int) -> Run:
    """Run ``lapsd tune`` afresh in its own folder and read its results."""
    out = work / f"{setting.key}--{'+'.join(traces)}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh study: no resumed trials, honest times
    out.mkdir(parents=True)
    argv = ["tune", *(f"examples/{t}" for t in traces), "--out", str(out),
            "--trials", str(trials), "--band-trials", str(band_trials), "--workers", "1",
            *setting.args(alpaca), "--json", str(out / "summary.json")]
    start = time.perf_counter()
    lapsd(argv, out / "tune.log")
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    rows = json.loads((out / HELDOUT_FILE).read_text())["rows"]
    return Run(setting, traces, out, f"lapsd {shlex.join(argv)}", seconds, summary, rows)


def add_gittins_variants(run: Run) -> None:
    """Append held-out rows of Gittins with defaults and without acceptance to ``run``.

    Replayed with the run's own context (same predictions, workloads and switch cost); the
    run's ``lp-srpt`` and ``gittins (tuned)`` are replayed again first and must match.
    """
    c0, c1 = (C0, C1) if run.setting.switch else (0.0, 0.0)
    spec = TuneSpec(traces=tuple(str(ROOT / "examples" / t) for t in run.traces),
                    predictions=TRAINED, predictor=str(run.out / PREDICTOR_FILE), c0=c0, c1=c1)
    ctx = load_context(spec)
    tuned = json.loads((run.out / CONFIG_FILE).read_text())["family"]["gittins"]["parameters"]
    variants = {"gittins (defaults)": {"c0": c0, "c1": c1},
                "gittins (tuned, no acceptance)": {**tuned, "prior_tokens": NO_ACCEPTANCE_PRIOR},
                "gittins (tuned)": tuned}
    policies = {name: registry_factories(["gittins"], ctx.scale, {"gittins": p})["gittins"]
                for name, p in variants.items()}
    policies["lp-srpt"] = registry_factories(["lp-srpt"], ctx.scale)["lp-srpt"]
    extra = compare(ctx, policies)
    for name in ("lp-srpt", "gittins (tuned)"):
        mine = extra["summary"][name]["norm_mean"]
        theirs = run.summary["heldout"][name]["norm_mean"]
        if not math.isclose(mine, theirs, rel_tol=1e-9):
            sys.exit(f"{run.name}: {name} replayed here gives {mine} x srpt-oracle, the run "
                     f"gave {theirs}: the rebuilt context differs from the tuner's")
    run.rows += [r for r in extra["rows"] if r["policy"] in ("gittins (defaults)",
                                                              "gittins (tuned, no acceptance)")]


# -- aggregation -----------------------------------------------------------------------------

Pick = Callable[[Run], str]


def exported(run: Run) -> str:
    """The exported policy of ``run``."""
    return run.exported


def fixed(name: str) -> Pick:
    """The policy ``name`` in every run."""
    return lambda _run: name


def score(runs: Sequence[Run], pick: Pick, group: str) -> float:
    """Mean over the group's workloads (all runs, traces, seeds) of mean latency ÷ srpt-oracle's.

    ``nan`` when a run lacks the policy.
    """
    values = [r["norm_mean"] for run in runs for r in run.rows
              if r["policy"] == pick(run) and GROUP_OF[group](r)]
    return float(np.mean(values)) if values else math.nan


def best_baseline(runs: Sequence[Run], group: str) -> tuple[str, float]:
    """The baseline with the lowest :func:`score` on ``group``, and that score."""
    scores = {b: score(runs, fixed(b), group) for b in BASELINES}
    name = min(scores, key=scores.__getitem__)
    return name, scores[name]


def per_workload_losses(runs: Sequence[Run], pick: Pick) -> tuple[int, int, float]:
    """Workloads (trace x workload x seed) where ``pick`` is slower than the best baseline there.

    Returns the count, the number of workloads and the largest ratio.
    """
    losses, total, worst = 0, 0, 0.0
    for run in runs:
        by_case: dict[tuple[str, str], dict[str, float]] = {}
        for r in run.rows:
            by_case.setdefault((r["trace"], r["workload"]), {})[r["policy"]] = r["mean"]
        for means in by_case.values():
            ratio = means[pick(run)] / min(means[b] for b in BASELINES)
            total += 1
            losses += ratio > 1.0 + 1e-12
            worst = max(worst, ratio)
    return losses, total, worst


# -- tables ----------------------------------------------------------------------------------

HEAD = " ".join(f"{g:>5}" for g, _ in GROUPS)


def goal_table(title: str, groups: Sequence[tuple[str, Sequence[Run]]]) -> list[str]:
    """Exported ÷ best baseline per workload group, ÷ srpt-oracle, and the goals."""
    lines = [f"== {title}",
             "   exported ÷ best baseline (same predictions); ÷ oracle = exported ÷ srpt-oracle "
             "over the suite (at Poisson 0.9); floor = srpt-oracle ÷ best baseline at Poisson 0.9 "
             "(what clairvoyance reaches); LAPS-SD = laps-sd (tuned) ÷ best baseline",
             f"   {'traces':<44} {HEAD}  ÷ oracle (p.9)  floor  LAPS-SD  exported"]
    for label, runs in groups:
        cells = [score(runs, exported, g) / best_baseline(runs, g)[1] for g, _ in GROUPS]
        laps = score(runs, fixed("laps-sd (tuned)"), "all") / best_baseline(runs, "all")[1]
        what = runs[0].exported if len(runs) == 1 else "its own per trace"
        oracle, oracle_p09 = score(runs, exported, "all"), score(runs, exported, "p.9")
        floor = 1 / best_baseline(runs, "p.9")[1]
        lines.append(f"   {label:<44} " + " ".join(f"{c:5.3f}" for c in cells)
                     + f"  {oracle:6.3f} ({oracle_p09:5.3f})  {floor:5.3f}  {laps:7.3f}  {what}")
        best = ", ".join(f"{g} {best_baseline(runs, g)[0]}" for g, _ in GROUPS)
        lines.append(f"   {'':<44} best baseline: {best}")
    return lines


def policy_table(runs: Sequence[Run]) -> list[str]:
    """Every held-out policy's mean latency ÷ srpt-oracle's per trace (* = exported there)."""
    def generic(label: str) -> str:
        return "exported as static priority" if label.endswith(" as static priority") else label

    names = list(dict.fromkeys(generic(r["policy"]) for run in runs for r in run.rows))
    header = "  ".join(f"{run.name[:16]:>16}" for run in runs)
    lines = [f"   {'÷ srpt-oracle: suite mean (Poisson 0.9)':<44} {header}"]
    for name in names:
        cells = []
        for run in runs:
            here = next((r["policy"] for r in run.rows if generic(r["policy"]) == name), None)
            cells.append(f"{'-':>16}" if here is None else
                         f"{score([run], fixed(here), 'all'):>7.3f} "
                         f"({score([run], fixed(here), 'p.9'):5.3f})"
                         + ("*" if here == run.exported else " "))
        lines.append(f"   {name:<44} " + "  ".join(cells))
    return lines


def ratio_line(label: str, num: Sequence[Run], num_pick: Pick, den: Sequence[Run],
               den_pick: Pick) -> tuple[str, float]:
    """One lever row: per trace and pooled, suite mean and Poisson 0.9; and the pooled ratio."""
    pairs: list[tuple[Sequence[Run], Sequence[Run]]] = [
        ([a], [b]) for a, b in zip(num, den, strict=True)]
    cells = []
    for a, b in [*pairs, (num, den)]:
        cells.append(f"{score(a, num_pick, 'all') / score(b, den_pick, 'all'):6.3f} "
                     f"({score(a, num_pick, 'p.9') / score(b, den_pick, 'p.9'):5.3f})")
    pooled = score(num, num_pick, "all") / score(den, den_pick, "all")
    return f"   {label:<66} " + "  ".join(f"{c:>14}" for c in cells), pooled


# -- findings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Goals:
    """One run's standing against the goals (ratios of mean latency over srpt-oracle's)."""

    p09: float  # exported ÷ best baseline at Poisson 0.9
    worst_group: str
    worst: float  # the largest exported ÷ best baseline over the workload groups
    losses: int  # single workloads where the exported is slower than the best baseline there
    workloads: int
    max_loss: float
    oracle: float  # exported ÷ srpt-oracle over the suite
    floor: float  # srpt-oracle ÷ best baseline at Poisson 0.9: what clairvoyance would reach
    laps: float  # laps-sd (tuned) ÷ srpt-oracle over the suite
    best_name: str
    best: float  # the best baseline ÷ srpt-oracle over the suite


def goals(run: Run) -> Goals:
    """Measure ``run`` against the goals."""
    worst_g, worst = max(((g, score([run], exported, g) / best_baseline([run], g)[1])
                          for g, _ in GROUPS), key=lambda x: x[1])
    losses, total, max_loss = per_workload_losses([run], exported)
    best_name, best = best_baseline([run], "all")
    return Goals(score([run], exported, "p.9") / best_baseline([run], "p.9")[1], worst_g, worst,
                 losses, total, max_loss, score([run], exported, "all"),
                 1 / best_baseline([run], "p.9")[1], score([run], fixed("laps-sd (tuned)"), "all"),
                 best_name, best)


def yes(ok: bool) -> str:
    """``yes`` or ``NO``."""
    return "yes" if ok else "NO"


def goal_findings(title: str, runs: Sequence[Run]) -> list[str]:
    """The goals per trace, and where LAPS-SD stands, in one line each."""
    out = [f"* {title}:"]
    for run in runs:
        m = goals(run)
        base = run.exported.split(" (")[0]
        out.append(
            f"  - {run.name} -> {run.exported}"
            + (" (itself a baseline)" if base in BASELINES else "")
            + f": p.9 {m.p09:.3f} (≤ {GOAL_P09}: {yes(m.p09 <= GOAL_P09)}; srpt-oracle itself "
            f"would be {m.floor:.3f}); worst group {m.worst_group} {m.worst:.3f} (≤ 1.00: "
            f"{yes(m.worst <= GOAL_EVERY)}; slower than the single workload's best baseline on "
            f"{m.losses}/{m.workloads}, at worst {m.max_loss:.3f}); {m.oracle:.3f} x oracle "
            f"(≤ {GOAL_ORACLE}: {yes(m.oracle <= GOAL_ORACLE)}, ≤ {MOONSHOT}: "
            f"{yes(m.oracle <= MOONSHOT)}); laps-sd (tuned) {m.laps:.3f} x oracle, "
            + (f"{(m.laps / m.best - 1) * 100:.1f}% BEHIND {m.best_name}" if m.laps > m.best
               else f"{(1 - m.laps / m.best) * 100:.1f}% ahead of {m.best_name}"))
        if run.summary["verdict"].startswith("WARNING"):
            out.append(f"    tuner: {run.summary['verdict']}")
    return out


def summary_findings(runs: Sequence[Run]) -> list[str]:
    """The goals counted over every (setting, trace) with real predictions."""
    m = [goals(run) for run in runs]
    n = len(m)
    baseline = sum(run.exported.split(" (")[0] in BASELINES for run in runs)
    laps_gap = [g.laps / g.best - 1 for g in m]
    return [
        f"* over the {n} (setting, trace) pairs with real predictions:",
        f"  - Poisson 0.9 ≤ {GOAL_P09} of the best baseline: {sum(g.p09 <= GOAL_P09 for g in m)}"
        f"/{n} (exported ÷ best {min(g.p09 for g in m):.3f} to {max(g.p09 for g in m):.3f}); "
        f"srpt-oracle itself is {min(g.floor for g in m):.3f} to {max(g.floor for g in m):.3f} "
        f"of the best baseline there, above {GOAL_P09} on "
        f"{sum(g.floor > GOAL_P09 for g in m)}/{n}: there not even the clairvoyant srpt-oracle "
        "would meet the goal",
        f"  - ≤ 1.00 on every workload group: {sum(g.worst <= GOAL_EVERY for g in m)}/{n} (worst "
        f"{max(g.worst for g in m):.3f}); on single workloads the exported policy is slower than "
        f"that workload's best baseline in {sum(g.losses for g in m)} of "
        f"{sum(g.workloads for g in m)}",
        f"  - ≤ {GOAL_ORACLE} x srpt-oracle: {sum(g.oracle <= GOAL_ORACLE for g in m)}/{n}, "
        f"moonshot ≤ {MOONSHOT}: {sum(g.oracle <= MOONSHOT for g in m)}/{n} (range "
        f"{min(g.oracle for g in m):.3f} to {max(g.oracle for g in m):.3f})",
        f"  - the exported policy is itself a baseline (lp-srpt or lp-sjf) in {baseline}/{n}",
        f"  - laps-sd (tuned) is behind the best baseline in {sum(x > 0 for x in laps_gap)}/{n} "
        f"(by {min(laps_gap) * 100:.1f}% to {max(laps_gap) * 100:.1f}%)",
    ]


def parameter_lines(runs: Sequence[Run]) -> list[str]:
    """The tuned Gittins and LAPS-SD parameters of each run (from its lapsd-config.json)."""
    out = []
    for run in runs:
        family = json.loads((run.out / CONFIG_FILE).read_text())["family"]
        g, lp = family["gittins"]["parameters"], family["laps-sd"]["parameters"]
        spread = "none" if lp["max_spread"] is None else f"{lp['max_spread']:.2f}"
        out.append(
            f"   {run.setting.key:<17} {run.name:<26} gittins prior_tokens {g['prior_tokens']:6.1f}"
            f" switch_weight {g['switch_weight']:4.2f} | laps-sd K {lp['K']} sup1 "
            f"{lp['sup1']:.3g} {lp['unit']} M {lp['M']:.2f} {lp['length_estimate']} "
            f"max_spread {spread} perceptible_first {lp['perceptible_first']}")
    return out


def machine() -> str:
    """The CPU model, cores and the date."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), "unknown")
    return (f"{os.cpu_count()}-core CPU (lscpu Model name: {model}), no GPU; "
            f"{dt.date.today().isoformat()}")


def commit() -> str:
    """HEAD, and the working tree's uncommitted changes to tracked files (hash of the diff)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    changed = git("diff", "HEAD", "--name-only").split()
    if not changed:
        return f"commit {head} (clean)"
    digest = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()[:12]
    return (f"commit {head} plus uncommitted changes (other sessions' work in progress) to "
            f"{len(changed)} tracked files, diff sha256 {digest}: {', '.join(changed)}")


def alpaca_overlap(path: Path) -> str:
    """How many held-out prompts of each trace the alpaca_eval predictor was trained on."""
    predictor = load_predictor(path)
    parts = []
    for t in TRACES:
        arrays = TraceArrays.from_trace(read_trace(ROOT / "examples" / t))
        _, held = split_by_prompt(arrays, 0.3, 0)
        seen = seen_prompts(predictor, [str(arrays.prompts[i]) for i in held])
        parts.append(f"{t} {seen['seen']} of {seen['distinct']}")
    return "held-out prompts also in alpaca_eval: " + ", ".join(parts)


# -- main ------------------------------------------------------------------------------------

def main() -> None:
    """Run every setting, then write the tables and findings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30,
                        help="trials of each family member with parameters (default 30)")
    parser.add_argument("--band-trials", type=int, default=10,
                        help="trials per load-band study (default 10)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lapsd-bench-policies"),
                        help="folder of the runs' outputs (emptied run by run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "policies_cpu.txt", help="results file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start, code = time.perf_counter(), commit()  # other sessions may commit while this runs
    jobs: list[tuple[Setting, tuple[str, ...]]] = [(s, (t,)) for s in SETTINGS for t in TRACES]
    jobs.insert(len(TRACES), (SETTINGS[0], MAIN_JOB))
    print(f"training the alpaca_eval predictor, then {len(jobs)} tuning runs", flush=True)
    alpaca, alpaca_cmd, alpaca_s = train_alpaca(args.work)
    print(f"  alpaca_eval predictor trained in {alpaca_s:.0f} s", flush=True)
    runs: dict[tuple[str, tuple[str, ...]], Run] = {}
    for i, (setting, traces) in enumerate(jobs, 1):
        print(f"[{i:2d}/{len(jobs)}] {setting.key:<17} {' + '.join(traces)} ...", end=" ",
              flush=True)
        run = runs[setting.key, traces] = tune(setting, traces, args.work, alpaca, args.trials,
                                               args.band_trials)
        if setting.predictions == TRAINED and len(traces) == 1:
            add_gittins_variants(run)
        print(f"{run.seconds:5.1f} s, exported {run.exported}; total "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    def per_trace(key: str) -> list[Run]:
        return [runs[key, (t,)] for t in TRACES]

    code_end = commit()
    lines = [f"# bench/bench_policies.py on {machine()}",
             f"# {code}" if code_end == code else
             f"# the working tree changed during the run; at its start: {code}; at its end: "
             f"{code_end}",
             f"# {args.trials} trials per searched family member (laps-sd, gittins; lp-srpt and "
             f"lp-sjf have no parameters: 1 trial), {args.band_trials} per load-band study "
             "(bands are tuned only when laps-sd wins), --workers 1, OMP_NUM_THREADS=1; "
             f"total {time.perf_counter() - start:.0f} s wall on a CPU shared with other sessions",
             "",
             "$ OMP_NUM_THREADS=1 .venv/bin/python bench/bench_policies.py "
             + shlex.join(["--trials", str(args.trials), "--band-trials", str(args.band_trials)]),
             "",
             "Each trace is tuned alone (its own deployment, its own exported policy); 'all "
             "three' pools the three per-trace runs (each with its exported policy). Held-out: "
             "the 30% of prompts hashed out by split_by_prompt (holdout 0.3, seed 0), workloads "
             "of the default suite with seeds 101 and 102 (bursts 10/30/50, Poisson 0.5/0.7/0.9 "
             "with 150 requests). A cell is the mean over its workloads (2 seeds, and traces when "
             "pooled) of mean latency ÷ srpt-oracle's on the same workload, divided by the same "
             f"for the best baseline of that cell ({', '.join(BASELINES)}). Goals: ≤ {GOAL_P09} "
             f"at Poisson 0.9, ≤ {GOAL_EVERY:.2f} on every workload, ≤ {GOAL_ORACLE} x "
             f"srpt-oracle (moonshot {MOONSHOT}).",
             "",
             f"alpaca_eval predictor ({alpaca_s:.0f} s): $ {alpaca_cmd}",
             f"  {alpaca_overlap(alpaca)}; SmolLM2 has no alpaca_eval calibration (the pooled "
             "one is used, with a warning), Vicuna-7B-v1.3 has its own.",
             ""]
    for setting in SETTINGS:
        group = per_trace(setting.key)
        rows: list[tuple[str, Sequence[Run]]] = [(run.name, [run]) for run in group]
        rows.append(("all three (pooled)", group))
        if setting.key == "trained":
            rows.append(("README main job: eagle + layers-28, one run",
                         [runs[setting.key, MAIN_JOB]]))
        lines += goal_table(f"({setting.key}) predictions: {setting.title}", rows)
        if setting.key != "oracle":  # the what-if stays one row group
            lines += policy_table(group)
        lines.append("")

    lines.append("== levers, each measured with one setting's predictions: ratio < 1 = the "
                 "lever helps; per trace, then pooled: suite mean (Poisson 0.9)")
    lines.append(f"   {'':<66} " + "  ".join(f"{t[:14]:>14}" for t in TRACES)
                 + f"  {'all three':>14}")
    trained, switch = per_trace("trained"), per_trace("trained-switch")
    alpaca_runs, repredict = per_trace("alpaca"), per_trace("alpaca-repredict")
    levers: list[tuple[str, float]] = []
    for label, num, num_pick, den, den_pick in (
        ("distribution-aware: gittins (tuned) ÷ lp-srpt [trained]", trained,
         fixed("gittins (tuned)"), trained, fixed("lp-srpt")),
        ("distribution-aware: gittins (defaults) ÷ lp-srpt [trained]", trained,
         fixed("gittins (defaults)"), trained, fixed("lp-srpt")),
        ("distribution-aware: gittins (tuned) ÷ lp-srpt [trained, switch]", switch,
         fixed("gittins (tuned)"), switch, fixed("lp-srpt")),
        ("distribution-aware: gittins (defaults) ÷ lp-srpt [trained, switch]", switch,
         fixed("gittins (defaults)"), switch, fixed("lp-srpt")),
        ("acceptance-aware: gittins (tuned) ÷ no acceptance [trained]", trained,
         fixed("gittins (tuned)"), trained, fixed("gittins (tuned, no acceptance)")),
        ("acceptance-aware: gittins (tuned) ÷ no acceptance [trained, switch]", switch,
         fixed("gittins (tuned)"), switch, fixed("gittins (tuned, no acceptance)")),
        (f"re-prediction every {REPREDICT_EVERY}: exported ÷ exported [alpaca]", repredict,
         exported, alpaca_runs, exported),
        (f"re-prediction every {REPREDICT_EVERY}: gittins (tuned) [alpaca]", repredict,
         fixed("gittins (tuned)"), alpaca_runs, fixed("gittins (tuned)")),
        (f"re-prediction every {REPREDICT_EVERY}: lp-srpt [alpaca]", repredict,
         fixed("lp-srpt"), alpaca_runs, fixed("lp-srpt")),
        (f"re-prediction every {REPREDICT_EVERY}: laps-sd (tuned) [alpaca]", repredict,
         fixed("laps-sd (tuned)"), alpaca_runs, fixed("laps-sd (tuned)")),
    ):
        line, pooled = ratio_line(label, num, num_pick, den, den_pick)
        lines.append(line)
        levers.append((label, pooled))
    lines += [
        "   calibration: no switch turns calibration off (predict/ and tune/ have none: every "
        "predictor is conformally calibrated when trained); skipped.",
        "   acceptance-awareness of LAPS-SD: no parameter turns it off (its time estimate "
        "always uses the request's own tokens per round); only Gittins' is measured, with "
        f"prior_tokens = {NO_ACCEPTANCE_PRIOR:g} (inf would be the documented switch but gives "
        "NaN ranks, see the report).",
        "   re-prediction with the default trained predictor: impossible (the example traces "
        "keep no response text, so it has no re-predictor); measured with alpaca_eval's, "
        "each side tuned in its own run.",
        "",
        "== what we find (generated from the numbers above)"]
    real = [s for s in SETTINGS if s.key not in ("alpaca-repredict", "oracle")]
    lines += summary_findings([run for s in real for run in per_trace(s.key)])
    for setting in real:
        lines += goal_findings(f"({setting.key}) {setting.title}", per_trace(setting.key))
    lines.append("* levers, largest pooled effect on the suite mean first (< 1: helps):")
    lines += [f"  - {label}: {pooled:.3f}"
              for label, pooled in sorted(levers, key=lambda x: -abs(1 - x[1]))]
    lines += ["", "== tuned parameters (lapsd-config.json 'family'; sup1 in its unit)"]
    lines += parameter_lines([run for s in SETTINGS for run in per_trace(s.key)])
    lines += ["", "== commands (run from the repository root; outputs in the --work folder)",
              f"$ {alpaca_cmd}"]
    lines += [f"$ {run.command}    # {run.seconds:.0f} s" for run in runs.values()]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
