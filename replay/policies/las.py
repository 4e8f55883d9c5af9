"""Least attained service: preemptive at round boundaries, knows only service received."""

from __future__ import annotations

import numpy as np
from pydantic.dataclasses import dataclass
from typing_extensions import override

from lapsd.replay import kernels, timeshare
from lapsd.replay.policies.base import (
    ATTAINED,
    UNIT_FIELD,
    Policy,
    RequestState,
    Rounds,
)
from lapsd.replay.policies.params import PARAMS_CONFIG, PolicyParams, Unit
from lapsd.replay.policies.registry import register


@dataclass(frozen=True, config=PARAMS_CONFIG)
class LASParams(PolicyParams):
    """Parameters of :class:`LAS`.

    Parameters
    ----------
    unit
        Attained-service unit: ``seconds`` of server time, ``rounds`` or ``tokens``.
    """

    unit: Unit = "seconds"


@register
class LAS(Policy[RequestState]):
    """Runs the request with the least attained service; ties go to the earlier arrival."""

    name = "las"
    Params = LASParams
    shares = True

    def __init__(self, params: LASParams | None = None) -> None:
        super().__init__()
        self.params = params or LASParams()
        self._field = UNIT_FIELD[self.params.unit]
        self._attained = ATTAINED[self.params.unit]
        self._unit = kernels.UNIT_CODE[self.params.unit]

    def _key(self, st: RequestState) -> tuple:
        return (self._attained(st), st.seq)

    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        rival = self._rival()
        if rival is None:
            return rounds.n
        # The running request keeps the server while (attained, seq) < rival; attained values
        # are integers, so "exceeds" is "reaches rival + 1".
        need = rival[0] - self._attained(st) + (1 if st.seq < rival[1] else 0)
        n = rounds.rounds_until(self._field, need)
        return n if n < rounds.n else rounds.n  # min(), without the builtin's cost per decision

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        return timeshare.State(timeshare.LAS, self._unit, np.empty(n, dtype=np.int64))
