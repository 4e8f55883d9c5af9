"""A priority fixed at admission: what vLLM, SGLang and TensorRT-LLM can run of a policy.

The three servers schedule by a number each request carries from its arrival on (vLLM's
``--scheduling-policy priority``, SGLang's ``--enable-priority-scheduling``, TensorRT-LLM's
``waiting_queue_policy=priority``), ties going to the earlier arrival. A lapsd policy exported to
them can therefore only act through the rank it gives a request before the request has run
(:meth:`~lapsd.replay.policies.base.Policy.admission_rank`): no attained service, no observed
acceptance, no re-prediction. :class:`StaticPriority` replays exactly that, so the loss against
the full online policy is measured on the same traces.

How the servers use the number, and how this replay models it:

* **vLLM** (V1 engine, checked in 0.32): the waiting queue is a heap by ``(priority, arrival)``;
  a running request is never displaced by a waiting one. Only when a running request cannot
  get KV blocks does vLLM preempt, and then the running request of the worst priority. Without
  a KV limit (this replay's default) that is ``preemptive=False``.
* **TensorRT-LLM** (PyTorch backend, ``scheduler_config.waiting_queue_policy: priority``):
  the waiting queue is ordered by priority; the capacity scheduler
  (``GUARANTEED_NO_EVICT`` by default) never evicts a running request for it:
  ``preemptive=False``.
* **SGLang** (``--enable-priority-scheduling``): an arriving request preempts running ones
  whose priority is worse by more than ``--priority-scheduling-preemption-threshold``
  (unless ``--disable-priority-preemption``): ``preemptive=True`` (with a threshold of 0 on
  the exported scale).

Since keys never change, a preemptive static priority can only switch at an arrival; it is
"preemptive on arrival" in the servers' sense.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass
from typing_extensions import override

from lapsd.replay import timeshare
from lapsd.replay.policies.base import (
    _AHEAD_OF_ALL,
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    TraceScale,
)
from lapsd.replay.policies.params import PARAMS_CONFIG, ParamsError, PolicyParams, Tunable, build
from lapsd.replay.policies.registry import REGISTRY, construct, register

#: Policies whose admission rank cannot be a static priority.
_NOT_WRAPPABLE = {"static-priority": "it is already a static priority",
                  "srpt-oracle": "it needs every request's true service time"}


@dataclass(frozen=True, config=PARAMS_CONFIG)
class StaticPriorityParams(PolicyParams):
    """Parameters of :class:`StaticPriority`.

    Parameters
    ----------
    policy
        The policy whose admission rank becomes the priority (any registered policy but
        ``srpt-oracle`` and ``static-priority``).
    parameters
        That policy's parameters, every field spelled out (filled from its defaults).
    preemptive
        Whether an arrival with a better priority preempts the running request (SGLang's
        priority preemption) or waits for it to finish (vLLM and TensorRT-LLM).
    """

    unit_field = None

    policy: Annotated[str, Tunable("policy name", search=False)] = "gittins"
    parameters: Annotated[dict[str, Any],
                          Tunable("the wrapped policy's parameters", search=False)] = (
        Field(default_factory=dict))
    preemptive: bool = False

    @field_validator("policy")
    @classmethod
    def _wrappable(cls, name: str) -> str:
        if name not in REGISTRY:
            raise ValueError(f"unknown policy; available: {', '.join(REGISTRY)}")
        if name in _NOT_WRAPPABLE:
            raise ValueError(f"cannot be fixed at admission: {_NOT_WRAPPABLE[name]}")
        return name

    @classmethod
    def with_defaults(cls, scale: Any = None, **given: Any) -> StaticPriorityParams:
        """Parameters from ``given``; the wrapped policy's missing ones from its defaults."""
        params = build(cls, given)  # checks the policy name first
        inner_cls = getattr(REGISTRY[params.policy], "Params", None)
        if inner_cls is None:
            params.inner_params()  # none allowed
            return params
        try:
            inner = inner_cls.with_defaults(scale, **params.parameters)
        except ParamsError as exc:
            raise ParamsError(f"parameters.{exc}") from None
        return build(cls, {**given, "parameters": asdict(inner)})

    def inner_params(self) -> PolicyParams | None:
        """The wrapped policy's parameters as it takes them (``None``: it takes none)."""
        inner_cls = getattr(REGISTRY[self.policy], "Params", None)
        if inner_cls is None:
            if self.parameters:
                raise ParamsError(f"parameters: policy {self.policy!r} takes none, got "
                                  f"{sorted(self.parameters)}")
            return None
        try:
            return build(inner_cls, dict(self.parameters))
        except ParamsError as exc:
            raise ParamsError(f"parameters.{exc}") from None


class _StaticState(RequestState):
    __slots__ = ("rank",)

    def __init__(self, info: RequestInfo, seq: int, rank: float) -> None:
        super().__init__(info, seq)
        self.rank = rank


@register
class StaticPriority(Policy[_StaticState]):
    """Serve by the wrapped policy's admission rank, fixed for the request's life."""

    name = "static-priority"
    # Every policy worth fixing at admission ranks by a length prediction; the others rank all
    # requests alike (arrival order).
    needs_prediction = True
    wraps_policy = True
    Params = StaticPriorityParams
    shares = True

    def __init__(self, params: StaticPriorityParams | None = None) -> None:
        super().__init__()
        self.params = params or StaticPriorityParams.with_defaults(TraceScale())
        #: The wrapped policy; only its :meth:`Policy.admission_rank` is used.
        self.inner = construct(self.params.policy, self.params.inner_params())

    def admission_rank(self, info: RequestInfo) -> float:
        """The wrapped policy's admission rank."""
        return self.inner.admission_rank(info)

    def arrivals_may_preempt(self) -> bool:
        """Whether an arrival may take the server: whenever ``preemptive``.

        An arrival's rank is unknown until it arrives (no arrival floor), so any may outrank
        the running request: the base class's answer, without its calls per decision.
        """
        return self.params.preemptive

    def _new_state(self, info: RequestInfo, seq: int) -> _StaticState:
        return _StaticState(info, seq, self.inner.admission_rank(info))

    def _key(self, st: _StaticState) -> tuple:
        return (st.rank, st.seq)

    def _running_key(self, st: _StaticState) -> tuple:
        return st.key if self.params.preemptive else _AHEAD_OF_ALL

    def _consume(self, st: _StaticState, rounds: Rounds) -> int:  # noqa: ARG002
        # No key changes while a request runs: only an arrival can overtake it, and the engine
        # ends the offered run there when the policy is preemptive.
        return rounds.n

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        return self._static_state(n, preemptive=self.params.preemptive)
