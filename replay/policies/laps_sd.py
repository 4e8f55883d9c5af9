"""LAPS-SD: least attained/perceived service for speculative decoding (Li, Chen, Li; IJCAI 2025).

Specified in the project's design page (``laps-sd.md``); in short:

* ``K`` queues; queue ``j`` (0-based) covers service in ``[Sup_j, Sup_{j+1})`` with ``Sup_0 = 0``
  and ``Sup_{j+1} = Sup_1 * M**j``; the last queue is unbounded. The highest non-empty queue runs.
* A new request is *non-perceptible* and joins queue 0. Non-perceptible requests run least attained
  service first inside their queue, not preempted by peers of their queue, and are demoted when
  their attained service reaches the queue's bound.
* After each round the running acceptance rate ``A_hat`` is recorded; a request whose last ``gamma``
  values have variance at most ``delta`` is *stable* and becomes *perceptible*: its total service
  ``T_total = L * c / (k A_hat + 1)`` is estimated and it moves to the queue whose band holds it.
* Perceptible requests run shortest estimated remaining service first, preempting peers, and are
  re-placed when their estimate leaves their queue's band. Inside a queue perceptible requests go
  ahead of non-perceptible ones unless ``perceptible_first`` is off.

``k A_hat + 1`` is measured as the request's tokens per round so far and ``c`` as its mean round
time (in the attained-service unit), so variable draft lengths are handled. When ``g`` passes the
predicted length, the remaining length comes from the prediction's conditional estimate.
"""

from __future__ import annotations

import heapq
import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass
from typing_extensions import override

from lapsd.replay import kernels, timeshare
from lapsd.replay.policies.base import (
    ATTAINED,
    UNIT_FIELD,
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    prediction_of,
    unit_amount,
)
from lapsd.replay.policies.params import (
    MAX_AMOUNT,
    MAX_GROWTH,
    PARAMS_CONFIG,
    PolicyParams,
    Tunable,
    Unit,
)
from lapsd.replay.policies.registry import register


@dataclass(frozen=True, config=PARAMS_CONFIG)
class LapsSDParams(PolicyParams):
    """Parameters of :class:`LapsSD` (the names of the design page).

    Parameters
    ----------
    K
        Number of queues.
    sup1
        First queue bound ``Sup_1`` in ``unit``. Default: 16 typical rounds.
    M
        Growth factor of the bounds.
    gamma
        Stability window in rounds.
    delta
        Stability tolerance: largest variance of the running acceptance rate over the window.
    unit
        Attained-service unit: ``seconds`` of server time, ``rounds`` or ``tokens``.
    perceptible_first
        Inside one queue, perceptible requests go ahead of non-perceptible ones.
    length_estimate
        The remaining length in the execution-time estimate: ``paper`` (``L_hat - g``, the
        paper's literal estimate; past ``L_hat``, the belief's conditional mean), ``mean`` (the
        conditional mean of the calibrated belief from the start) or ``quantile`` (its
        conditional ``quantile``: above 0.5, a conservative placement).
    quantile
        The conditional quantile for ``length_estimate="quantile"``.
    max_spread
        ``None`` (the paper): a request is perceptible once its acceptance rate is stable.
        Otherwise its remaining length's 80% interval must also be narrow: at most
        ``max_spread`` times its median.

    The defaults are the paper's LAPS-SD.
    """

    K: Annotated[int, Field(ge=1, le=64), Tunable("queues", 2, 8)] = 4
    sup1: Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False),
                    Tunable("{unit}", 1.0, 256.0, log=True, rounds=True,
                            default_rounds=16)] = 0.48
    M: Annotated[float, Field(gt=1, le=MAX_GROWTH, allow_inf_nan=False),
                 Tunable("ratio (bound growth per queue)", 1.5, 8.0, log=True)] = 2.0
    gamma: Annotated[int, Field(ge=2, le=1000), Tunable("rounds", 2, 20)] = 5
    delta: Annotated[float, Field(ge=0, allow_inf_nan=False),
                     Tunable("variance of the acceptance rate", 1e-5, 1e-1, log=True)] = 1e-3
    unit: Unit = "seconds"
    perceptible_first: bool = True
    length_estimate: Literal["paper", "mean", "quantile"] = "paper"
    quantile: Annotated[float, Field(gt=0, lt=1), Tunable("-", 0.3, 0.9)] = 0.5
    max_spread: Annotated[float | None, Field(gt=0),
                          Tunable("ratio (80% interval / median)", 0.5, 20.0, log=True)] = None


_NO_RIVAL = (0, 0, 0.0, 0)


class _LapsState(RequestState):
    __slots__ = ("history", "perceptible", "queue", "t_remaining")

    def __init__(self, info: RequestInfo, seq: int, gamma: int) -> None:
        super().__init__(info, seq)
        self.perceptible = False
        self.queue = 0
        self.t_remaining = 0.0
        #: Running acceptance rates after the last gamma - 1 rounds, oldest first.
        self.history = np.zeros(gamma - 1)


@register
class LapsSD(Policy[_LapsState]):
    """The LAPS-SD scheduler; see the module docstring."""

    name = "laps-sd"
    needs_prediction = True
    load_bands = True
    uses_acceptance = True
    shares = True
    Params = LapsSDParams

    def __init__(self, params: LapsSDParams | None = None) -> None:
        super().__init__()
        #: Whether :meth:`_arrival_floor` is LAPS-SD's own (a subclass may not know its
        #: arrivals' keys), which :meth:`arrivals_may_preempt` solves.
        self._own_floor = type(self)._arrival_floor is LapsSD._arrival_floor  # noqa: SLF001
        self._configure(params or LapsSDParams())

    def _configure(self, p: LapsSDParams) -> None:
        self.params = p
        self._field = UNIT_FIELD[p.unit]
        self._attained = ATTAINED[p.unit]
        self._unit = kernels.UNIT_CODE[p.unit]
        self._bounds = np.array(
            [unit_amount(p.sup1 * p.M**j, p.unit) for j in range(p.K - 1)], dtype=np.float64
        )
        self._cls_perceptible, self._cls_new = (0, 1) if p.perceptible_first else (1, 0)
        self._mode = {"paper": kernels.PAPER, "mean": kernels.MEAN,
                      "quantile": kernels.QUANTILE}[p.length_estimate]
        self._max_spread = math.inf if p.max_spread is None else p.max_spread

    def set_params(self, params: LapsSDParams) -> None:
        """Switch to ``params`` and re-place every admitted request under them.

        Each request keeps what was observed of it; a non-perceptible one goes to the queue
        whose band holds its attained service, a perceptible one gets its estimate and queue
        recomputed. ``gamma`` must not change: the acceptance history each request carries is
        a window of that length.
        """
        if params.gamma != self.params.gamma:
            raise ValueError(f"set_params cannot change gamma ({self.params.gamma} -> "
                             f"{params.gamma})")
        self._configure(params)
        heap = []
        for rid, st in self._states.items():
            if st.perceptible:
                self._repredicted(st)
            else:
                st.queue = int(np.searchsorted(self._bounds, st.attained(params.unit),
                                               side="right"))
            st.key = self._key(st)
            if not st.running:
                heap.append((st.key, rid))
        heapq.heapify(heap)
        self._heap = heap

    def _repredicted(self, st: _LapsState) -> None:
        """A perceptible request's estimate and queue follow its new prediction."""
        if st.perceptible:
            pred = st.prediction
            st.queue, st.t_remaining, _, _ = kernels.estimate(
                self._unit, st.rounds, st.generated, st.service_ns, pred.median, pred.sigma,
                pred.cap, self._mode, self.params.quantile, self._bounds)

    def _new_state(self, info: RequestInfo, seq: int) -> _LapsState:
        return _LapsState(info, seq, self.params.gamma)

    def _key(self, st: _LapsState) -> tuple:
        if st.perceptible:
            return (st.queue, self._cls_perceptible, st.t_remaining, st.seq)
        return (st.queue, self._cls_new, self._attained(st), st.seq)

    def admission_rank(self, info: RequestInfo) -> float:
        """The remaining tokens its execution-time estimate would use, at zero tokens out.

        LAPS-SD's own admission key is the same for every request (queue 0, nothing attained):
        as a fixed priority that is arrival order. What sets requests apart once they are
        perceptible is their estimated remaining service, ``T_rem = L * c / (k A + 1)``; at
        admission every request has the same expected ``c / (k A + 1)`` (the workload's
        typical round), so ordering by ``L`` (the paper's, the mean or the quantile, as
        ``length_estimate`` says) is ordering by that estimate.
        """
        pred = prediction_of(info)
        return kernels.remaining_by(self._mode, self.params.quantile, pred.median, pred.sigma,
                                    pred.cap, 0.0)

    def _running_key(self, st: _LapsState) -> tuple:
        if st.perceptible:
            return st.key
        # A running non-perceptible request is not preempted by peers of its queue.
        return (st.queue, self._cls_new, -math.inf, st.seq)

    def arrivals_may_preempt(self) -> bool:
        """Whether an arrival could displace the running request (the base test, solved).

        At batch size one, the running key against :meth:`_arrival_floor` (queue 0,
        non-perceptible, nothing attained) reduces to: the running request has left queue 0,
        or it is perceptible and perceptible requests go last in a queue (with LAPS-SD's own
        floor). This runs at every decision of a replay; a test checks it against the base
        class's comparison.
        """
        running = self._running
        if len(running) != 1 or not self._own_floor:
            return super().arrivals_may_preempt()
        st = running[0]
        return st.queue > 0 or (st.perceptible and not self.params.perceptible_first)

    def _arrival_floor(self) -> tuple | None:
        # Arrivals join queue 0, non-perceptible, with no service and a later sequence number.
        return (0, self._cls_new, 0, self._seq)

    def _new_run(self, st: _LapsState, rounds: Rounds, history: np.ndarray,
                 ) -> tuple[int, bool]:
        """A non-perceptible request's run: until demotion, stability, or the offered end."""
        p, c, pred = self.params, rounds.arrays, st.prediction
        bound = int(self._bounds[st.queue]) if st.queue < p.K - 1 else -1
        n, stable = kernels.new_request_run(
            c["emitted"], c["drafted"], c["accepted"], c["ns"], rounds.start, rounds.n,
            self._unit, self._attained(st), bound, st.accepted, st.drafted, st.generated,
            history, st.rounds, p.gamma, p.delta, pred.median, pred.sigma, pred.cap,
            self._max_spread)
        return int(n), bool(stable)

    def _horizon(self, st: _LapsState, rounds: Rounds) -> int:
        """Rounds until demotion or stability, or while a perceptible key stays ahead."""
        if not st.perceptible:
            return self._new_run(st, rounds, st.history.copy())[0]
        return self._perceptible_run(st, rounds)[0]

    def _perceptible_run(self, st: _LapsState, rounds: Rounds) -> tuple[int, int, float]:
        """A perceptible request's run while its key beats the best waiting request.

        And any request that may arrive (see arrivals_may_preempt). Returns ``(taken, queue,
        T_rem)``.
        """
        p, c, pred = self.params, rounds.arrays, st.prediction
        rival = self._rival()
        floor = self._arrival_floor()
        if floor is not None and st.key < floor and (rival is None or floor < rival):
            rival = floor
        n, queue, t_rem = kernels.perceptible_run(
            c["emitted"], c["ns"], rounds.start, rounds.n, self._unit, st.rounds, st.generated,
            st.service_ns, pred.median, pred.sigma, pred.cap, self._mode, p.quantile,
            self._bounds, self._cls_perceptible, st.seq,
            rival is not None, *_NO_RIVAL if rival is None else
            (rival[0], rival[1], float(rival[2]), rival[3]))
        return int(n), int(queue), float(t_rem)

    def _consume(self, st: _LapsState, rounds: Rounds) -> int:
        p = self.params
        pred = st.prediction
        if not st.perceptible:
            n, stable = self._new_run(st, rounds, st.history)
            emitted, _, _, ns = rounds.totals(n)
            if not stable:
                st.queue = int(np.searchsorted(self._bounds, self._attained(st)
                                               + rounds.total(self._field, n), side="right"))
                return n
            st.perceptible = True
            st.queue, st.t_remaining, _, total_s = kernels.estimate(
                self._unit, st.rounds + n, st.generated + emitted, st.service_ns + ns,
                pred.median, pred.sigma, pred.cap, self._mode, p.quantile, self._bounds)
            if self.on_estimate is not None:
                self.on_estimate(st.info.request_id, total_s)
            return n
        n, st.queue, st.t_remaining = self._perceptible_run(st, rounds)
        return n

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        states = list(self._states.values())
        m, p = n, self.params
        median, sigma, cap = self._beliefs(m)
        return timeshare.State(
            timeshare.LAPS_SD, self._unit, np.empty(m, dtype=np.int64), median=median,
            sigma=sigma, cap=cap, queue=np.fromiter((st.queue for st in states), np.int64, m),
            perceptible=np.fromiter((st.perceptible for st in states), np.bool_, m),
            t_rem=np.fromiter((st.t_remaining for st in states), np.float64, m),
            history=np.stack([st.history for st in states]),  # share admitted its arrivals
            estimate=np.full(m, np.nan), queue_bounds=self._bounds, gamma=p.gamma,
            delta=float(p.delta), max_spread=float(self._max_spread), mode=self._mode,
            q=float(p.quantile), cls_perceptible=self._cls_perceptible, cls_new=self._cls_new,
            perceptible_first=p.perceptible_first)

    def _shared(self, st: _LapsState, row: list[int], state: timeshare.State) -> None:
        i = row[1]
        st.queue = int(state.queue[i])
        st.perceptible = bool(state.perceptible[i])
        st.t_remaining = float(state.t_rem[i])
        st.history[:] = state.history[i]
        if self.on_estimate is not None and not math.isnan(state.estimate[i]):
            self.on_estimate(st.info.request_id, float(state.estimate[i]))
