"""Multi-level feedback queue in the style of FastServe.

``K`` levels; level ``j`` (0-based) grants a quantum of ``q1 * M**j`` attained service, after which
the request is demoted to the back of level ``j + 1``; the last level is unbounded. Higher levels
preempt lower ones at round boundaries; inside a level, requests run in the order they entered it.
With ``skip_join`` a request enters the highest level whose quantum covers its estimated prefill
(``prompt_tokens * prefill_s_per_token``), as FastServe does with its first-iteration time; it
is then demoted when its attained service reaches that level's upper bound.
"""

from __future__ import annotations

from typing import Annotated

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
class MLFQParams(PolicyParams):
    """Parameters of :class:`MLFQ`.

    Parameters
    ----------
    K
        Number of levels.
    q1
        Quantum of the first level, in ``unit``. Default: 8 typical rounds.
    M
        Growth of the quantum from one level to the next.
    unit
        Attained-service unit: ``seconds``, ``rounds`` or ``tokens``.
    skip_join
        Enter the level whose quantum covers the estimated prefill time.
    prefill_s_per_token
        Prefill seconds per prompt token for ``skip_join``.
    """

    K: Annotated[int, Field(ge=1, le=64), Tunable("levels", 2, 8)] = 4
    q1: Annotated[float, Field(gt=0, le=MAX_AMOUNT, allow_inf_nan=False),
                  Tunable("{unit}", 1.0, 256.0, log=True, rounds=True, default_rounds=8)] = 0.24
    M: Annotated[float, Field(ge=1, le=MAX_GROWTH, allow_inf_nan=False),
                 Tunable("ratio (quantum growth per level)", 1.0, 8.0, log=True)] = 2.0
    unit: Unit = "seconds"
    skip_join: bool = False
    prefill_s_per_token: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False),
                                   Tunable("seconds per prompt token", search=False)] = 2e-5


class _MLFQState(RequestState):
    __slots__ = ("entry", "level")

    def __init__(self, info: RequestInfo, seq: int) -> None:
        super().__init__(info, seq)
        self.level = 0
        self.entry = 0


@register
class MLFQ(Policy[_MLFQState]):
    """FastServe-style multi-level feedback queue over attained service."""

    name = "mlfq"
    Params = MLFQParams
    shares = True

    def __init__(self, params: MLFQParams | None = None) -> None:
        super().__init__()
        p = self.params = params or MLFQParams()
        self._field = UNIT_FIELD[p.unit]
        self._attained = ATTAINED[p.unit]
        self._last_level = p.K - 1
        quanta = p.q1 * p.M ** np.arange(p.K - 1)
        # Level j covers attained service in [bounds[j-1], bounds[j]).
        self._bounds = np.array([unit_amount(b, p.unit) for b in np.cumsum(quanta)],
                                dtype=np.int64)
        self._bound_list: list[int] = self._bounds.tolist()  # scalar reads, per decision
        self._quanta = quanta
        self._entries = 0
        self._unit = kernels.UNIT_CODE[p.unit]

    def _new_state(self, info: RequestInfo, seq: int) -> _MLFQState:
        st = _MLFQState(info, seq)
        st.level = self._entry_level(info)
        st.entry = self._next_entry()
        return st

    def admission_rank(self, info: RequestInfo) -> float:
        """The level the request enters (0, or with ``skip_join`` the one its prefill fits)."""
        return float(self._entry_level(info))

    def _entry_level(self, info: RequestInfo) -> int:
        if not self.params.skip_join:
            return 0
        prefill = info.prompt_tokens * self.params.prefill_s_per_token
        fits = np.flatnonzero(self._quanta >= prefill)
        return int(fits[0]) if fits.size else self.params.K - 1

    def _next_entry(self) -> int:
        self._entries += 1
        return self._entries

    def _key(self, st: _MLFQState) -> tuple:
        return (st.level, st.entry, st.seq)

    def _arrival_floor(self) -> tuple | None:
        # Arrivals enter a level >= 0 behind every request already in it. With skip-join an
        # arrival may enter a lower level, where its place among requests demoted meanwhile
        # depends on when it was admitted: it must be admitted at its arrival (no floor).
        return None if self.params.skip_join else (0, self._entries + 1, self._seq)

    def _horizon(self, st: _MLFQState, rounds: Rounds) -> int:
        """Rounds until the quantum of the request's level is used up (or all of them)."""
        if st.level >= self._last_level:
            return rounds.n
        n = rounds.rounds_until(self._field, self._bound_list[st.level] - self._attained(st))
        return n if n < rounds.n else rounds.n  # min(), without the builtin's cost per decision

    def _consume(self, st: _MLFQState, rounds: Rounds) -> int:
        n = self._horizon(st, rounds)
        after = self._attained(st) + rounds.total(self._field, n)
        if st.level < self._last_level and after >= self._bound_list[st.level]:
            # The quantum is used up at round n: to the back of a lower level.
            st.level = max(st.level, int(np.searchsorted(self._bounds, after, side="right")))
            st.entry = self._next_entry()
        return n

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        states = self._states.values()
        # The fresh arrivals take their entries as they arrive (their states took provisional
        # ones when share admitted them).
        return timeshare.State(
            timeshare.MLFQ, self._unit, np.empty(n, dtype=np.int64),
            preemptive=self.params.skip_join,
            level=np.fromiter((st.level for st in states), np.int64, n),
            entry=np.fromiter((st.entry for st in states), np.int64, n),
            entries=np.array([self._entries - fresh]), bounds=self._bounds)

    def _shared(self, st: _MLFQState, row: list[int], state: timeshare.State) -> None:
        st.level = int(state.level[row[1]])
        st.entry = int(state.entry[row[1]])
        self._entries = int(state.entries[0])
