r"""lapsd's online policy inside vLLM: a scheduler class for ``--scheduler-cls``.

Tested with vLLM :data:`SUPPORTED_VLLM` only (the scheduler's internals are not a public API;
another version stops at import with one message saying so). Start the server with::

    vllm serve MODEL --scheduler-cls lapsd.integrations.vllm.LapsdAsyncScheduler \\
        --additional-config '{"lapsd_config": "/path/to/lapsd-config.json"}'

(or ``LAPSD_CONFIG=/path/to/lapsd-config.json`` in the server's environment;
:class:`LapsdScheduler` with ``--no-async-scheduling``).

Length beliefs (:class:`ServerBeliefs`). The server predicts each request's length itself: the
config's predictor (sha256-checked) reads the prompt, decoded from its token ids with the
model's tokenizer (at most :data:`~lapsd.integrations.priorities.MAX_PROMPT_CHARS` of them), and
the belief is capped at the request's ``max_tokens``. Without a predictor in the config (or for
a prompt given as embeddings) a request is ranked as if it used all of its ``max_tokens``.
Beliefs that clients send in ``vllm_xargs`` are ignored, unless the server opts in with
``--additional-config '{"lapsd_client_beliefs": true, ...}'`` and holds the secret
``LAPSD_BELIEF_SECRET`` (read once at start-up): a belief signed with it by the gateway
(:func:`~lapsd.integrations.priorities.sign_belief`, what ``request_fields`` of an exported
``--server vllm`` map sends when the gateway has the secret) is then taken once, within
:data:`~lapsd.integrations.priorities.BELIEF_TTL_S` seconds of its signing. A belief that is
unsigned, forged, expired, replayed or out of range falls back to the server's prediction; each
kind of refusal is logged once and counted (``ServerBeliefs.refused``).

What stays vLLM's: all of ``Scheduler.schedule`` and ``update_from_output`` (token budget,
chunked prefill, KV-block allocation, prefix caching, speculative-decoding slots, async
placeholders). What the policy decides, each step:

* **the order** of all requests, from :meth:`~lapsd.replay.policies.base.Policy.order` (running
  ones by their running key, so a non-preemptive policy keeps them): written into
  ``Request.priority`` (it replaces the client's ``priority``), served by vLLM's own priority
  queue (the scheduler switches itself to ``--scheduling-policy priority``);
* **preemption victims**: under KV-cache pressure vLLM's priority branch preempts the running
  request the policy ranks last; and before each step, running requests that the policy ranks
  below a waiting request that has no slot or no KV blocks are preempted (vLLM itself never
  preempts for a waiting request);
* **feedback**: after each step the policy's batch is the requests vLLM ran
  (:meth:`~lapsd.replay.policies.base.Policy.step`), and each that produced tokens reports
  them with :meth:`~lapsd.replay.policies.base.Policy.observe`: tokens emitted, draft tokens
  scheduled and accepted (speculative decoding), and the step's seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from lapsd.errors import LapsdError, require_extra
from lapsd.integrations.priorities import (
    MAX_PROMPT_CHARS,
    SECRET_ENV,
    XARG_MEDIAN,
    XARG_SIGNATURE,
    BeliefRefused,
    BeliefVerifier,
    load_config_predictor,
    predict_beliefs,
)
from lapsd.replay.config import load_config
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import Policy, RequestInfo

logger = logging.getLogger(__name__)

#: The vLLM release this module is written and tested against (tests/requirements-vllm.txt).
SUPPORTED_VLLM = "0.32.0"
#: ``--additional-config`` key, and environment variable, naming the lapsd config.
CONFIG_KEY = "lapsd_config"
CONFIG_ENV = "LAPSD_CONFIG"
#: ``--additional-config`` key that lets signed client beliefs replace the server's prediction.
CLIENT_BELIEFS_KEY = "lapsd_client_beliefs"


def check_vllm_version(version: str) -> None:
    """Raise :class:`LapsdError` unless ``version`` is :data:`SUPPORTED_VLLM` (any local tag)."""
    if version.split("+")[0] != SUPPORTED_VLLM:
        raise LapsdError(
            f"lapsd.integrations.vllm works with vLLM {SUPPORTED_VLLM} only (it extends "
            f"vLLM's scheduler internals) and this is vLLM {version}: install "
            f"'vllm=={SUPPORTED_VLLM}' (pip install 'lapsd[vllm]'), or serve the config "
            "through request priorities (lapsd export-priorities --server vllm)")


require_extra("vllm", "vllm")
import vllm  # noqa: E402

check_vllm_version(vllm.__version__)

from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.request_queue import (  # noqa: E402
    SchedulingPolicy,
    create_request_queue,
)
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402


class ServerBeliefs:
    """Each request's length belief: the server's prediction, or a client's signed one.

    Parameters
    ----------
    predictor
        The config's length predictor; ``None``: a request is believed to use all its
        ``max_tokens``.
    tokenizer
        Decodes a prompt's token ids for the predictor (needed with one).
    verifier
        Checks signed client beliefs; ``None`` (the default) ignores client beliefs.
    """

    def __init__(self, predictor: Any | None = None, tokenizer: Any | None = None,
                 verifier: BeliefVerifier | None = None) -> None:
        if predictor is not None and tokenizer is None:
            raise LapsdError("lapsd's vLLM scheduler predicts lengths from the prompt text and "
                             "needs the model's tokenizer: start vLLM without "
                             "--skip-tokenizer-init")
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.verifier = verifier
        #: Client beliefs not taken, by kind (:class:`BeliefRefused`'s ``kind``, or "off").
        self.refused: Counter[str] = Counter()

    def __call__(self, request: Any) -> LengthPrediction:
        """The belief about ``request``, capped at its ``max_tokens``."""
        params = request.sampling_params
        extra = (params.extra_args if params is not None else None) or {}
        cap = float(request.max_tokens)
        if XARG_MEDIAN in extra or XARG_SIGNATURE in extra:
            try:
                if self.verifier is None:
                    raise BeliefRefused("off", "this server takes no client beliefs (it "
                                               f"would with {CLIENT_BELIEFS_KEY} and "
                                               f"{SECRET_ENV})")
                median, sigma = self.verifier.verify(extra)
                return LengthPrediction(median, sigma, cap)
            except BeliefRefused as exc:
                self.refused[exc.kind] += 1
                if self.refused[exc.kind] == 1:
                    logger.warning("lapsd: request %s: client belief not taken (%s); the server "
                                   "predicts its length instead (further refusals of this kind "
                                   "are counted, not logged)", request.request_id, exc)
        return self.predict(request, cap)

    def predict(self, request: Any, cap: float) -> LengthPrediction:
        """The server's own belief: the predictor's, from the prompt's first token ids."""
        ids = request.prompt_token_ids
        if self.predictor is None or self.tokenizer is None or not ids:
            return LengthPrediction(max(cap, 1.0), 0.0, cap)
        text = self.tokenizer.decode(ids[:MAX_PROMPT_CHARS], skip_special_tokens=True)
        belief = predict_beliefs(self.predictor, None, [text], [cap])[0]
        assert belief is not None  # a predictor gives one
        return belief


def lapsd_from_vllm_config(vllm_config: Any, policy: Policy[Any] | None = None,
                           ) -> tuple[Policy[Any], ServerBeliefs]:
    """The policy and the beliefs' source from ``--additional-config`` and the environment.

    The config comes from ``--additional-config`` (:data:`CONFIG_KEY`) or ``LAPSD_CONFIG``; a
    given ``policy`` (tests) replaces the config's, and then no config is needed and no
    predictor used. Client beliefs: :data:`CLIENT_BELIEFS_KEY` (``true``) and the secret in
    ``LAPSD_BELIEF_SECRET``, read here, once.
    """
    extra = vllm_config.additional_config if isinstance(vllm_config.additional_config,
                                                        dict) else {}
    opt_in = extra.get(CLIENT_BELIEFS_KEY, False)
    if not isinstance(opt_in, bool):
        raise LapsdError(f"--additional-config {CLIENT_BELIEFS_KEY}={opt_in!r}: expected true "
                         "or false")
    verifier = None
    if opt_in:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            raise LapsdError(f"--additional-config {CLIENT_BELIEFS_KEY}=true takes only beliefs "
                             f"signed with the server's secret: set {SECRET_ENV} (the gateway's "
                             "too), e.g. to the output of `openssl rand -hex 32`")
        verifier = BeliefVerifier(secret)
    if policy is not None:
        return policy, ServerBeliefs(verifier=verifier)
    path = extra.get(CONFIG_KEY) or os.environ.get(CONFIG_ENV)
    if not path:
        raise LapsdError(f"lapsd's vLLM scheduler needs a config: start vLLM with "
                         f"--additional-config '{{\"{CONFIG_KEY}\": \"lapsd-config.json\"}}' "
                         f"or set {CONFIG_ENV}=lapsd-config.json")
    cfg = load_config(path)
    policy = cfg.scheduler()
    if policy.needs_oracle:
        raise LapsdError(f"{path}: policy {policy.name!r} needs every request's true service "
                         "time, which a server does not have")
    if not policy.needs_prediction or cfg.prediction.predictor is None:
        return policy, ServerBeliefs(verifier=verifier)
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    predictor, _ = load_config_predictor(path, cfg)
    return policy, ServerBeliefs(predictor, cached_tokenizer_from_config(
        vllm_config.model_config), verifier)


class LapsdScheduler(Scheduler):
    """vLLM's scheduler, with a lapsd policy ordering requests and choosing victims.

    Parameters
    ----------
    *args, **kwargs
        What vLLM's ``Scheduler`` takes.
    lapsd_policy
        The policy (tests); by default it comes from the config (:func:`lapsd_from_vllm_config`).
    """

    #: vLLM's queueing discipline (set by the base class; always ``PRIORITY`` here).
    policy: Any

    def __init__(self, *args: Any, lapsd_policy: Policy[Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lapsd, self.lapsd_beliefs = lapsd_from_vllm_config(self.vllm_config, lapsd_policy)
        if self.policy != SchedulingPolicy.PRIORITY:
            self.policy = SchedulingPolicy.PRIORITY
            self.waiting = create_request_queue(self.policy)
            self.kv_holding_waiting = create_request_queue(self.policy)
        #: Requests the policy holds (admitted, not finished).
        self._lapsd_live: set[str] = set()
        #: When each pending step was scheduled (by ``id`` of its output), and the last output.
        self._scheduled_at: dict[int, float] = {}
        self._last_output = 0.0
        #: Requests preempted for a better-ranked waiting one (vLLM's own KV preemptions aside).
        self.lapsd_preempted: list[str] = []

    # ------------------------------------------------------------------ arrival, departure
    def add_request(self, request: Any) -> None:
        """The base ``add_request``; a new request is admitted to the policy too."""
        new = request.request_id not in self.requests
        super().add_request(request)
        if new and request.request_id in self.requests:
            self.lapsd.admit(RequestInfo(request.request_id, request.arrival_time,
                                         request.num_prompt_tokens,
                                         self.lapsd_beliefs(request)))
            self._lapsd_live.add(request.request_id)

    def finish_requests(self, request_ids: str | Iterable[str] | None,
                        finished_status: Any) -> list[Any]:
        """The base ``finish_requests`` (aborts); the policy forgets the requests."""
        freed = super().finish_requests(request_ids, finished_status)
        for request in freed:
            self._lapsd_finish(request.request_id)
        return freed

    def _lapsd_finish(self, request_id: str) -> None:
        if request_id in self._lapsd_live:
            self._lapsd_live.discard(request_id)
            self.lapsd.finish(request_id)

    # ------------------------------------------------------------------ each step
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """Rank every request by the policy, preempt for it, then vLLM's ``schedule``."""
        # Requests vLLM ended on a path that reports to nobody (none in vLLM's tests) leave too.
        for request_id in [r for r in self._lapsd_live
                           if r not in self.requests or self.requests[r].is_finished()]:
            self._lapsd_finish(request_id)
        self._apply_order()
        self._preempt_for_waiting()
        out = super().schedule(*args, **kwargs)
        self._scheduled_at[id(out)] = time.monotonic()
        return out

    def _apply_order(self) -> None:
        ranked = self.lapsd.order(len(self._lapsd_live))
        rank = {request_id: i for i, request_id in enumerate(ranked)}
        for request_id in self._lapsd_live:
            self.requests[request_id].priority = rank[request_id]
        # The priorities changed under the waiting heaps: rebuild them.
        for queue in (self.waiting, self.kv_holding_waiting):
            items = list(queue)
            if items:
                queue.remove_requests(items)
                for request in items:
                    queue.add_request(request)
        # vLLM serves running requests in list order while the token budget lasts.
        self.running.sort(key=_priority_key)

    def _preempt_for_waiting(self) -> None:
        """Preempt running requests the policy ranks below a waiting one that cannot start.

        A waiting request needs a free slot and blocks for its tokens so far plus one (an
        estimate: prefix-cache hits and chunked prefill may need fewer). The running request
        ranked last goes first, and only while it ranks below the waiting one.
        """
        waiting = sorted((r for r in self.waiting
                          if r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)),
                         key=_priority_key)
        if not waiting:
            return
        now = time.monotonic()
        free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
        slots = self.max_num_running_reqs - len(self.running)
        for request in waiting:
            need = -(-(request.num_tokens + 1) // self.block_size)
            while slots <= 0 or free_blocks < need:
                victim = self.running[-1] if self.running else None
                if (victim is None or _priority_key(victim) <= _priority_key(request)
                        or not self._request_blocks_can_be_freed(victim)):
                    return
                self.running.pop()
                freed = len(self.kv_cache_manager.get_block_ids(victim.request_id)[0])
                self._preempt_request(victim, now)
                self.lapsd_preempted.append(victim.request_id)
                slots += 1
                free_blocks += freed
            slots -= 1
            free_blocks -= need

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        """The base ``update_from_output``; then the policy observes the step's tokens.

        The step's seconds run from its scheduling, or from the previous output when steps
        overlap (async scheduling), to now.
        """
        now = time.monotonic()
        started = self._scheduled_at.pop(id(scheduler_output), now)
        seconds = now - max(started, self._last_output)
        self._last_output = now
        ran = {r for r in scheduler_output.num_scheduled_tokens if r in self._lapsd_live}
        self.lapsd.step(len(ran), fits=ran.__contains__)
        drafts = {r: len(t) for r, t in scheduler_output.scheduled_spec_decode_tokens.items()}
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for engine_outputs in outputs.values():
            for out in engine_outputs.outputs:
                if out.request_id not in self._lapsd_live:
                    continue
                emitted = len(out.new_token_ids)
                if emitted:
                    # One token is sampled beyond the accepted drafts (a stop may cut it).
                    drafted = drafts.get(out.request_id)
                    accepted = 0 if drafted is None else min(drafted, emitted - 1)
                    self.lapsd.observe(out.request_id, emitted, drafted, accepted, seconds)
                if out.finish_reason is not None:
                    self._lapsd_finish(out.request_id)
        return outputs


class LapsdAsyncScheduler(LapsdScheduler, AsyncScheduler):
    """:class:`LapsdScheduler` over vLLM's ``AsyncScheduler`` (vLLM's default scheduling)."""


def _priority_key(request: Any) -> tuple[int, float]:
    return (request.priority, request.arrival_time)
