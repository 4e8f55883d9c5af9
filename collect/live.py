"""``lapsd live``: serve a workload under a scheduler, for real, and record what ran.

The server
    Requests arrive in wall-clock time at the workload's arrival times, drawn exactly as
    :func:`lapsd.replay.workload.build_workload` draws them (same seed, same order of draws) for
    the *measured* mean service time: a warm-up of ``--warmup`` requests on the same device and
    prompts (after one unmeasured request that captures the CUDA graphs), so ``load`` is relative
    to this server's capacity. ``--capacity-from`` reuses another live run's measurement (and
    typical round), so runs of several policies get the very same arrivals; or takes the
    capacity from a collection of the prompt file (the mean service of every prompt, the mean a
    replay's load is relative to), so a nominal load is the real one on that GPU. ``--time-scale X``
    divides the arrival times by ``X`` (a load ``X`` times higher; for quick tests). Prompts are
    the workload's draw over the prompt file (with replacement only when ``n`` exceeds it).

    At every round boundary the scheduler (:mod:`lapsd.replay.policies`, the very objects the
    replay runs) is told of the arrivals (``admit``; ``reveal`` first for ``srpt-oracle``), picks
    the request that runs one speculative-decoding round (``pick``), and hears what the round
    produced and how long it took (``observe``; ``finish`` at its end). A request is a
    :class:`~lapsd.collect.engine.Session`, prefilled when it first runs (inside its round 0).

A probe (``--predictor`` a :mod:`lapsd.predict.probe` file, batch size one)
    The probe reads the target's own hidden states, so the server prefills each request as it
    arrives (before it is admitted: its prompt states give the admission belief), and after
    every round that brings a new decode state (every ``G`` generated tokens, the probe's
    ``every`` unless ``--states-every`` says otherwise) re-predicts the request's length and
    tells the policy (``update_prediction``), as TRAIL does. The trace records each
    re-prediction on the round after which it was made (``belief_median``/``belief_sigma``,
    as ``lapsd predict apply PROBE`` writes them on a collection), so a replay of the run
    (``lapsd validate``, ``--recorded-updates``) tells its policy the same beliefs at the same
    points. States reach the probe as the states table stores them (float16), so ``lapsd
    predict apply PROBE`` on the run's trace gives the beliefs the run used. An arrival's
    prefill is server time of the round in progress (``prefill_s`` in the schedule), not of
    the arriving request's round 0; the probe's calls count as scheduler time (also reported on
    their own in ``live.json``'s ``probe``).

Time (integer nanoseconds of ``perf_counter_ns`` since the run started)
    Each round boundary is the instant the round's results are back (``end``); arrivals up to
    it are admitted there, as the replay admits them. The server's time is cut without gaps or
    overlaps into: *idle* (nothing to run: up to the next arrival), *switch* (making another
    request's cache the one that runs, swapping caches to host memory and back), and the
    *rounds*. A round's time (``round_s``, what ``observe`` is told and the trace records) is
    everything else from the previous boundary (or the arrival that ended an idle spell) to its
    own end: the engine's round (``engine_s``, with the prefill in round 0), and the server's own
    work in between: the scheduler's calls (``scheduler_s``, also reported on their own) and
    bookkeeping. So a request's rounds add up to the server time it took, and a replay of the
    trace under the same arrivals and policy reproduces the run but for the switches, which it
    models as ``c0 + c1 * context``.

Batch sizes above one (``--batch-size B``)
    At every step boundary the scheduler ranks the requests in the system and names up to ``B``
    (:meth:`~lapsd.replay.policies.base.Policy.step`, as the batched replay asks it); the engine
    runs one round of each in one drafting and one verification pass
    (:meth:`~lapsd.collect.engine.SpeculativeEngine.step_batch`, static path only, each request
    in a row of the working cache), and each member's ``observe`` hears its own tokens and the
    whole step's time: a batched request is served for the whole step (the design page's
    attained service at ``B > 1``, :mod:`lapsd.replay.batch`). The time partition is per step:
    *switch* is placing the members' caches in the rows (parking the caches they displace);
    the step's time is everything else from the previous boundary to its end, and every
    member's round in the trace lasts the step. Arrivals, capacity and load are as at batch
    size one (the warm-up runs requests one at a time), so a load is relative to the batch-1
    server. ``--kv-budget-tokens`` applies to batch size one only.

KV caches
    Every started request keeps its cache on the device while others run (:mod:`lapsd.collect.
    engine`: per-session caches, or on the static path one graph-bound working cache with the
    others parked in device tensors of their own). ``--kv-budget-tokens N`` caps the *context
    tokens* resident on the device: the sum over started, unfinished requests whose cache is on
    the device of their cached positions, plus ``k + 1`` for the one about to run. When the next
    round would exceed it, resident requests are swapped to host memory (pinned on a GPU),
    lowest-priority first (the policy's :meth:`~lapsd.replay.policies.base.Policy.order`), and a
    swapped request comes back when it runs again. Switch times are measured per switch, on the
    host clock (the timeline) and on the engine's clock (CUDA events on a GPU).

The output folder is a format of its own, read and written by :mod:`lapsd.replay.live_run`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lapsd.collect.engine import Clock, timing_clock
from lapsd.collect.loading import check_models, load_engine, resolve_device, resolve_dtype
from lapsd.collect.prompts import encode, load_prompts
from lapsd.collect.run import collection_trace, request_seed, response_text, states_spec
from lapsd.collect.states import StatesSpec, as_stored, check_options
from lapsd.errors import LapsdError, require_extra
from lapsd.io import sha256_file
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.driver import WallClock, drive
from lapsd.replay.engine import simulate
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.live_run import (
    KIND,
    VERSION,
    policy_factory,
    prompt_index,
    read_info,
    scale_of,
    write_live,
)
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    RequestId,
    RequestInfo,
    Rounds,
    TraceScale,
)
from lapsd.replay.trace import Trace, make_trace, new_manifest, read_trace
from lapsd.replay.workload import (
    Workload,
    WorkloadSpec,
    draw_arrivals,
    make_predictions,
    parse_workload,
)

if TYPE_CHECKING:
    from lapsd.predict.model import LengthPredictor
    from lapsd.predict.probe import ProbePredictor, RunningBelief

logger = logging.getLogger(__name__)

@dataclass
class LiveConfig:
    """Everything ``lapsd live`` takes (see the CLI help for each field)."""

    target: Path
    draft: str
    prompts: Path
    workload: str
    out: Path
    policy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None
    predictor: Path | None = None
    predictions: str | None = None
    oracle_trace: Path | None = None
    k: int = 4
    max_new_tokens: int = 512
    device: str = "auto"
    dtype: str = "auto"
    temperature: float = 0.0
    chat: bool = True
    seed: int = 0
    kv_budget_tokens: int | None = None
    batch_size: int = 1
    warmup: int = 8
    capacity_from: Path | None = None
    time_scale: float = 1.0
    force: bool = False
    states: str | None = None
    states_every: int | None = None


# ---------------------------------------------------------------------------------- set-up
@dataclass
class _Plan:
    """What the options say, checked before any model is loaded."""

    spec: WorkloadSpec
    policy: dict[str, Any]


def check(cfg: LiveConfig) -> _Plan:
    """Check the options that need no model; raise :class:`LapsdError` on the first bad one."""
    spec = parse_workload(cfg.workload)
    if (cfg.policy is None) == (cfg.config is None):
        raise LapsdError("give one of --policy NAME or --config lapsd-config.json")
    if cfg.config is not None:
        if cfg.params:
            raise LapsdError("--set applies to --policy, not to --config (the config holds "
                             "the parameters)")
        factory = policy_factory({"config": {"path": str(cfg.config)}}, TraceScale())
        section: dict[str, Any] = {"config": {"path": str(cfg.config),
                                              "sha256": sha256_file(cfg.config)}}
    else:
        section = {"name": cfg.policy, "parameters": dict(cfg.params)}
        factory = policy_factory(section, TraceScale())
    probe = factory()
    if probe.needs_oracle and cfg.oracle_trace is None:
        raise LapsdError(f"policy {probe.name!r} needs every request's true service time: pass "
                         "--oracle-trace TRACE_DIR (a collection of the same prompts)")
    if cfg.predictor is not None and cfg.predictions is not None:
        raise LapsdError("give --predictor or --predictions, not both")
    if probe.needs_prediction and cfg.predictor is None and cfg.predictions is None:
        raise LapsdError(f"policy {probe.name!r} needs length predictions: pass --predictor "
                         "model.skops, or --predictions oracle:sigma=S with --oracle-trace")
    if cfg.predictions is not None:
        if not cfg.predictions.startswith("oracle:"):
            raise LapsdError(f"--predictions {cfg.predictions!r}: a live run takes "
                             "oracle:sigma=S[,seed=N] (or --predictor model.skops)")
        if cfg.oracle_trace is None:
            raise LapsdError("--predictions oracle:... needs the true lengths: pass "
                             "--oracle-trace TRACE_DIR")
    check_options(cfg.states, cfg.states_every)
    problems = [
        (cfg.k < 1 or cfg.max_new_tokens < 1, "--k and --max-new-tokens must be >= 1"),
        (not cfg.time_scale > 0, f"--time-scale must be > 0, got {cfg.time_scale}"),
        (cfg.warmup < 1, f"--warmup must be >= 1, got {cfg.warmup}"),
        (cfg.kv_budget_tokens is not None and cfg.kv_budget_tokens < 1,
         f"--kv-budget-tokens must be >= 1, got {cfg.kv_budget_tokens}"),
        (cfg.batch_size < 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.batch_size > 1 and cfg.kv_budget_tokens is not None,
         "--kv-budget-tokens applies to --batch-size 1 only (a batched run keeps every "
         "started request's cache on the device)"),
        (cfg.out.exists() and not cfg.force, f"{cfg.out} exists; pass --force to replace it"),
    ]
    for bad, message in problems:
        if bad:
            raise LapsdError(message)
    return _Plan(spec, section)


@dataclass
class _Request:
    """One workload request and what happened to it."""

    position: int
    rid: str
    prompt: Any
    ids: list[int]
    arrival_ns: int
    prediction: LengthPrediction | None
    oracle_s: float | None
    session: Any = None
    first_run_ns: int | None = None
    finish_ns: int | None = None
    preemptions: int = 0
    swaps: int = 0
    round_ns: list[int] = field(default_factory=list)
    engine_s: list[float] = field(default_factory=list)
    prefill_s: float | None = None
    #: With a probe: the running belief, its re-predictions ``(round, median, sigma)`` and
    #: the decode states it has read.
    belief: RunningBelief | None = None
    updates: list[tuple[int, float, float]] = field(default_factory=list)
    states_read: int = 0


def _oracle(path: Path, prompt_ids: list[str], cfg: LiveConfig, seed: int
            ) -> tuple[list[float], list[LengthPrediction] | None]:
    """True service times and (``--predictions oracle:...``) noisy-oracle predictions."""
    trace = read_trace(path)
    collector = trace.manifest.get("collector", {})
    for key, mine in (("k", cfg.k), ("max_new_tokens", cfg.max_new_tokens)):
        if collector.get(key) not in (None, mine):
            warnings.warn(f"--oracle-trace {path} was collected with {key}="
                          f"{collector.get(key)}, this run uses {mine}", stacklevel=2)
    arrays = TraceArrays.from_trace(trace)
    index = prompt_index(trace, arrays, prompt_ids, f"--oracle-trace {path}",
                         "collect the same prompt file")
    service = (arrays.service_ns[index] / NS_PER_S).tolist()
    preds = (make_predictions(cfg.predictions, arrays, index, seed)
             if cfg.predictions is not None else None)
    return service, preds


def _load_predictor(path: Path) -> tuple[LengthPredictor | None, ProbePredictor | None]:
    """A predictor file: ``(prompt-only predictor, None)`` or ``(None, probe)``."""
    require_extra("predict", "sklearn", "skops")
    from lapsd.predict.probe import ProbePredictor, load_any

    model = load_any(path)
    return (None, model) if isinstance(model, ProbePredictor) else (model, None)


def _probe_states(cfg: LiveConfig, probe: ProbePredictor) -> StatesSpec:
    """The states a probe reads, checked against the target's config.

    Its layers and ``every``, unless ``--states``/``--states-every`` say otherwise (the layers
    must still be the probe's).
    """
    features = probe.card["features"]
    layers = cfg.states or ",".join(map(str, features["layers"]))
    states = states_spec(cfg.target, layers, cfg.states_every or int(features["every"]))
    assert states is not None
    from lapsd.predict.probe import check_features

    check_features(features, {"layers": list(states.layers), "decode_layer": states.decode_layer,
                              "hidden_size": states.hidden_size, "target": cfg.target.name},
                   f"the probe {cfg.predictor}", "this server (--target, --states)")
    return states


def _predictor(predictor: LengthPredictor, prompts: Sequence[Any], target_model: str,
               max_new_tokens: int,
               ) -> tuple[list[LengthPrediction], list[tuple[float, float | None]]]:
    """The predictor's beliefs and raw ``(p50, p90)`` for each prompt.

    Capped at ``max_new_tokens``, calibrated for the target model when the predictor knows it.
    """
    texts = [p.text for p in prompts]
    p50, p90 = predictor.predict_lengths(texts, target_model)
    beliefs = predictor.predictions(texts, target_model, cap=float(max_new_tokens))
    return beliefs, list(zip(map(float, p50), map(float, p90), strict=True))


def _prior_capacity(path: Path, prompt_ids: list[str]) -> tuple[dict[str, Any], TraceScale]:
    """``--capacity-from``: a live run's measured capacity, or a collection's of the prompts.

    A collection (a trace of the prompt file, collected on this GPU) gives the mean service
    time of every prompt in the file, the mean the workload's load is defined by (as a replay
    of that collection defines it), instead of a short warm-up's estimate; and its typical
    round.
    """
    if not (Path(path) / "manifest.json").is_file():  # not a trace: a live run's folder
        prior = read_info(path)
        return {**prior["capacity"], "source": str(path)}, scale_of(prior)
    trace = read_trace(path)
    arrays = TraceArrays.from_trace(trace)
    idx = prompt_index(trace, arrays, prompt_ids, f"--capacity-from {path}",
                       "collect the same prompt file, or pass a live run's folder")
    service_s = float(arrays.service_ns[idx].sum()) / NS_PER_S
    rounds = int((arrays.offsets[idx + 1] - arrays.offsets[idx]).sum())
    return ({"source": f"collection {path}", "requests": int(idx.size),
             "mean_service_s": service_s / idx.size, "rounds_per_s": rounds / service_s,
             "tokens_per_s": float(arrays.output_tokens[idx].sum()) / service_s},
            arrays.scale)


# ------------------------------------------------------------------------------------ server
def _prime(make_policy: Callable[[], Policy]) -> None:
    """Take a throwaway policy through the driver on a tiny replay, a re-prediction included.

    The policies' kernels are compiled (numba) on first use, about a second that would
    otherwise land in the first real rounds' scheduler time.
    """
    rounds = pl.DataFrame({"request_id": ["a"] * 3 + ["b"] * 3, "round": [0, 1, 2] * 2,
                           "drafted": [4] * 6, "accepted": [1, 2, 0, 3, 1, 2],
                           "emitted": [2, 3, 1, 4, 2, 3], "round_s": [0.01] * 6})
    requests = pl.DataFrame({"request_id": ["a", "b"], "source": ["prime"] * 2,
                             "prompt_tokens": [8, 8], "k": [4, 4]})
    arrays = TraceArrays.from_trace(make_trace(requests, rounds, new_manifest(timing="synthetic")))
    beliefs = [LengthPrediction(64.0, 0.5)] * 2  # a probe predicts on arrival: the same code runs
    workload = Workload("prime", np.zeros(2, dtype=np.int64), np.arange(2), beliefs,
                        [[(1, LengthPrediction(80.0, 0.4))]] * 2)
    simulate(arrays, workload, make_policy())


def _prime_probe(probe: ProbePredictor, states: StatesSpec, cap: float) -> None:
    """Compile the probe's numba kernels before serving: one belief from zero states.

    They compile on first use (1.2 s measured), which would otherwise land in the first rounds.
    """
    from lapsd.predict.probe import RunningBelief

    prompt = np.zeros(2 * len(states.layers) * states.hidden_size, dtype=np.float32)
    RunningBelief.admit(probe, prompt, "", cap).update(
        np.zeros(states.hidden_size, dtype=np.float32), states.every)


class _Server:
    """The GPU engine as the driver's executor (module docstring).

    :func:`~lapsd.replay.driver.drive` runs the policy on the wall clock; this runs the steps it
    asks for and keeps the rows of what ran for the output. The server's own time between
    steps (the policy's calls, the probe's, the loop's bookkeeping: everything but arrival
    prefills and sleeping) is the next step's ``scheduler_s``.
    """

    #: No memory check in the policy's ranking (``--kv-budget-tokens`` swaps instead).
    fits: Callable[[RequestId], bool] | None = None
    #: A live server does not know the rounds ahead: every decision is the policy's step.
    lookahead: None = None

    def __init__(self, engine: Any, policy: Policy, requests: list[_Request], *,
                 max_new_tokens: int, seed: int, budget: int | None,
                 on_finish: Callable[[], None], batch: int = 1,
                 probe: ProbePredictor | None = None) -> None:
        self.engine, self.policy, self.requests = engine, policy, requests
        self.probe = probe
        self.repredicts = probe is not None
        self.probe_ns = 0  # the probe's calls (inside scheduler_ns)
        self.probe_calls = 0
        self.arrival_prefill_ns = 0  # prefills at arrival since the last step
        self.max_new_tokens, self.seed, self.budget = max_new_tokens, seed, budget
        self.batch = batch
        self.on_finish = on_finish
        self.timing: Clock = timing_clock(engine.device)
        self.wall = WallClock()  # started again when serving starts
        self.rows: list[dict[str, Any]] = []
        self.active: dict[int, _Request] = {}  # started, unfinished
        self.prev: list[_Request] = []  # the last step's members
        self.admitted = 0
        self.steps = 0
        self.scheduler_ns = 0
        self.idle_ns = 0
        self.wall_ns = 0
        self._mark = 0  # perf_counter_ns at the end of the last step
        self._slept = 0  # the wall clock's slept_ns then

    def serve(self) -> None:
        """Serve every request (a KeyboardInterrupt stops it; what finished stays recorded)."""
        self.wall = WallClock()
        self._mark, self._slept = self.wall.t0, 0
        try:
            drive(self.policy, [r.arrival_ns for r in self.requests], self, self.wall)
        finally:
            self.scheduler_ns += self._server_ns()
            self.wall_ns = self.wall.read()
            self.idle_ns = self.wall.idle_ns

    # ---------------------------------------------------------------- the executor protocol
    def request(self, j: int) -> RequestInfo:
        """Request ``j`` arrived: with a probe, prefill it now for its admission belief."""
        r = self.requests[j]
        if self.probe is not None:
            self._predict_on_arrival(r)
        self.admitted = j + 1
        return RequestInfo(j, r.arrival_ns / NS_PER_S, len(r.ids), r.prediction)

    def true_service_s(self, j: int) -> float:
        """Request ``j``'s service time in the oracle's collection."""
        return self.requests[j].oracle_s or 0.0

    def run(self, chosen: list[int], preempted: Sequence[int], now: int,
            until: int | None) -> tuple[int, list[Rounds]]:  # noqa: ARG002 (one round a step)
        """Place the members' caches and run one step of them: ``(switch ns, their rounds)``.

        A round's time is everything from the last boundary (``now``) to the step's end but the
        switch: the engine's round and the server's own work before it.
        """
        pc = time.perf_counter_ns
        scheduler_ns = self._server_ns()
        reqs = self.requests
        members = [reqs[j] for j in chosen]
        for req in members:
            self._start(req)
        gone = [reqs[j] for j in preempted]
        for r in gone:
            r.preemptions += 1
        was = {r.position for r in self.prev}
        ts = pc()
        victims = self._evictions(members[0]) if self.batch == 1 else []
        scheduler_ns += pc() - ts
        quiet = {"switch_device_s": 0.0, "swapped": False, "evicted": 0}
        switch_ns, switch = 0, quiet
        if set(chosen) != was or victims:  # the same requests again: their caches are in place
            switch_ns, switch = self._switch(members, victims)
        t0 = self.wall.t0
        start = pc()
        fresh = [not r.round_ns for r in members]
        if self.batch == 1:
            session = members[0].session
            records = [session.step()]
            session.clock.sync()
        else:
            records = self.engine.step_batch([r.session for r in members])
            self.timing.sync()
        end = pc() - t0
        occupied = end - now - switch_ns
        prefills_s = 0.0
        for req, new in zip(members, fresh, strict=True):
            if new:  # its round 0 holds its prefill (run inside this step), unless at arrival
                req.first_run_ns = start - t0
                req.prefill_s = req.session.prefill_s
                prefills_s += 0.0 if req.belief is not None else req.prefill_s or 0.0
        out = []
        for i, (req, record) in enumerate(zip(members, records, strict=True)):
            record.resolve(req.session.clock)
            engine_s = (record.round_s or 0.0) + prefills_s
            first = i == 0
            self.rows.append({
                "step": self.steps, "batch": len(members),
                "request_id": req.rid, "round": len(req.round_ns),
                "start_s": (start - t0) / NS_PER_S, "end_s": end / NS_PER_S,
                "round_s": occupied / NS_PER_S, "engine_s": engine_s,
                "scheduler_s": scheduler_ns / NS_PER_S if first else 0.0,
                "switch_s": switch_ns / NS_PER_S if first else 0.0,
                **(switch if first else quiet), "switched": req.position not in was,
                "preempted": first and bool(gone),
                "preempted_context": (sum(len(r.session.tokens) for r in gone)
                                      if first and gone else None),
                "preemptions": len(gone) if first else 0,
                "idle_s": self.wall.last_idle_ns / NS_PER_S if first else 0.0,
                "context_tokens": record.context_tokens, "admitted": self.admitted,
                "prefill_s": self.arrival_prefill_ns / NS_PER_S if first else 0.0,
            })
            req.round_ns.append(occupied)
            req.engine_s.append(engine_s)
            out.append(Rounds.single(record.emitted, record.drafted, record.accepted,
                                     occupied / NS_PER_S))
        self.scheduler_ns += scheduler_ns
        self.prev = members
        self.steps += 1
        self.wall.last_idle_ns = 0
        self.arrival_prefill_ns = 0
        self._mark, self._slept = pc(), self.wall.slept_ns
        return switch_ns, out

    def advance(self, j: int, taken: int, now: int) -> bool:  # noqa: ARG002 (always 1)
        """Whether request ``j`` is done after its round; record its finish at ``now``."""
        req = self.requests[j]
        if not req.session.done:
            return False
        req.finish_ns = now
        del self.active[req.position]
        self.on_finish()
        return True

    def update(self, j: int) -> LengthPrediction | None:
        """The probe's new belief if request ``j``'s last round brought a decode state."""
        req = self.requests[j]
        states = req.session.decode_states
        if req.belief is None or len(states) == req.states_read:
            return None
        s0 = time.perf_counter_ns()
        req.states_read = len(states)
        generated, state = states[-1]  # several in one round: the latest wins
        belief = req.belief.update(as_stored(state.float().cpu().numpy()), generated)
        req.updates.append((len(req.round_ns) - 1, belief.median, belief.sigma))
        self.probe_ns += time.perf_counter_ns() - s0
        self.probe_calls += 1
        return belief

    # ---------------------------------------------------------------------------- internals
    def _server_ns(self) -> int:
        """The server's own time since the last step: all but arrival prefills and sleep."""
        return (time.perf_counter_ns() - self._mark - self.arrival_prefill_ns
                - (self.wall.slept_ns - self._slept))

    def _start(self, req: _Request) -> None:
        """Give ``req`` its engine session (when it first runs)."""
        if req.session is None:
            req.session = self.engine.start(req.ids, self.max_new_tokens,
                                            seed=request_seed(self.seed, req.prompt.request_id))
            self.active[req.position] = req

    def _predict_on_arrival(self, req: _Request) -> None:
        """Prefill ``req`` now and give it the probe's admission belief (module docstring)."""
        from lapsd.predict.probe import RunningBelief

        assert self.probe is not None
        pc = time.perf_counter_ns
        s0 = pc()
        self._start(req)
        req.session.prefill()
        prompt = req.session.prompt_states.float().cpu().numpy()  # waits for the device
        s1 = pc()
        req.belief = RunningBelief.admit(self.probe, as_stored(prompt.reshape(-1)),
                                         req.prompt.text, float(self.max_new_tokens))
        req.prediction = req.belief.prediction
        self.arrival_prefill_ns += s1 - s0
        self.probe_ns += pc() - s1
        self.probe_calls += 1

    def _evictions(self, req: _Request) -> list[_Request]:
        """Resident requests to swap out so that ``req``'s next round fits the KV budget.

        Lowest priority first (the policy's order), the fewest that make room.
        """
        if self.budget is None:
            return []
        others = [r for r in self.active.values() if r is not req and r.session.resident_tokens]
        excess = (len(req.session.tokens) + self.engine.k + 1 - self.budget
                  + sum(r.session.resident_tokens for r in others))
        if excess <= 0:
            return []
        rank = {rid: i for i, rid in enumerate(self.policy.order(self.policy.waiting))}
        victims = []
        for r in sorted(others, key=lambda r: rank.get(r.position, -1), reverse=True):
            if excess <= 0:
                break
            victims.append(r)
            excess -= r.session.resident_tokens
        return victims

    def _switch(self, members: list[_Request], victims: list[_Request],
                ) -> tuple[int, dict[str, Any]]:
        """Swap ``victims`` out and make the members' caches the ones that run.

        At batch size one the member's cache becomes the working one; above, the members'
        caches are placed in the working cache's rows. Returns the host-clock nanoseconds it
        took and its schedule columns.
        """
        pc, clock = time.perf_counter_ns, self.timing
        s0 = pc()
        a = clock.mark()
        for v in victims:
            v.session.offload()
            v.swaps += 1
        if self.batch == 1:
            swapped = members[0].session.activate()
        else:
            swapped = self.engine.place([r.session for r in members])
        b = clock.mark()
        clock.sync()
        return pc() - s0, {"switch_device_s": clock.seconds(a, b) or 0.0,
                           "swapped": bool(swapped) or bool(victims), "evicted": len(victims)}


# ------------------------------------------------------------------------------------- serve
def serve(cfg: LiveConfig, *, log: Callable[[str], Any] | None = None,
          progress: Callable[[int, int], Any] | None = None,
          loaded: tuple[Any, Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the live server, write ``cfg.out`` and return ``live.json``'s content.

    ``log`` receives progress lines (default: this module's logger); ``progress(finished, n)``
    is called when serving starts and whenever a request finishes. ``loaded`` is an engine
    from :func:`lapsd.collect.loading.load_engine` for ``cfg``'s target, draft, k, dtype, device and
    temperature, kept across runs (a benchmark's matrix loads the models once). On Ctrl-C
    (KeyboardInterrupt) the requests that had finished are written, the run is marked
    interrupted, and the interrupt is raised again.
    """
    log = log or logger.info
    plan = check(cfg)
    spec, tok = check_models(cfg.target, cfg.draft)
    predictor, probe = (_load_predictor(cfg.predictor) if cfg.predictor is not None
                        else (None, None))
    if probe is not None:
        if cfg.batch_size > 1 or cfg.kv_budget_tokens is not None:
            raise LapsdError(f"--predictor {cfg.predictor} is a probe, which prefills each "
                             "request on arrival to read its states: it runs at --batch-size 1 "
                             "without --kv-budget-tokens")
        states: StatesSpec | None = _probe_states(cfg, probe)
    else:
        states = states_spec(cfg.target, cfg.states, cfg.states_every)
    prompts = load_prompts(cfg.prompts)
    prior = (_prior_capacity(cfg.capacity_from, [p.request_id for p in prompts])
             if cfg.capacity_from is not None else None)
    _, index = draw_arrivals(plan.spec, 1.0, len(prompts))  # which prompts: independent of the mean
    chosen = [prompts[i] for i in index.tolist()]
    encoded = {i: encode(tok, prompts[i].text, chat=cfg.chat) for i in set(index.tolist())}
    ids = [encoded[i] for i in index.tolist()]
    n = len(chosen)
    peak = max(len(x) for x in ids) + cfg.max_new_tokens + cfg.k + 1
    if cfg.kv_budget_tokens is not None and cfg.kv_budget_tokens < peak:
        raise LapsdError(f"--kv-budget-tokens {cfg.kv_budget_tokens} cannot hold one request: "
                         f"the longest needs {peak} (prompt + --max-new-tokens + k + 1)")
    oracle_s: list[float] | None = None
    preds: list[LengthPrediction] | None = None
    quantiles: list[tuple[float, float | None]] | None = None
    pids = [p.request_id for p in chosen]
    if cfg.oracle_trace is not None:
        oracle_s, preds = _oracle(cfg.oracle_trace, pids, cfg, plan.spec.seed)
        if preds is not None:
            quantiles = [(p.median, None) for p in preds]
    if predictor is not None:
        preds, quantiles = _predictor(predictor, chosen, cfg.target.name, cfg.max_new_tokens)

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    engine, target, collector = loaded or load_engine(
        cfg.target, spec, tok, k=cfg.k, dtype=dtype, device=device,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
        chat=cfg.chat, states=states)
    collector = {**collector, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    try:
        working = engine.reserve(peak, batch=cfg.batch_size)
    except ValueError as exc:
        raise LapsdError(f"--batch-size {cfg.batch_size}: {exc}") from None
    log(f"{n} requests ({plan.spec.text}); warming up on {device} ({collector['engine_path']} "
        "path)")

    def generate(i: int) -> Any:
        return engine.generate(ids[i % n], cfg.max_new_tokens,
                               seed=request_seed(cfg.seed, pids[i % n]))

    generate(0)  # unmeasured: allocator, kernel choice, CUDA graphs
    if prior is None:
        gens = [generate(i) for i in range(cfg.warmup)]
        rounds = [r for g in gens for r in g.rounds]
        capacity = {"source": "warm-up", "warmup_requests": cfg.warmup,
                    "mean_service_s": float(np.mean([g.total_s for g in gens])),
                    "rounds_per_s": len(rounds) / sum(g.total_s for g in gens),
                    "tokens_per_s": sum(len(g.tokens) for g in gens) / sum(g.total_s
                                                                         for g in gens)}
        scale = TraceScale(round_s=float(np.median([r.round_s for r in rounds])),
                           tokens_per_round=float(np.mean([r.emitted for r in rounds])))
    else:
        capacity, scale = prior
    times, _ = draw_arrivals(plan.spec, capacity["mean_service_s"], len(prompts))
    arrival_ns = np.rint(times / cfg.time_scale * NS_PER_S).astype(np.int64).tolist()
    log(f"mean service {capacity['mean_service_s']:.4g} s ({capacity['source']}); serving")
    reqs = [_Request(i, f"{i:05d}:{pids[i]}", chosen[i], ids[i], arrival_ns[i],
                     None if preds is None else preds[i],
                     None if oracle_s is None else oracle_s[i]) for i in range(n)]
    make_policy = policy_factory(plan.policy, scale)
    _prime(make_policy)
    if probe is not None and states is not None:
        _prime_probe(probe, states, float(cfg.max_new_tokens))
    policy = make_policy()
    finished = 0

    def on_finish() -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, n)

    server = _Server(engine, policy, reqs, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                     budget=cfg.kv_budget_tokens, on_finish=on_finish, batch=cfg.batch_size,
                     probe=probe)
    interrupted = False
    if progress is not None:
        progress(0, n)
    try:
        server.serve()
    except KeyboardInterrupt:
        interrupted = True
    params = getattr(policy, "params", None)
    info = {
        "kind": KIND, "version": VERSION,
        "policy": {**plan.policy, "class": type(policy).__name__,
                   "effective": dataclasses.asdict(params)
                   if dataclasses.is_dataclass(params) and not isinstance(params, type)
                   else None},
        "scale": dataclasses.asdict(scale),
        "workload": {"spec": plan.spec.text, "n": n, "time_scale": cfg.time_scale,
                     "offered_load": (None if plan.spec.load is None
                                      else plan.spec.load * cfg.time_scale),
                     "prompts": str(cfg.prompts), "prompts_sha256": sha256_file(cfg.prompts)},
        "capacity": capacity,
        "predictions": _prediction_info(cfg, probe, states, reqs),
        "oracle_trace": None if cfg.oracle_trace is None else str(cfg.oracle_trace),
        "batch_size": cfg.batch_size,
        "kv_budget_tokens": cfg.kv_budget_tokens,
        "kv_budget_counts": "context tokens of the started, unfinished requests whose cache is "
                            "on the device, plus k + 1 for the one about to run",
        "working_cache_positions": working,
        "collector": collector,
        **summarize_run(server, reqs, interrupted),
    }
    if probe is not None:
        info["probe"] = {"calls": server.probe_calls, "total_s": server.probe_ns / NS_PER_S,
                         "per_call_mean_s": (server.probe_ns / NS_PER_S
                                             / max(server.probe_calls, 1)),
                         "share_of_rounds": (server.probe_ns / NS_PER_S / info["run"]["rounds_s"]
                                             if info["run"]["rounds_s"] else None),
                         "arrival_prefills_s": sum(r.prefill_s or 0.0 for r in reqs)}
    if not any(r.finish_ns is not None for r in reqs):
        log("no request finished: nothing written")
    else:
        manifest = new_manifest(
            timing="measured_per_round", sources=[cfg.prompts], round_s_includes_prefill=True,
            response_offsets="exact: decoded text length after each round",
            collector=collector,
            live={"policy": plan.policy, "workload": plan.spec.text, "interrupted": interrupted,
                  "batch_size": cfg.batch_size,
                  "round_s": "server time of the round: the engine's round (engine_s in "
                             "../schedule.parquet; round 0 includes the prefill"
                             + (", except that a probe's server prefills on arrival, in the "
                                "round then in progress" if probe is not None else "")
                             + ") and the scheduler's calls and bookkeeping since the previous "
                             "round boundary; switches and idle time excluded"
                             + ("; at batch sizes above one, of the step the round ran in"
                                if cfg.batch_size > 1 else "")})
        if probe is not None:
            made = info["predictions"]
            manifest["predictions"] = {
                "model": made["path"], "sha256": made["sha256"],
                "target_model": probe.card["features"].get("target"),
                "updates": sum(len(r.updates) for r in reqs if r.finish_ns is not None),
                "made": "live, by the server that ran the rounds"}
        write_live(cfg.out, info, _trace(reqs, tok, target.name, spec.name, cfg.k, manifest,
                                         engine.states),
                   server.rows, _request_rows(reqs, quantiles), config=cfg.config,
                   overwrite=cfg.force)
        log(f"live run written to {cfg.out}")
    if interrupted:
        raise KeyboardInterrupt
    return info


def _prediction_info(cfg: LiveConfig, probe: ProbePredictor | None, states: StatesSpec | None,
                     reqs: list[_Request]) -> dict[str, Any] | None:
    if cfg.predictor is not None and probe is not None and states is not None:
        return {"source": "probe", "path": str(cfg.predictor),
                "sha256": sha256_file(cfg.predictor), "what_if": False,
                "states": {"layers": list(states.layers), "every": states.every},
                "updates": sum(len(r.updates) for r in reqs)}
    if cfg.predictor is not None:
        return {"source": "predictor", "path": str(cfg.predictor),
                "sha256": sha256_file(cfg.predictor), "what_if": False}
    if cfg.predictions is not None:
        return {"source": cfg.predictions, "true_lengths": str(cfg.oracle_trace),
                "what_if": True}
    return None


def _dist(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, total, mean, p50, p90 and p99 of ``values`` (``None`` where there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return {"count": 0, "total_s": 0.0, "mean_s": None, "p50_s": None, "p90_s": None,
                "p99_s": None}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"count": int(arr.size), "total_s": float(arr.sum()), "mean_s": float(arr.mean()),
            "p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99)}


def summarize_run(server: _Server, reqs: list[_Request], interrupted: bool) -> dict[str, Any]:
    """The measured part of ``live.json``: run, switches, scheduler, latency."""
    rows = server.rows
    steps = {r["step"]: r for r in reversed(rows)}  # each step's first row
    switches = [r for r in steps.values() if r["switch_s"] > 0 or r["swapped"]]
    round_total = sum(r["round_s"] for r in steps.values())
    done = [r for r in reqs if r.finish_ns is not None]
    return {
        "run": {"interrupted": interrupted, "requests": len(reqs), "finished": len(done),
                "rounds": len(rows), "steps": len(steps), "wall_s": server.wall_ns / NS_PER_S,
                "idle_s": server.idle_ns / NS_PER_S, "rounds_s": round_total,
                "switches_s": sum(r["switch_s"] for r in rows),
                "preemptions": sum(r.preemptions for r in reqs),
                "swaps": sum(r.swaps for r in reqs)},
        "switches": {
            "count": len(switches),
            "resident": _dist([r["switch_s"] for r in switches if not r["swapped"]]),
            "swapped": _dist([r["switch_s"] for r in switches if r["swapped"]]),
            "device_clock": {
                "resident": _dist([r["switch_device_s"] for r in switches if not r["swapped"]]),
                "swapped": _dist([r["switch_device_s"] for r in switches if r["swapped"]])},
        },
        "scheduler": {"total_s": server.scheduler_ns / NS_PER_S,
                      "per_round_mean_s": server.scheduler_ns / NS_PER_S / max(len(steps), 1),
                      "overhead_ratio": (server.scheduler_ns / NS_PER_S / round_total
                                         if round_total else None)},
        "latency": _dist([(r.finish_ns - r.arrival_ns) / NS_PER_S for r in done
                          if r.finish_ns is not None]),
    }


def _trace(reqs: list[_Request], tok: Any, target: str, draft: str, k: int,
           manifest: dict[str, Any], states: StatesSpec | None) -> Trace:
    """The trace of the finished requests (round_s: the server time of each round)."""
    items = []
    for r in reqs:
        if r.finish_ns is None:
            continue
        g = r.session.result()
        g = dataclasses.replace(
            g, total_s=(r.finish_ns - r.arrival_ns) / NS_PER_S,
            rounds=[dataclasses.replace(rec, round_s=ns / NS_PER_S)
                    for rec, ns in zip(g.rounds, r.round_ns, strict=True)])
        items.append((dataclasses.replace(r.prompt, request_id=r.rid), g, *response_text(tok, g)))
    trace = collection_trace(items, manifest, target, draft, k, states, source="lapsd-live")
    if not any(r.belief is not None for r in reqs):
        return trace
    made = [(r.rid, *u) for r in reqs if r.finish_ns is not None for u in r.updates]
    beliefs = pl.DataFrame(made, schema={"request_id": pl.String, "round": pl.Int64,
                                         "belief_median": pl.Float64,
                                         "belief_sigma": pl.Float64}, orient="row")
    rounds = trace.rounds.join(beliefs.cast({"round": trace.rounds["round"].dtype}),
                               on=["request_id", "round"], how="left", maintain_order="left")
    return dataclasses.replace(trace, rounds=rounds)


def _request_rows(reqs: list[_Request], quantiles: list[tuple[float, float | None]] | None
                  ) -> pl.DataFrame:
    """``requests.parquet`` (module docstring)."""
    out = []
    for r in reqs:
        s = r.session

        def sec(ns: int | None) -> float | None:
            return None if ns is None else ns / NS_PER_S

        row: dict[str, Any] = {
            "request_id": r.rid, "prompt_id": r.prompt.request_id, "position": r.position,
            "arrival_ns": r.arrival_ns, "arrival_s": sec(r.arrival_ns),
            "first_run_s": sec(r.first_run_ns), "finish_ns": r.finish_ns,
            "finish_s": sec(r.finish_ns),
            "latency_s": None if r.finish_ns is None else sec(r.finish_ns - r.arrival_ns),
            "prompt_tokens": len(r.ids), "output_tokens": 0 if s is None else s.produced,
            "rounds": len(r.round_ns), "service_s": sum(r.round_ns) / NS_PER_S,
            "engine_s": sum(r.engine_s), "prefill_s": r.prefill_s,
            "preemptions": r.preemptions, "swaps": r.swaps, "oracle_service_s": r.oracle_s,
        }
        if r.prediction is not None:
            row.update({f"prediction_{k}": v for k, v in dataclasses.asdict(r.prediction).items()})
        if quantiles is not None:
            row["prediction_p50"], row["prediction_p90"] = quantiles[r.position]
        out.append(row)
    return pl.DataFrame(out, infer_schema_length=None)
