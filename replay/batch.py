"""Replay at batch sizes above one: continuous batching of speculative-decoding rounds.

At every step the server runs one SD round of each of up to ``B`` requests together (one
drafting pass and one verification pass over the batch), as vLLM and SGLang do. The policy
ranks every request in the system exactly as at batch size one (:meth:`Policy.step`: the
requests of the last step by their running key, the others by their key) and the first ``B``
that fit in KV memory run. Each runs a round of its own trace (its own accepted tokens).

Definitions at ``B > 1`` (design page, section 7), in its terms:

* *attained service*: a request's time in service is the wall time of the steps it ran in
  (each member of a step is served for the whole step); rounds and tokens count as at
  ``B = 1``. So LAS, MLFQ and LAPS-SD's queues age a batched request by the steps it was in.
* *preemption*: a request of the last step that is not in the next one. With a KV capacity
  (tokens), a request whose cache does not fit any more is swapped out and pays the switch
  cost ``c0 + c1 * context`` (out and back in, as at ``B = 1``); without one, every preemption
  pays it, as at ``B = 1``.
* *step time*: from a :class:`BatchCost` model of the batch, not the sum of its members'
  rounds: the mean of the members' own batch-1 round times (their draft lengths, acceptance and
  context as recorded), times the measured slowdown of a batch of that size.

The loop is the one every policy runs in (:func:`~lapsd.replay.driver.drive`); the step times
and swaps are the :class:`~lapsd.replay.executor.TraceExecutor`'s. Without a KV capacity a
policy that time-shares serves spans of arrivals a step at a time in compiled code
(:func:`lapsd.replay.timeshare.serve_batched`), with the same completions and preemptions. A
plain round-by-round reference at ``B > 1`` lives in the tests; all must give the same
completion times.
"""

from __future__ import annotations

from typing import Any

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.engine import SimResult, simulate
from lapsd.replay.policies.base import Policy
from lapsd.replay.workload import Workload


def simulate_batched(arrays: TraceArrays, workload: Workload, policy: Policy[Any], batch: int,
                     *, cost: BatchCost | None = None, switch: SwitchCost | None = None,
                     kv_tokens: int | None = None) -> SimResult:
    """Replay ``workload`` through ``policy`` at batch size ``batch`` (module docstring).

    Parameters
    ----------
    batch
        Requests per step (>= 1).
    cost
        The step-time model (flat by default).
    switch
        Swap cost model.
    kv_tokens
        KV capacity in tokens (prompt plus generated of every resident request); ``None``:
        unbounded, every preemption pays the switch cost.
    """
    return simulate(arrays, workload, policy, switch=switch, batch=batch, cost=cost,
                    kv_tokens=kv_tokens)
