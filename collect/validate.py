"""``lapsd validate``: compare a live run with its replay, to see whether the replay predicts it.

A live run (:mod:`lapsd.collect.live`; its folder read by :mod:`lapsd.replay.live_run`) is
replayed through :func:`lapsd.replay.engine.simulate`
(a run at batch size ``B > 1``: :func:`lapsd.replay.batch.simulate_batched` at ``B``, each step
lasting the mean of its members' recorded rounds, i.e. the live step's time where the replay
forms the same batch) with everything the run had: its recorded arrival times, its own trace
(each request's rounds as they ran, ``round_s`` being the server time of the round), the same
policy built the same way (parameters and typical round, or the copy of the config), the same
length predictions (stored per request) and, for a probe's run, the re-predictions its trace
records at the rounds they were made, and for ``srpt-oracle`` the same true service times.
Only switches are modelled:
``c0 + c1 * context_tokens`` at each preemption, from

``measured`` (default)
    a least-squares fit to the run's own preemption switches (host-clock switch time against
    the preempted request's context; a batched step that preempted ``m`` requests counts as
    ``m`` switches of its mean time and context);
``given``
    ``--c0`` / ``--c1``;
``table``
    ``--cost-table`` from ``lapsd collect-profile``: its ``resident_fit`` when the run swapped
    nothing to host memory, else its ``switch_fit``.

The comparison gives the relative error (replay minus live, over live) of the mean, p50, p90
and p99 latency, and per request. Where they differ, these show why:

* switch time: live paid ``switch_s`` at every switch, also when a request resumes after
  another finished (no preemption, so the replay charges nothing: *unmodelled*); the replay
  charged the model at its own preemptions;
* the per-request error by context length (prompt + output tokens): a switch model that is
  wrong in ``c1`` shows as an error that grows with context;
* the completion order agreement (share of request pairs that finish in the same order): once
  a time differs, a preemptive policy may decide differently and the schedules drift apart;
* the scheduler's own time, which the rounds' times already carry (so the replay does too).

With several runs of the same workload it also reports whether the policies rank the same by
mean latency in the replay as live.

Predicting a run instead of re-running it: ``rounds_from`` (``--rounds-from TRACE``) replays
the rounds of another trace of the same prompts (matched by prompt id), typically a batch-1
``lapsd collect`` of them (``same_output`` says how many of them produced the run's number of
tokens there: a collection at another batch size may decode differently), and ``cost``
(``--batch-cost TABLE``, a ``collect-profile --batches`` table) gives the batched steps their
measured slowdown: what a user tuning at batch size ``B`` from a collection would be told,
checked against what the server did.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.batch import simulate_batched
from lapsd.replay.costs import (
    TABLE_KIND,
    TABLE_VERSION,
    BatchCost,
    SwitchCost,
    fit_line,
    read_cost_table,
)
from lapsd.replay.engine import simulate
from lapsd.replay.live_run import LiveRun, prompt_index, read_live
from lapsd.replay.policies.base import NS_PER_S
from lapsd.replay.trace import Trace, number, read_trace
from lapsd.replay.workload import Workload, check_recorded, recorded_updates


@dataclass(frozen=True)
class SwitchModel:
    """Where the replay's switch cost comes from: ``measured``, ``given`` or ``table``."""

    source: str = "measured"
    c0: float = 0.0
    c1: float = 0.0
    table: Path | None = None

    def cost(self, run: LiveRun) -> tuple[SwitchCost, dict[str, Any]]:
        """The switch cost for ``run`` and how it was obtained."""
        sched = run.schedule
        if self.source == "given":
            c0, c1, how = self.c0, self.c1, "given (--c0/--c1)"
        elif self.source == "table":
            assert self.table is not None
            key = "switch_fit" if bool(sched["swapped"].any()) else "resident_fit"
            fit = read_cost_table(self.table)[key]
            c0, c1, how = float(fit["c0"]), float(fit["c1"]), f"{self.table} ({key})"
        elif self.source == "measured":
            pre = sched.filter(sched["preempted"])
            m = (pre["preemptions"].to_numpy().astype(np.int64) if "preemptions" in pre.columns
                 else np.ones(pre.height, dtype=np.int64))
            fit = fit_line(np.repeat(pre["preempted_context"].to_numpy() / m, m).tolist(),
                           np.repeat(pre["switch_s"].to_numpy() / m, m).tolist())
            c0, c1 = fit["c0"], fit["c1"]
            how = f"fitted to the run's {pre.height} preemption switches"
        else:
            raise LapsdError(f"unknown switch model {self.source!r}")
        return SwitchCost(c0, c1), {"source": self.source, "c0": c0, "c1": c1, "how": how}


@dataclass
class Comparison:
    """A live run beside its replay (latencies in seconds, errors relative to live)."""

    run: str
    policy: str
    workload: str
    requests: int
    batch_size: int
    rounds: str
    batch_cost: str
    switch_model: dict[str, Any]
    live: dict[str, float]
    replay: dict[str, float]
    error: dict[str, float]
    per_request: dict[str, Any]
    switches: dict[str, Any]
    scheduler: dict[str, Any]
    order_agreement: float | None
    #: Share of the requests whose rounds (``rounds_from``'s, or the run's own) produce as many
    #: tokens as the run did: below 1, the replay serves other outputs (a batched collection's
    #: numerics, sampling), and its latencies cannot match request by request.
    same_output: float
    latency_live: list[float] = field(repr=False, default_factory=list)
    latency_replay: list[float] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with each request's live and replayed latency."""
        return dataclasses.asdict(self)


def policy_label(info: dict[str, Any]) -> str:
    """``fcfs``, ``laps-sd`` ... or ``config NAME`` for a run's policy section."""
    section = info["policy"]
    if "config" in section:
        return f"config {Path(section['config']['path']).name}"
    return str(section["name"])


def _stats(lat: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {"mean": float(lat.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of request pairs whose completion order is the same in ``a`` and ``b``."""
    if a.size < 2:
        return None
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    upper = np.triu(np.ones(da.shape, dtype=bool), 1)
    return float((da == db)[upper].mean())


def compare(run: LiveRun, model: SwitchModel | None = None, *,
            rounds_from: Path | None = None, cost: BatchCost | None = None) -> Comparison:
    """Replay ``run`` and compare (module docstring).

    ``rounds_from``: replay that trace's rounds of the run's prompts instead of the run's own;
    ``cost``: the batched steps' slowdown (default: none, steps last their members' rounds).

    Raises
    ------
    LapsdError
        When the run was interrupted (its unfinished requests are missing from its trace), or
        ``rounds_from`` lacks one of its prompts.
    """
    info = run.info
    if info["run"]["interrupted"]:
        raise LapsdError(f"{run.path} is an interrupted run ({info['run']['finished']} of "
                         f"{info['run']['requests']} requests finished): the replay would serve "
                         "another workload; validate a complete run")
    switch, switch_info = (model or SwitchModel()).cost(run)
    req = run.requests
    if rounds_from is None:  # the run's own trace: request by request
        arrays = TraceArrays.from_trace(run.trace)
        where = {rid: i for i, rid in enumerate(arrays.request_ids)}
        index = np.array([where[r] for r in req["request_id"].to_list()], dtype=np.int64)
    else:
        other = read_trace(rounds_from)
        arrays = TraceArrays.from_trace(other)
        index = _prompt_index(other, arrays, run, rounds_from)
        mine, theirs = info.get("collector", {}), other.manifest.get("collector", {})
        differ = [f"{key} {theirs.get(key)!r} (the run: {mine.get(key)!r})"
                  for key in ("target_sha256", "draft", "k", "dtype", "gpu", "max_new_tokens")
                  if theirs.get(key) != mine.get(key)]
        if differ:
            warnings.warn(f"--rounds-from {rounds_from} was collected with {'; '.join(differ)}:"
                          " its rounds are not the run's", stacklevel=2)
    policy = run.policy_factory()()
    if policy.needs_oracle:  # the true service the run revealed, not the live trace's own
        truth = np.zeros(arrays.n_requests, dtype=np.int64)
        truth[index] = np.rint(req["oracle_service_s"].to_numpy() * NS_PER_S).astype(np.int64)
        arrays = dataclasses.replace(arrays, service_ns=truth)
    arrival = req["arrival_ns"].to_numpy().astype(np.int64)
    updates = None
    if (info.get("predictions") or {}).get("source") == "probe":  # its re-predictions too
        check_recorded(arrays, "the run's trace" if rounds_from is None
                       else f"--rounds-from {rounds_from}")
        updates = recorded_updates(arrays, index)
    workload = Workload(info["workload"]["spec"], arrival, index, run.predictions(), updates)
    batch = int(info.get("batch_size", 1))
    result = (simulate_batched(arrays, workload, policy, batch, cost=cost, switch=switch)
              if batch > 1 else simulate(arrays, workload, policy, switch=switch))
    live = (req["finish_ns"].to_numpy().astype(np.int64) - arrival) / NS_PER_S
    replay = (result.completion_ns - arrival) / NS_PER_S
    lv, rp = _stats(live), _stats(replay)
    rel = (replay - live) / live
    context = (req["prompt_tokens"] + req["output_tokens"]).to_numpy()
    edges = np.unique(np.quantile(context, [0, 0.25, 0.5, 0.75, 1.0]))
    bins = np.clip(np.searchsorted(edges, context, side="right") - 1, 0, max(edges.size - 2, 0))
    by_context = [{"tokens_from": int(edges[b]), "tokens_to": int(edges[min(b + 1,
                                                                           edges.size - 1)]),
                   "requests": int((bins == b).sum()), "mean_error": float(rel[bins == b].mean())}
                  for b in np.unique(bins).tolist()]
    sched = run.schedule
    pre = sched.filter(sched["preempted"])
    live_s, at_preemptions_s = number(sched["switch_s"].sum()), number(pre["switch_s"].sum())
    live_preemptions = int(pre["preemptions"].sum()) if "preemptions" in pre.columns else pre.height
    return Comparison(
        run=str(run.path), policy=policy_label(info), workload=info["workload"]["spec"],
        requests=int(live.size), batch_size=batch,
        rounds="the run's own" if rounds_from is None else str(rounds_from),
        batch_cost="none (steps last their members' recorded rounds)" if cost is None or batch == 1
        else cost.source, switch_model=switch_info, live=lv, replay=rp,
        error={k: (rp[k] - lv[k]) / lv[k] for k in lv},
        per_request={"mean_abs_error": float(np.abs(rel).mean()),
                     "p90_abs_error": float(np.percentile(np.abs(rel), 90)),
                     "max_abs_error": float(np.abs(rel).max()), "by_context": by_context},
        switches={"live_switches": int((sched["switched"] | sched["swapped"]).sum()),
                  "live_preemptions": live_preemptions,
                  "replay_preemptions": result.preemptions,
                  "live_swapped": int(sched["swapped"].sum()),
                  "live_s": live_s, "live_at_preemptions_s": at_preemptions_s,
                  "live_unmodelled_s": live_s - at_preemptions_s,
                  "replay_s": result.switch_ns / NS_PER_S},
        scheduler=dict(info["scheduler"]),
        order_agreement=_agreement(live, replay),
        same_output=float(np.mean(arrays.output_tokens[index] == req["output_tokens"].to_numpy())),
        latency_live=live.tolist(), latency_replay=replay.tolist(),
    )


def _prompt_index(trace: Trace, arrays: TraceArrays, run: LiveRun, rounds_from: Path,
                  ) -> np.ndarray:
    """Where each of ``run``'s requests is in ``rounds_from``'s trace, matched by prompt."""
    return prompt_index(trace, arrays, [str(p) for p in run.requests["prompt_id"].to_list()],
                        f"--rounds-from {rounds_from}",
                        f"collect {run.path}'s prompt file")


def fit_batch_cost(runs: list[LiveRun], rounds_from: Path) -> dict[str, Any]:
    """A batch cost table fitted to batched live runs' steps, over a collection's rounds.

    Each step of each run has a server time (its members' ``round_s``) and a prediction: the
    mean of its members' rounds in the batch-1 collection ``rounds_from`` (the same request's
    round at the same index, round 0 with its prefill), as :func:`lapsd.replay.batch.
    simulate_batched` forms it. The slowdown at batch size ``b`` is the ratio of their sums over
    the steps of ``b`` requests, so it holds the server's own work per step beside the engine's
    (``collect-profile`` times the engine only). Steps with a round the collection does not have
    (different greedy tokens) are left out and counted. Read it with ``--batch-cost``.

    Raises
    ------
    LapsdError
        When no step has one request (the table must start at batch size one) or a run's
        prompts are missing from ``rounds_from``.
    """
    trace = read_trace(rounds_from)
    arrays = TraceArrays.from_trace(trace)
    per = np.diff(arrays.cum["ns"]) / NS_PER_S
    live: dict[int, float] = {}
    predicted: dict[int, float] = {}
    steps: dict[int, int] = {}
    skipped = 0
    for run in runs:
        req = run.requests
        index = _prompt_index(trace, arrays, run, rounds_from)
        where = dict(zip(req["request_id"].to_list(), index.tolist(), strict=True))
        sched = run.schedule
        if "step" not in sched.columns:
            sched = sched.with_row_index("step")
        grouped = sched.group_by("step", maintain_order=True).agg(
            pl.col("request_id"), pl.col("round"), pl.col("round_s").first())
        for ids, rounds, took in grouped.select("request_id", "round", "round_s").iter_rows():
            at = [where[r] for r in ids]
            if any(k >= arrays.offsets[i + 1] - arrays.offsets[i] for i, k in zip(at, rounds,
                                                                                   strict=True)):
                skipped += 1
                continue
            b = len(ids)
            live[b] = live.get(b, 0.0) + took
            predicted[b] = predicted.get(b, 0.0) + float(np.mean(
                [per[arrays.offsets[i] + k] for i, k in zip(at, rounds, strict=True)]))
            steps[b] = steps.get(b, 0) + 1
    if 1 not in steps:
        raise LapsdError("fit-batch-cost: no step of one request in the runs (the table starts "
                         "at batch size one); add a run at a lower load or batch size 1")
    collector = runs[0].info.get("collector", {})
    return {
        "kind": TABLE_KIND, "version": TABLE_VERSION, "batch_unit": "collected_round",
        "target": collector.get("target"), "draft": collector.get("draft"),
        "gpu": collector.get("gpu"), "device": collector.get("device"),
        "batch": [{"batch": b, "slowdown": live[b] / predicted[b], "steps": steps[b],
                   "live_s": live[b], "predicted_s": predicted[b]} for b in sorted(steps)],
        "fitted_from": {"runs": [str(r.path) for r in runs], "rounds_from": str(rounds_from),
                        "skipped_steps": skipped},
    }


def validate(paths: list[Path], model: SwitchModel | None = None, *,
             rounds_from: Path | None = None, cost: BatchCost | None = None) -> dict[str, Any]:
    """Compare each live run with its replay; with several runs, their ranking too."""
    comparisons = [compare(read_live(p), model, rounds_from=rounds_from, cost=cost)
                   for p in paths]
    out: dict[str, Any] = {"runs": [c.to_dict() for c in comparisons]}
    if len(comparisons) > 1:
        out["ranking"] = ranking(comparisons)
    return out


def ranking(comparisons: list[Comparison]) -> dict[str, Any]:
    """The runs ordered by mean latency, live and replayed, and whether the orders agree."""
    def order(side: str) -> list[str]:
        ranked = sorted(comparisons, key=lambda c: getattr(c, side)["mean"])
        return [f"{c.policy} ({Path(c.run).name})" for c in ranked]

    live, replay = order("live"), order("replay")
    workloads = sorted({c.workload for c in comparisons})
    return {"live": live, "replay": replay, "same": live == replay,
            "same_workload": len(workloads) == 1, "workloads": workloads}
