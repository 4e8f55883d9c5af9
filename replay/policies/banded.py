"""Load-adaptive LAPS-SD: one parameter set per band of the number of waiting requests.

The design page (section 8) allows a parameter set per load band. :class:`BandedLapsSD` is a
:class:`~lapsd.replay.policies.laps_sd.LapsSD` whose parameters follow the number of requests in the
system (``waiting``: admitted and not finished, the running one included). The band is checked
whenever that number changes (an admission or a completion). When it moves to another band, the
new band's parameters apply to **every** request from then on, queued ones included: each
request keeps what was observed of it (rounds, tokens, acceptance history, service, whether it
is perceptible) and is re-placed under the new parameters exactly as LAPS-SD would place it:

* a non-perceptible request goes to the queue whose band holds its attained service;
* a perceptible request gets its remaining-service estimate and queue recomputed;
* the stability test uses the new ``delta`` from its next round on. All bands share one
  ``gamma`` (the stability window), so the acceptance history a request carries stays valid.

A server therefore sees one well-defined LAPS-SD at every moment (:meth:`LapsSD.set_params`).
Re-placing costs ``O(n log n)`` for ``n`` waiting requests, once per band change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from lapsd.errors import LapsdError
from lapsd.replay.policies.base import RequestId, RequestInfo
from lapsd.replay.policies.laps_sd import LapsSD, LapsSDParams


@dataclass(frozen=True)
class LoadBand:
    """Parameters used while at most ``max_waiting`` requests are in the system.

    ``max_waiting=None`` marks the last band (no upper bound).
    """

    max_waiting: int | None
    params: LapsSDParams


class BandedLapsSD(LapsSD):
    """LAPS-SD with its parameters chosen by the number of waiting requests (module docstring)."""

    #: Its parameters follow every admission and completion: a decision at a time.
    shares = False

    def __init__(self, bands: Sequence[LoadBand]) -> None:
        check_bands(bands)
        self.bands = tuple(bands)
        self._limits = [b.max_waiting or 0 for b in self.bands[:-1]]  # all set: check_bands
        self.band = 0
        super().__init__(self.bands[0].params)
        #: Number of band changes during the replay.
        self.switches = 0

    def _band_of(self, waiting: int) -> int:
        for i, limit in enumerate(self._limits):
            if waiting <= limit:
                return i
        return len(self.bands) - 1

    def admit(self, info: RequestInfo) -> None:
        """Admit, then follow the load to its band."""
        super().admit(info)
        self._follow_load()

    def finish(self, request_id: RequestId) -> None:
        """Finish, then follow the load to its band."""
        super().finish(request_id)
        self._follow_load()

    def _follow_load(self) -> None:
        band = self._band_of(self.waiting)
        if band != self.band:
            self.band = band
            self.switches += 1
            self.set_params(self.bands[band].params)

    def _arrival_floor(self) -> tuple | None:
        # An admission may switch the band, and so the running request's parameters: the
        # simulator must admit arrivals at the round boundary where they happen.
        return None


def check_bands(bands: Sequence[LoadBand]) -> None:
    """Raise :class:`~lapsd.errors.LapsdError` unless the limits increase, only the last is open."""
    if not bands:
        raise LapsdError("load bands: at least one band is needed")
    limits = [b.max_waiting for b in bands]
    if limits[-1] is not None:
        raise LapsdError("load bands: the last band must have max_waiting null (no bound)")
    bounded = [x for x in limits[:-1] if x is not None]
    if len(bounded) < len(limits) - 1 or any(x < 1 for x in bounded):
        raise LapsdError("load bands: every band but the last needs max_waiting >= 1")
    if any(a >= b for a, b in pairwise(bounded)):
        raise LapsdError(f"load bands: max_waiting must increase, got {bounded}")
    gammas = {b.params.gamma for b in bands}
    if len(gammas) > 1:
        raise LapsdError(f"load bands: every band must use the same gamma, got {sorted(gammas)}")
