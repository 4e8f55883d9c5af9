"""Batch sizes above one: does LAPS-SD still beat the baselines, where is its best K, how fast.

Part 1, the paper's open question (issue 14, section 3). Every example trace is split by prompt
as ``lapsd tune`` splits it; the length predictor is trained on the tuning prompts as ``lapsd
tune`` trains it (real predictions, the same for every policy); LAPS-SD's ``K`` is chosen by a
grid on the tuning prompts (tuning seeds); every policy is then replayed on the held-out prompts
with the held-out seeds, at batch sizes 1, 2, 4, 8, 16 and Poisson loads given as fractions of
the capacity *at that batch size*, and normalised by ``srpt-oracle`` on the same arrivals.
``lapsd.tune`` builds the context (:func:`~lapsd.tune.context.load_context`: split, predictor,
tuning cases) and the baselines (:func:`~lapsd.tune.heldout.baseline_factories`); its
``Evaluator`` and ``compare`` replay at batch size one only, so the grid and the held-out loop
call :func:`~lapsd.replay.matrix.replay_matrix` with a batched server here.

Two step-time shapes (how much longer a step of ``B`` requests takes than one request's round):

* ``measured``: ``results/cost_table_h200_smollm2_layers28_batch.json``, ``lapsd
  collect-profile --batches`` on an H200: the live engine's own batched steps (one CUDA graph
  per step), SmolLM2-135M, ``layers:28`` rounds (1.13x at B = 8, 1.19x at B = 16, 1.50x at
  B = 64). A 135M model is far from compute-bound at these sizes.
* ``assumed``: NOT measured. A roofline from the H200 datasheet with a tree-verifying drafter
  (see :func:`roofline_cost`): flat up to ``B_knee`` ~ 3.4, then linear.

Part 2, replay speed: request-rounds per second on one core at ``B = 8`` for every policy, and
``las`` at ``B = 1`` (issue goals: 1 M and 5 M), each against the plain reference simulator of
the tests timed in the same run (``spec_simulate_batched`` at ``B = 8``; at ``B = 1``
``reference_simulate``, the baseline of ``bench_replay.py``).

    .venv/bin/python bench/bench_batch.py --txt bench/results/batch_cpu.txt
        --json bench/results/batch_cpu.json --plot bench/results/batch_vs_b.html

(one command line; it pins itself to one core, ``--core``, as ``taskset -c 0`` would).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from bench_replay import best_of  # noqa: E402  (bench/ is the script's folder)
from sim_reference import reference_simulate  # noqa: E402
from spec_reference import make, spec_simulate_batched  # noqa: E402

from lapsd.replay.arrays import TraceArrays  # noqa: E402
from lapsd.replay.batch import simulate_batched  # noqa: E402
from lapsd.replay.costs import BatchCost  # noqa: E402
from lapsd.replay.engine import SimResult, simulate  # noqa: E402
from lapsd.replay.estimate import LengthPrediction  # noqa: E402
from lapsd.replay.matrix import (  # noqa: E402
    Case,
    PolicyFactory,
    Server,
    build_cases,
    registry_factories,
    replay_matrix,
)
from lapsd.replay.policies import available, create  # noqa: E402
from lapsd.replay.policies.base import Policy  # noqa: E402
from lapsd.replay.policies.laps_sd import LapsSDParams  # noqa: E402
from lapsd.replay.policies.params import tunables  # noqa: E402
from lapsd.replay.trace import read_trace  # noqa: E402
from lapsd.replay.workload import (  # noqa: E402
    PredictionSource,
    Workload,
    WorkloadSpec,
    build_workload,
    parse_workload,
)
from lapsd.tune.context import TuneContext, TuneSpec, load_context  # noqa: E402
from lapsd.tune.heldout import HELDOUT_SEEDS, baseline_factories  # noqa: E402
from lapsd.tune.run import train_predictor  # noqa: E402
from lapsd.tune.suite import Suite  # noqa: E402

BATCHES = (1, 2, 4, 8, 16)
LOADS = (0.7, 0.9)


def _searched(field: str) -> tuple[int, ...]:
    """The values of an integer LAPS-SD parameter in the tuner's searched range."""
    t = tunables(LapsSDParams)[field]
    assert t.low is not None and t.high is not None
    return tuple(range(int(t.low), int(t.high) + 1))


#: LAPS-SD's K: the tuner's searched range. (K = 1 with the other defaults is FCFS exactly: one
#: queue, a running request never preempted, waiting ones in arrival order.)
K_GRID = _searched("K")
#: Relative margin under which two mean latencies count as a tie in the tables.
TIE = 0.005
MEASURED_TABLE = ROOT / "bench" / "results" / "cost_table_h200_smollm2_layers28_batch.json"
#: NVIDIA H200 SXM datasheet: dense BF16 tensor throughput (1,979 TFLOPS is with sparsity)
#: and HBM3e bandwidth.
H200_BF16_FLOPS = 989e12
H200_HBM_BYTES_PER_S = 4.8e12
#: Tokens verified per request per step with a draft tree: ``total_token=60``, the default of
#: ``EaModel.from_pretrained`` in the EAGLE repository (EAGLE-2/3 dynamic trees).
TREE_TOKENS = 60
#: The rows of the comparison: the classic baselines and the predictor-using policies.
CLASSIC = ("fcfs", "las", "mlfq")
TUNED_AT_B, TUNED_AT_1, PAPER = ("laps-sd (K tuned at B)", "laps-sd (K tuned at B=1)",
                                 "laps-sd (paper defaults)")
CHALLENGERS = (TUNED_AT_B, TUNED_AT_1, PAPER, "gittins", "lp-srpt", "lp-sjf")
ROW_ORDER = (*CHALLENGERS, *CLASSIC)
SPEED_BATCH = 8
SPEED_GOAL = {SPEED_BATCH: 1e6, 1: 5e6}

Row = dict[str, Any]


def progress(start: float, text: str) -> None:
    """One progress line on stderr, with the elapsed time."""
    print(f"[{time.perf_counter() - start:6.0f} s] {text}", file=sys.stderr, flush=True)


def roofline_cost() -> BatchCost:
    """The ASSUMED step-time shape: ``slowdown(B) = max(1, B / B_knee)``.

    A verification pass streams the weights once for the whole batch; with bf16 weights a pass
    over ``T`` tokens does 2 FLOPs per weight byte per token, so it is bandwidth-bound (flat in
    ``B``) until ``T`` reaches the ridge point FLOPS / bandwidth (~206 tokens on an H200) and
    compute-bound (linear) past it. With :data:`TREE_TOKENS` tokens per request, ``B_knee`` =
    206 / 60 ~ 3.4. Peak numbers (real kernels reach less, so the real knee is earlier); KV reads
    and the draft are left out. A chain drafter (k + 1 ~ 6 tokens) would put the knee near 34,
    about as flat as the measured table up to ``B = 16``.
    """
    knee = H200_BF16_FLOPS / H200_HBM_BYTES_PER_S / TREE_TOKENS
    sizes = tuple(range(1, 65))
    return BatchCost(sizes, tuple(max(1.0, b / knee) for b in sizes),
                     f"ASSUMED roofline, not measured: slowdown = max(1, B / {knee:.2f}) "
                     f"(H200 datasheet {H200_BF16_FLOPS / 1e12:.0f} TFLOPS bf16 dense / "
                     f"{H200_HBM_BYTES_PER_S / 1e12:.1f} TB/s, {TREE_TOKENS}-token draft tree)")


def measured_cost() -> BatchCost:
    """The measured shape, labelled as what it is."""
    cost = BatchCost.from_profile(MEASURED_TABLE)
    return dataclasses.replace(cost, source=(
        f"MEASURED ({cost.source}; lapsd collect-profile --batches: the live engine's steps, "
        "CUDA graphs)"))


def capacity(cost: BatchCost, batch: int) -> float:
    """Requests served at batch size ``batch``, relative to batch size one (full batches)."""
    return batch / cost.factor(batch)


def server_for(cost: BatchCost, batch: int) -> Server:
    """The replayed server (at batch size one the cost shape does not matter: one server)."""
    return Server(batch=batch, cost=cost) if batch > 1 else Server()


def suite_at(cost: BatchCost, batch: int, n: int) -> Suite:
    """Tuning workloads (seeds 1, 2) at :data:`LOADS` of the capacity at ``batch``."""
    return Suite(bursts=(), loads=tuple(rho * capacity(cost, batch) for rho in LOADS),
                 poisson_n=n, seeds=(1, 2))


def memoised(source: PredictionSource) -> PredictionSource:
    """``source`` run once per trace (a request's prediction depends on the request only)."""
    if not callable(source):
        return source
    cache: dict[int, tuple[TraceArrays, list[LengthPrediction]]] = {}

    def predict(arrays: TraceArrays, index: np.ndarray) -> list[LengthPrediction]:
        if id(arrays) not in cache:
            cache[id(arrays)] = arrays, list(source(arrays, np.arange(arrays.n_requests)))
        every = cache[id(arrays)][1]
        return [every[i] for i in index.tolist()]

    return predict


def load_of(case: Case, cost: BatchCost, batch: int) -> float:
    """The fraction of the capacity at ``batch`` that ``case`` offers (one of :data:`LOADS`)."""
    offered = parse_workload(case.workload.name).load
    assert offered is not None
    return min(LOADS, key=lambda rho: abs(rho * capacity(cost, batch) - offered))


def laps_sd(ctx: TuneContext, k: int) -> PolicyFactory:
    """LAPS-SD with ``K = k`` and the paper's other defaults (at the tuned traces' scale)."""
    return registry_factories(["laps-sd"], ctx.scale, {"laps-sd": {"K": k}})["laps-sd"]


def grid_k(ctx: TuneContext, predictions: PredictionSource, cost: BatchCost, batch: int,
           n: int) -> dict[float, dict[int, float]]:
    """Per load, the tuning objective of each ``K``: mean normalised latency on tuning cases.

    The cases are the tuner's (:func:`~lapsd.tune.context.load_context`): tuning prompts, tuning
    seeds, every trace.
    """
    cases = build_cases(ctx.tune_sets, suite_at(cost, batch, n).workloads(), predictions,
                        ctx.updates)
    out: dict[float, dict[int, list[float]]] = {rho: {} for rho in LOADS}
    for k in K_GRID:
        for row in replay_matrix(cases, {"trial": laps_sd(ctx, k)},
                                 server=server_for(cost, batch)):
            assert row.metrics.norm_mean is not None
            out[load_of(row.case, cost, batch)].setdefault(k, []).append(
                row.metrics.norm_mean)
    return {rho: {k: float(np.mean(v)) for k, v in ks.items()} for rho, ks in out.items()}


def heldout(ctx: TuneContext, predictions: PredictionSource, cost: BatchCost, batch: int,
            n: int, k_at_b: dict[float, int], k_at_1: dict[float, int]) -> list[Row]:
    """Every policy on the held-out prompts and seeds, as :func:`lapsd.tune.heldout.compare`."""
    workloads = suite_at(cost, batch, n).with_seeds(HELDOUT_SEEDS).workloads()
    cases = [c for t in ctx.heldout_sets
             for c in build_cases([t], workloads, predictions, ctx.updates)]
    rows = []
    for rho in LOADS:
        mine = [c for c in cases if load_of(c, cost, batch) == rho]
        policies = baseline_factories(ctx, exclude={"laps-sd"})
        policies[TUNED_AT_B] = laps_sd(ctx, k_at_b[rho])
        policies[TUNED_AT_1] = laps_sd(ctx, k_at_1[rho])
        for row in replay_matrix(mine, policies, server=server_for(cost, batch)):
            rows.append({"batch": batch, "load": rho, "trace": row.case.trace,
                         "workload": row.case.workload.name, "policy": row.policy,
                         "norm_mean": row.metrics.norm_mean, "mean_s": row.metrics.mean,
                         "preemptions": row.result.preemptions})
    return rows


def mean_norm(rows: Iterable[Row], **where: Any) -> float:
    """Mean of ``norm_mean`` over the rows matching ``where``."""
    values = [r["norm_mean"] for r in rows if all(r[k] == v for k, v in where.items())]
    return float(np.mean(values))


def mark(value: float, rival: float) -> str:
    """``*`` below ``rival`` by more than :data:`TIE`, ``-`` above by more, else a blank."""
    return "*" if value < rival * (1 - TIE) else "-" if value > rival * (1 + TIE) else " "


def comparison_table(rows: list[Row], shape: str) -> list[str]:
    """Policies x (B, load): held-out mean latency / srpt-oracle's, marked against classics."""
    cols = [(b, rho) for rho in LOADS for b in BATCHES]
    out = [f"held-out mean latency / srpt-oracle's, mean of {len({r['trace'] for r in rows})} "
           f"traces x {len(HELDOUT_SEEDS)} seeds; shape: {shape}; * = below the best of "
           f"{', '.join(CLASSIC)} by more than {TIE:.1%}, - = above it by more, blank = tie",
           f"{'policy':26s}" + "".join(f"{f'B={b} ρ={rho}':>12s}" for b, rho in cols)]
    best_classic = {c: min(mean_norm(rows, batch=c[0], load=c[1], policy=p) for p in CLASSIC)
                    for c in cols}
    for name in ROW_ORDER:
        cells = []
        for c in cols:
            v = mean_norm(rows, batch=c[0], load=c[1], policy=name)
            cells.append(f"{v:11.3f}{mark(v, best_classic[c])}")
        out.append(f"{name:26s}" + "".join(cells))
    return out


def loss_table(rows: list[Row], shape: str) -> list[str]:
    """Per trace: LAPS-SD (K tuned at B) / the best classic baseline, and / the best other."""
    out = [f"per trace, held-out: laps-sd (K tuned at B) / best of {'|'.join(CLASSIC)} "
           f"(first) and / best of all other rows (second); > 1: LAPS-SD loses; shape: {shape}",
           f"{'trace':28s}{'ρ':>4s}" + "".join(f"{f'B={b}':>14s}" for b in BATCHES)]
    others = [n for n in ROW_ORDER if n != TUNED_AT_B]
    for trace in sorted({r["trace"] for r in rows}):
        for rho in LOADS:
            cells = []
            for b in BATCHES:
                at = {"batch": b, "load": rho, "trace": trace}
                mine = mean_norm(rows, policy=TUNED_AT_B, **at)
                classic = min(mean_norm(rows, policy=p, **at) for p in CLASSIC)
                best = min(mean_norm(rows, policy=p, **at) for p in others)
                cells.append(f"{mine / classic:7.3f}{mine / best:7.3f}")
            out.append(f"{trace:28s}{rho:4.1f}" + "".join(cells))
    return out


def k_table(grids: dict[tuple[str, int], dict[float, dict[int, float]]]) -> list[str]:
    """Best K per shape, B and load, with the objective at the best K, at K = 4 and the worst."""
    out = ["LAPS-SD's K on the tuning prompts (tuning seeds): objective = mean latency / "
           "srpt-oracle's; other parameters at the paper's defaults",
           f"{'shape':9s}{'B':>4s}{'ρ':>5s}{'best K':>8s}{'at best':>9s}{'at K=4':>8s}"
           f"{'worst':>8s}   objective for K = {', '.join(map(str, K_GRID))}"]
    for (shape, b), per_load in grids.items():
        for rho, ks in per_load.items():
            best = min(ks, key=ks.__getitem__)
            out.append(f"{shape:9s}{b:4d}{rho:5.1f}{best:8d}{ks[best]:9.3f}{ks[4]:8.3f}"
                       f"{max(ks.values()):8.3f}   " + " ".join(f"{ks[k]:.3f}" for k in K_GRID))
    return out


def speed_policy(name: str, arrays: TraceArrays) -> Policy[Any]:
    """A fresh policy for the speed runs (``static-priority`` wraps LAPS-SD, non-preemptive)."""
    if name == "static-priority":
        return create(name, arrays.scale, policy="laps-sd", preemptive=False)
    return create(name, arrays.scale)


def speed(trace: Path, predictions: PredictionSource, n: int, repeat: int, cost: BatchCost,
          start: float) -> tuple[list[Row], list[str]]:
    """Request-rounds per second of the fast engines and of the references, same workloads."""
    arrays = TraceArrays.from_trace(read_trace(trace))
    rows: list[Row] = []
    lines = [f"replay speed, one core; trace {trace.name}; Poisson, {n} requests at load 0.9 of "
             f"the capacity at B; fast engine: best of {repeat}; reference (tests/helpers): "
             "once, same workload; ratio = fast / reference",
             f"{'engine':24s}{'B':>3s}{'policy':>16s}{'M rounds/s':>12s}{'reference':>11s}"
             f"{'ratio':>8s}{'same completions':>18s}{'goal':>8s}{'':>7s}"]
    runs = [(SPEED_BATCH, name) for name in available()] + [(1, "las")]
    for batch, name in runs:
        progress(start, f"speed: {name} at B={batch}")
        workload = build_workload(
            WorkloadSpec("poisson", n=n, load=0.9 * capacity(cost, batch), seed=1), arrays,
            predictions)

        def fast(batch: int = batch, name: str = name, workload: Workload = workload,
                 ) -> SimResult:
            policy = speed_policy(name, arrays)
            if batch == 1:
                return simulate(arrays, workload, policy)
            return simulate_batched(arrays, workload, policy, batch, cost=cost)

        result = fast()
        rate = result.rounds / best_of(fast, repeat)
        t_ref = time.perf_counter()
        if batch == 1:
            engine, ref_done = "engine.simulate", reference_simulate(
                arrays, workload, speed_policy(name, arrays))
        else:
            params = getattr(speed_policy(name, arrays), "params", None)
            resolved = {} if params is None else dataclasses.asdict(params)
            engine, ref_done = "batch.simulate_batched", spec_simulate_batched(
                arrays, workload, make(name, **resolved), batch, cost.factor)
        ref_rate = result.rounds / (time.perf_counter() - t_ref)
        same = bool(np.array_equal(result.completion_ns, ref_done))
        met = rate >= SPEED_GOAL[batch]
        rows.append({"engine": engine, "batch": batch, "policy": name, "rounds_per_s": rate,
                     "reference_rounds_per_s": ref_rate, "ratio": rate / ref_rate,
                     "same_completions": same, "goal": SPEED_GOAL[batch], "met": met})
        lines.append(f"{engine:24s}{batch:3d}{name:>16s}{rate / 1e6:12.3f}"
                     f"{ref_rate / 1e6:11.3f}{rate / ref_rate:8.1f}{'yes' if same else 'NO':>18s}"
                     f"{SPEED_GOAL[batch] / 1e6:7.0f}M{'met' if met else 'UNMET':>7s}")
    return rows, lines


def machine() -> str:
    """CPU model, cores, the affinity this run has, and the load average."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{model}; {os.cpu_count()} cores; pinned to core(s) "
            f"{sorted(os.sched_getaffinity(0))}; load average {load[0]:.2f} {load[1]:.2f} "
            f"{load[2]:.2f}; Python {platform.python_version()}")


def plot(rows: list[Row], shapes: Sequence[tuple[str, BatchCost]], path: Path) -> None:
    """Held-out normalised mean latency against B, per policy: shapes x loads (plotly HTML)."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(shapes), cols=len(LOADS), shared_yaxes=True,
                        subplot_titles=[f"{s} step time, load {rho} of capacity at B"
                                        for s, _ in shapes for rho in LOADS])
    colours = dict(zip(ROW_ORDER, qualitative.Plotly, strict=False))
    for i, (shape, _) in enumerate(shapes, 1):
        for j, rho in enumerate(LOADS, 1):
            for name in ROW_ORDER:
                mine = [r for r in rows if r["shape"] == shape]
                ys = [mean_norm(mine, batch=b, load=rho, policy=name) for b in BATCHES]
                fig.add_scatter(x=list(BATCHES), y=ys, name=name, legendgroup=name,
                                showlegend=i == j == 1, row=i, col=j,
                                line={"color": colours[name],
                                      "dash": "dot" if name in CLASSIC else "solid"})
            fig.update_xaxes(type="log", tickvals=list(BATCHES), title_text="batch size B",
                             row=i, col=j)
    fig.update_yaxes(title_text="mean latency / srpt-oracle's (held-out)", col=1)
    fig.update_layout(height=420 * len(shapes), width=1100, title=(
        "lapsd replay at batch size B: example traces, trained length predictor, held-out "
        "prompts; " + " | ".join(f"{s}: {c.source}" for s, c in shapes)), title_font_size=11)
    fig.write_html(path, include_plotlyjs="cdn")


def main() -> None:
    """Run both parts and print (and write) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", action="append", type=Path,
                    help="trace folder (repeatable; default: every example trace)")
    ap.add_argument("--n", type=int, default=150,
                    help="requests per Poisson workload (default: the tuner's)")
    ap.add_argument("--speed-trace", type=Path,
                    default=ROOT / "examples" / "specbench-vicuna7b-eagle")
    ap.add_argument("--speed-n", type=int, default=2000, help="requests per speed replay")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--core", type=int, default=0, help="the one CPU core to run on")
    ap.add_argument("--txt", type=Path, help="also write the tables here")
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--plot", type=Path, help="write the plot here (.html)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    start = time.perf_counter()
    traces = args.trace or sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())
    shapes = [("measured", measured_cost()), ("assumed", roofline_cost())]
    lines = [f"# bench/bench_batch.py --n {args.n} --speed-n {args.speed_n} --repeat "
             f"{args.repeat}",
             f"# machine: {machine()}",
             f"# traces: {', '.join(t.name for t in traces)}"]
    with tempfile.TemporaryDirectory() as tmp:
        progress(start, "training the length predictor on the tuning prompts")
        spec = train_predictor(TuneSpec(traces=tuple(str(t) for t in traces),
                                        suite=suite_at(shapes[0][1], 1, args.n)), Path(tmp))
        ctx = load_context(spec)
        predictions = memoised(ctx.predictions)
        lines.append("# predictions: a length predictor trained on the tuning split's prompts "
                     "(lapsd.tune.run.train_predictor: holdout 0.3, seed 0), the same for "
                     "every policy; not the oracle")
        for name, cost in shapes:
            lines.append(f"# shape {name}: {cost.source}; slowdown at B = "
                         + ", ".join(f"{b}: {cost.factor(b):.2f}" for b in BATCHES))
        lines.append(f"# loads: Poisson, {args.n} requests, {' and '.join(map(str, LOADS))} of "
                     "the capacity at B (B / slowdown(B) times that at B = 1); tuning seeds "
                     f"1, 2 on tuning prompts; held-out seeds {HELDOUT_SEEDS} on held-out "
                     "prompts; no switch cost, unbounded KV")
        rows: list[Row] = []
        grids: dict[tuple[str, int], dict[float, dict[int, float]]] = {}
        done: dict[Server, tuple[dict[float, dict[int, float]], list[Row]]] = {}
        for shape, cost in shapes:
            for b in BATCHES:
                key = server_for(cost, b)
                if key not in done:
                    progress(start, f"{shape} B={b}: K grid on the tuning prompts")
                    grid = grid_k(ctx, predictions, cost, b, args.n)
                    best_k = {rho: min(ks, key=ks.__getitem__) for rho, ks in grid.items()}
                    best_1 = {rho: min(ks, key=ks.__getitem__)
                              for rho, ks in grids[(shape, 1)].items()} if b > 1 else best_k
                    progress(start, f"{shape} B={b}: held-out comparison (K {best_k})")
                    done[key] = grid, heldout(ctx, predictions, cost, b, args.n, best_k, best_1)
                grids[(shape, b)] = done[key][0]
                rows += [{**r, "shape": shape} for r in done[key][1]]
        for shape, _ in shapes:
            mine = [r for r in rows if r["shape"] == shape]
            lines += ["", *comparison_table(mine, shape),
                      "", *loss_table(mine, shape)]
        lines += ["", *k_table(grids)]
        speed_rows, speed_lines = speed(args.speed_trace, predictions, args.speed_n,
                                        args.repeat, shapes[0][1], start)
    lines += ["", f"# step-time shape of the speed runs: {shapes[0][0]}; predictions: the "
                  "trained predictor above", *speed_lines,
              f"# machine at the end: {machine()}; elapsed {time.perf_counter() - start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.txt:
        args.txt.write_text(text)
    if args.json:
        import json

        args.json.write_text(json.dumps({"heldout": rows, "k_grid": [
            {"shape": s, "batch": b, "load": rho, "objective": ks}
            for (s, b), g in grids.items() for rho, ks in g.items()], "speed": speed_rows}))
    if args.plot:
        plot(rows, shapes, args.plot)


if __name__ == "__main__":
    main()
