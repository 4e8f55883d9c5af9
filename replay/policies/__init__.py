"""Scheduling policies, one module each, behind :class:`~lapsd.replay.policies.base.Policy`.

Policies register themselves by name (:mod:`lapsd.replay.policies.registry`); :func:`create`
builds one with its parameters::

    from lapsd.replay.policies import create
    policy = create("laps-sd", K=4, M=2.0)
"""

from __future__ import annotations

# Importing the modules registers them.
from lapsd.replay.policies import (
    fcfs,
    gittins,
    laps_sd,
    las,
    lp_sjf,
    lp_srpt,
    mlfq,
    srpt_oracle,
    static_priority,
)
from lapsd.replay.policies.base import (
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    TraceScale,
)
from lapsd.replay.policies.registry import (
    REGISTRY,
    available,
    construct,
    create,
    parameters,
    register,
)

__all__ = [
    "REGISTRY", "Policy", "RequestInfo", "RequestState", "Rounds", "TraceScale", "available",
    "construct", "create", "fcfs", "gittins", "laps_sd", "las", "lp_sjf", "lp_srpt", "mlfq",
    "parameters", "register", "srpt_oracle", "static_priority",
]
