"""Workloads: when requests arrive, which trace requests they replay, and their predictions.

Workload strings (seeded, deterministic)::

    burst:n=30[,seed=0]                         n requests at time 0
    poisson:load=0.9,n=1000[,seed=0]            Poisson arrivals at `load` x capacity
    gamma:load=0.9,cv=3,n=1000[,seed=0]         Gamma inter-arrivals (bursty for cv > 1)
    trace:PATH,load=0.8[,n=...][,seed=0]        a real arrival trace, time-scaled to `load`

``load`` is the offered load relative to the server's capacity at batch size one: the arrival rate
is ``load / mean service time`` of the trace's requests. A caller that replays a batched server
may pass that server's ``capacity`` (how many batch-1 servers it is worth, e.g.
:attr:`~lapsd.replay.matrix.Server.capacity`), and ``load`` is then relative to it. Requests are
sampled from the trace with the seed (with replacement only when more are asked for than the
trace has).

Prediction sources (what length-aware policies are told)::

    oracle:sigma=0.5[,seed=0]   true length x lognormal(0, sigma) noise; the belief has that sigma
    column                      the trace's predicted_tokens (and predicted_tokens_p90) columns
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.clock import NS_PER_S, check_horizon
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.importers.arrivals import read_arrivals

#: Re-predictions of one arriving request: ``(rounds run, new prediction)`` pairs, the rounds
#: increasing; each applies after that many of the request's rounds.
Updates = list[tuple[int, LengthPrediction]]


@dataclass
class Workload:
    """Which trace requests arrive when, and what the schedulers are told of their length.

    Parameters
    ----------
    name
        The workload string it was built from.
    arrival_ns
        Sorted arrival times (integer nanoseconds).
    index
        For each arriving request, the trace request it replays.
    predictions
        For each arriving request, its length prediction (``None`` where no policy needs one).
    updates
        For each arriving request, its re-predictions (``None``: predictions never change).
    """

    name: str
    arrival_ns: np.ndarray
    index: np.ndarray
    predictions: list[LengthPrediction] | None = None
    updates: list[Updates] | None = None

    def __len__(self) -> int:
        """The number of arriving requests."""
        return int(self.index.size)


KINDS = ("burst", "poisson", "gamma", "trace")
#: The most requests a workload replays (beyond, a replay's arrays outgrow a machine's memory).
MAX_REQUESTS = 10_000_000
#: The widest noise of the oracle what-if: lengths times e^(10 z) already span 1e-8x to 1e8x.
MAX_SIGMA = 10.0

#: What length-aware policies are told: a source string (module docstring) or a callable
#: ``(arrays, index) -> list[LengthPrediction]`` (a trained predictor).
PredictionSource = str | Callable[[TraceArrays, np.ndarray], list[LengthPrediction]]
#: Re-predictions: ``(arrays, index) -> [Updates of each request of index]`` (a re-predictor
#: that reads each request's output so far).
UpdateSource = Callable[[TraceArrays, np.ndarray], list[Updates]]


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed workload string."""

    kind: str
    n: int | None = None
    load: float | None = None
    cv: float = 1.0
    seed: int = 0
    path: str | None = None

    def __post_init__(self) -> None:
        """Check the kind has what it needs and every number is in range (text or code)."""
        if self.kind not in KINDS:
            raise LapsdError(f"workload kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind in ("burst", "poisson", "gamma") and self.n is None:
            raise LapsdError(f"workload {self.kind}: n= is required (number of requests)")
        if self.kind != "burst" and self.load is None:
            raise LapsdError(f"workload {self.kind}: load= is required (offered load, e.g. 0.9)")
        if (self.kind == "trace") != (self.path is not None):
            raise LapsdError("workload: trace: and only trace: takes a path (trace:PATH,load=0.8)")
        for key, ok, want in (
            ("n", self.n is None or 0 < self.n <= MAX_REQUESTS, f"> 0 and <= {MAX_REQUESTS}"),
            ("load", self.load is None or 0 < self.load < math.inf, "a finite number > 0"),
            ("cv", 0 < self.cv < math.inf, "a finite number > 0"),
            ("seed", self.seed >= 0, ">= 0"),
        ):
            if not ok:
                raise LapsdError(f"workload {self.kind}: {key} must be {want}, got "
                                 f"{getattr(self, key)}")

    @property
    def text(self) -> str:
        """The canonical workload string (``poisson:load=0.9,n=1000,seed=1``)."""
        parts = [] if self.path is None else [self.path]
        for key in ("load", "cv", "n", "seed"):
            value = getattr(self, key)
            if value is None or (key == "cv" and self.kind != "gamma"):
                continue
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return f"{self.kind}:{','.join(parts)}"


def _split_options(text: str) -> tuple[str, list[str], dict[str, str]]:
    kind, _, rest = text.partition(":")
    positional, options = [], {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        if "=" in item:
            key, _, value = item.partition("=")
            options[key.strip()] = value.strip()
        else:
            positional.append(item)
    return kind.strip(), positional, options


def parse_workload(text: str) -> WorkloadSpec:
    """Parse a workload string; errors say which part is wrong and what is expected."""
    kind, positional, options = _split_options(text)
    if kind not in KINDS:
        raise LapsdError(f"workload {text!r}: unknown kind {kind!r}; expected one of "
                         f"{', '.join(KINDS)} (e.g. 'poisson:load=0.9,n=1000,seed=1')")
    allowed = {"burst": {"n", "seed"}, "poisson": {"load", "n", "seed"},
               "gamma": {"load", "cv", "n", "seed"}, "trace": {"load", "n", "seed"}}[kind]
    unknown = set(options) - allowed
    if unknown:
        raise LapsdError(f"workload {text!r}: {kind} takes {sorted(allowed)}, not "
                         f"{sorted(unknown)}")
    if (kind == "trace") != bool(positional) or len(positional) > 1:
        raise LapsdError(f"workload {text!r}: only trace: takes a path "
                         "(trace:PATH,load=0.8)")

    def num(key: str, cast: Callable[[str], Any], default: Any = None) -> Any:
        if key not in options:
            return default
        try:
            return cast(options[key])
        except ValueError:
            raise LapsdError(f"workload {text!r}: {key}={options[key]!r} is not a "
                             f"{cast.__name__}") from None

    values = {"n": num("n", int), "load": num("load", float), "cv": num("cv", float, 1.0),
              "seed": num("seed", int, 0)}
    try:
        return WorkloadSpec(kind=kind, path=positional[0] if positional else None, **values)
    except LapsdError as exc:
        raise LapsdError(f"workload {text!r}: {str(exc).partition(': ')[2]}") from None


def _arrival_times(spec: WorkloadSpec, mean_service_s: float,
                   rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "burst":
        assert spec.n is not None
        return np.zeros(spec.n)
    assert spec.load is not None
    mean_gap = mean_service_s / spec.load
    if spec.kind == "poisson":
        gaps = rng.exponential(mean_gap, spec.n)
    elif spec.kind == "gamma":
        shape = 1.0 / spec.cv**2
        gaps = rng.gamma(shape, mean_gap / shape, spec.n)
    else:
        assert spec.path is not None
        times = read_arrivals(spec.path)
        if spec.n is not None:
            times = times[: spec.n]
        if times.size < 2 or times[-1] <= 0:
            return np.zeros(times.size)
        observed_gap = times[-1] / (times.size - 1)
        return times * (mean_gap / observed_gap)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def draw_arrivals(spec: WorkloadSpec, mean_service_s: float, n_requests: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (seconds) and which of ``n_requests`` requests arrive, seeded by ``spec``.

    ``load`` is relative to ``mean_service_s``, the mean service time of one request at batch
    size one; requests are drawn with replacement only when more arrive than there are.
    """
    rng = np.random.default_rng(spec.seed)
    times = _arrival_times(spec, mean_service_s, rng)
    check_horizon(float(times[-1]), f"the arrivals of workload {spec.text!r}",
                  "raise load= or lower n=")
    index = rng.choice(n_requests, size=times.size, replace=times.size > n_requests)
    return times, index


def build_workload(spec: WorkloadSpec | str, arrays: TraceArrays,
                   predictions: PredictionSource | None = None,
                   updates: UpdateSource | None = None, capacity: float = 1.0) -> Workload:
    """Arrival times and sampled requests for ``spec`` over the compiled trace ``arrays``.

    Parameters
    ----------
    capacity
        The replayed server's throughput in batch-1 servers: arrivals come ``capacity`` times
        as often as at batch size one, so that ``load`` is relative to that server.
    predictions
        A prediction-source string (see the module docstring), a callable
        ``(arrays, index) -> list[LengthPrediction]`` (a trained predictor), or ``None``.
    updates
        Re-predictions of each request while it runs, or ``None``.
    """
    if isinstance(spec, str):
        spec = parse_workload(spec)
    if not 0 < capacity < math.inf:
        raise LapsdError(f"workload {spec.text}: capacity must be a finite number > 0, got "
                         f"{capacity}")
    times, index = draw_arrivals(spec, float(arrays.service_ns.mean()) / NS_PER_S / capacity,
                                 arrays.n_requests)
    arrival_ns = np.rint(times * NS_PER_S).astype(np.int64)
    workload = Workload(spec.text, arrival_ns, index.astype(np.int64))
    if predictions is not None:
        workload.predictions = make_predictions(predictions, arrays, workload.index, spec.seed)
    if updates is not None:
        workload.updates = updates(arrays, workload.index)
    return workload


def check_recorded(arrays: TraceArrays, what: str = "the trace") -> None:
    """Refuse, in one line, ``arrays`` that record no re-predictions (``what`` names them)."""
    if arrays.beliefs is None:
        raise LapsdError(f"{what} records no re-predictions (no belief_median/belief_sigma "
                         "round columns): add a probe's with `lapsd predict apply PROBE` on a "
                         "trace collected with --states, or use --repredict-every with a "
                         "--predictor")


def recorded_updates(arrays: TraceArrays, index: np.ndarray) -> list[Updates]:
    """The re-predictions the trace recorded, for the trace requests ``index``.

    An :data:`UpdateSource`. A belief on a request's round ``i`` (0-based; its
    ``belief_median`` and ``belief_sigma``) was made after that round, so the policy hears it
    after ``i + 1`` rounds, with the trace's cap.

    Raises
    ------
    LapsdError
        When the trace records none (:func:`check_recorded`).
    """
    check_recorded(arrays)
    assert arrays.beliefs is not None
    known = ~np.isnan(arrays.beliefs[:, 0])
    per: dict[int, Updates] = {}
    for i in np.unique(index).tolist():
        lo = int(arrays.offsets[i])
        rows = np.flatnonzero(known[lo:int(arrays.offsets[i + 1])])
        per[i] = [(int(r) + 1, LengthPrediction(float(m), float(s), arrays.max_new_tokens))
                  for r, (m, s) in zip(rows.tolist(), arrays.beliefs[lo + rows].tolist(),
                                       strict=True)]
    return [per[i] for i in np.asarray(index).tolist()]


def _oracle_options(source: str, positional: list[str], options: dict[str, str],
                    ) -> tuple[float, int | None]:
    """``sigma`` and ``seed`` (``None``: the workload's) of an ``oracle:`` source."""
    def bad(what: str) -> LapsdError:
        return LapsdError(f"predictions {source!r}: {what}; expected oracle:sigma=S[,seed=N] "
                          f"with 0 <= S <= {MAX_SIGMA:g} and N an integer >= 0")

    unknown = sorted(set(options) - {"sigma", "seed"}) + positional
    if unknown:
        raise bad(f"unknown option {unknown[0]!r}")
    try:
        sigma = float(options.get("sigma", 0.5))
        seed = int(options["seed"]) if "seed" in options else None
    except ValueError as exc:
        raise bad(f"not a number ({exc})") from None
    if not 0 <= sigma <= MAX_SIGMA:
        raise bad(f"sigma={sigma}")
    if seed is not None and seed < 0:
        raise bad(f"seed={seed}")
    return sigma, seed


def make_predictions(source: PredictionSource, arrays: TraceArrays, index: np.ndarray,
                     seed: int = 0) -> list[LengthPrediction]:
    """Length predictions for the trace requests ``index`` from a source (module docstring)."""
    if callable(source):
        return list(source(arrays, index))
    kind, positional, options = _split_options(source)
    if kind == "oracle":
        sigma, own_seed = _oracle_options(source, positional, options)
        rng = np.random.default_rng((seed if own_seed is None else own_seed) + 7919)
        true = arrays.output_tokens[index].astype(np.float64)
        noisy = np.maximum(true * np.exp(sigma * rng.standard_normal(true.size)), 1.0)
        return [LengthPrediction(float(x), sigma, arrays.max_new_tokens) for x in noisy]
    if kind == "column":
        if positional or options:
            raise LapsdError(f"predictions {source!r}: 'column' takes no options")
        if arrays.predicted is None:
            raise LapsdError("predictions 'column': the trace has no predicted_tokens column; "
                             "add one with `lapsd predict apply` (a what-if instead: "
                             "oracle:sigma=...)")
        p50 = arrays.predicted[index]
        missing = np.flatnonzero(np.isnan(p50))
        if missing.size:
            raise LapsdError(f"predictions 'column': {missing.size} requests have no "
                             f"predicted_tokens (null), e.g. "
                             f"{arrays.request_ids[index[missing[0]]]!r}; fill the column "
                             "for every request with `lapsd predict apply`")
        p90 = arrays.predicted_p90[index] if arrays.predicted_p90 is not None else None
        return [LengthPrediction.from_quantiles(
                    float(p50[i]),
                    None if p90 is None or np.isnan(p90[i]) else float(p90[i]),
                    arrays.max_new_tokens)
                for i in range(index.size)]
    raise LapsdError(f"unknown prediction source {source!r}: expected 'oracle:sigma=S', "
                     "'column', or a predictor model (--predictor)")
