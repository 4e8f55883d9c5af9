"""Priorities at admission: a tuned config as vLLM's, SGLang's or TensorRT-LLM's ``priority``.

The three servers order their waiting queue by a number each request carries, ties going to the
earlier arrival:

============  ==========================================  ======================================
server        start it with                               ``priority`` in the request body
============  ==========================================  ======================================
vLLM          ``--scheduling-policy priority``            integer, lower runs first
SGLang        ``--enable-priority-scheduling``            integer, higher runs first
TensorRT-LLM  ``scheduler_config.waiting_queue_policy:    float in [0, 1], higher runs first
              priority`` (``--extra_llm_api_options``)    (default 0.5)
============  ==========================================  ======================================

A gateway in front of the server calls :meth:`PriorityMapper.priority_for` with each prompt and
puts the answer in the request. The number comes from the config's policy: its rank of the
request at admission (:meth:`~lapsd.replay.policies.base.Policy.admission_rank`: Gittins' rank at
zero attained service, lp-srpt's and lp-sjf's predicted length, LAPS-SD's predicted remaining
length), computed from the predictor's belief about the prompt. It is fixed for the request's
life; what that loses against the online policy is measured by the ``static-priority`` replay
policy (``lapsd tune`` reports it as ``<policy> as static priority``).

Calibration. The rank is in the policy's own unit, unbounded; the server wants a number in its
range. The mapper takes the ranks of a set of calibration prompts (by default the prompts of the
traces the config was tuned on, with the same predictor), and sends a rank to the quantile at
which it falls among them (the empirical distribution, linear between its points; a rank below
all of them is 0, above all 1), cut into ``levels`` equal steps (1000 by default): level 0 is
the smallest ranks, which run first. So the levels are evenly used by requests like the
calibration ones, and the map is monotone: a request the policy ranks first never gets a
priority that runs it later. Two requests get the same level only when their ranks are within
one step (a thousandth of the calibration distribution); the server then serves them in
arrival order (FCFS), as the policy would break a tie. The level becomes the server's value:
vLLM ``level``, SGLang ``levels - 1 - level``, TensorRT-LLM ``(levels - 1 - level) / (levels -
1)``.

Untrusted requests. :meth:`PriorityMapper.priority_for` refuses a prompt that is not a string
and a ``max_tokens`` below 1 (either would otherwise get the best priority), and the predictor
reads only a prompt's first :data:`MAX_PROMPT_CHARS` characters, so a huge prompt costs no more
than that. A length belief sent to lapsd's vLLM scheduler is taken only when signed with the
server's secret (:func:`sign_belief`, checked by :class:`BeliefVerifier`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import shutil
import time
import uuid
import warnings
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lapsd import __version__
from lapsd.errors import LapsdError, require_extra
from lapsd.io import atomic_write_text, dumps, read_json, sha256_file
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.config import (
    LapsdConfig,
    PolicySection,
    config_predictor,
    config_traces,
    load_config,
)
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import Policy, RequestInfo
from lapsd.replay.trace import read_trace

FORMAT = "lapsd-priority-map"
FORMAT_VERSION = 1
#: The files ``export`` writes.
MAP_FILE = "priority-map.json"
PREDICTOR_FILE = "predictor.skops"
ARGS_FILE = "server-args.txt"
GATEWAY_FILE = "gateway.py"
#: Priority levels by default: finer than any calibration set resolves, so ties are rare.
DEFAULT_LEVELS = 1000
#: Points kept of the calibration distribution (the map stays a small file).
MAX_KNOTS = 1001
#: ``vllm_xargs`` keys that carry a request's length belief to lapsd's vLLM scheduler.
XARG_MEDIAN = "lapsd_median"
XARG_SIGMA = "lapsd_sigma"
#: ``vllm_xargs`` keys that make a belief a signed one (:func:`sign_belief`).
XARG_BELIEF_ID = "lapsd_belief_id"
XARG_ISSUED_AT = "lapsd_issued_at"
XARG_SIGNATURE = "lapsd_signature"
#: Characters of a prompt the predictor reads (about 4000 tokens); the rest is not featurised.
#: Longer prompts are rare in the training sets, and a 2 MB prompt then costs what 16 kB do.
MAX_PROMPT_CHARS = 16_384
#: Seconds a signed belief is valid after (and, for clock skew, before) its ``issued_at``.
BELIEF_TTL_S = 60.0
#: The shortest belief-signing secret accepted, in bytes.
MIN_SECRET_BYTES = 32
#: The largest median (tokens) and sigma a client's belief may carry.
MAX_BELIEF_MEDIAN = 1e7
MAX_BELIEF_SIGMA = 10.0
#: Characters of a belief id at most.
MAX_BELIEF_ID = 128
#: Environment variable of the belief-signing secret (the server's and the gateway's).
SECRET_ENV = "LAPSD_BELIEF_SECRET"


@dataclass(frozen=True)
class ServerSpec:
    """What one server takes: flags, the ``priority`` field's type and direction.

    Parameters
    ----------
    name, title
        ``--server`` value and display name.
    integer
        Whether ``priority`` is an integer (else a float in [0, 1]).
    higher_first
        Whether a higher value runs first.
    args
        Server arguments that turn priority scheduling on.
    files
        Further files the arguments name, ``(file name, text)`` pairs.
    preemptive
        Whether an arrival with a better priority preempts a running request (the
        ``static-priority`` replay's ``preemptive``).
    behaviour
        What the server does with the priority.
    """

    name: str
    title: str
    integer: bool
    higher_first: bool
    args: tuple[str, ...]
    files: tuple[tuple[str, str], ...]
    preemptive: bool
    behaviour: str

    def value(self, level: int, levels: int) -> int | float:
        """The server's ``priority`` for ``level`` of ``levels`` (level 0 runs first)."""
        if not self.integer:
            return 0.5 if levels == 1 else (levels - 1 - level) / (levels - 1)
        return levels - 1 - level if self.higher_first else level

    def value_range(self, levels: int) -> tuple[int | float, int | float]:
        """The smallest and largest value sent."""
        return (0.0, 1.0) if not self.integer else (0, levels - 1)


TRTLLM_OPTIONS = "trtllm-priority.yaml"

SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec("vllm", "vLLM", True, False, ("--scheduling-policy", "priority"), (), False,
               "vLLM (V1 scheduler) admits waiting requests by (priority, arrival); it never "
               "preempts a running request for a waiting one, except under KV-cache pressure, "
               "when it preempts the running request of the worst priority. Replayed by "
               "static-priority with preemptive=false. The full online policy inside vLLM: "
               "--scheduler-cls lapsd.integrations.vllm.LapsdAsyncScheduler (send "
               "request_fields(...), which adds the length belief)."),
    ServerSpec("sglang", "SGLang", True, True, ("--enable-priority-scheduling",), (), True,
               "SGLang admits waiting requests by priority (higher first), ties by arrival, and "
               "by default lets an arrival preempt running requests whose priority is lower by "
               "more than --priority-scheduling-preemption-threshold (10 levels of the 1000 "
               "here; --disable-priority-preemption turns it off). Replayed by static-priority "
               "with preemptive=true."),
    ServerSpec("trtllm", "TensorRT-LLM", False, True,
               ("--extra_llm_api_options", TRTLLM_OPTIONS),
               ((TRTLLM_OPTIONS, "scheduler_config:\n  waiting_queue_policy: priority\n"),), False,
               "TensorRT-LLM (PyTorch backend) orders its waiting queue by priority (higher "
               "first, FCFS among equals); its capacity scheduler never evicts a running request "
               "for it (GUARANTEED_NO_EVICT). Replayed by static-priority with "
               "preemptive=false."),
)}


def server_spec(name: str) -> ServerSpec:
    """The :class:`ServerSpec` of ``--server NAME``."""
    try:
        return SERVERS[name]
    except KeyError:
        raise LapsdError(f"--server {name!r}: expected one of {', '.join(SERVERS)}") from None


@dataclass(frozen=True)
class RankScale:
    """Where admission ranks fall among calibration ranks (the map's calibration).

    ``knots`` are distinct calibration ranks, increasing; ``cdf`` their mid-rank empirical
    distribution (the fraction of calibration ranks below, plus half of those equal), strictly
    increasing in (0, 1).
    """

    knots: tuple[float, ...]
    cdf: tuple[float, ...]
    prompts: int
    source: str

    @classmethod
    def fit(cls, ranks: Sequence[float], source: str) -> RankScale:
        """The scale of ``ranks`` (at most :data:`MAX_KNOTS` points are kept)."""
        values = np.sort(np.asarray(ranks, dtype=np.float64))
        if values.size == 0:
            raise LapsdError(f"calibration ({source}): no prompts to calibrate the priorities on")
        if not np.isfinite(values).all():
            raise LapsdError(f"calibration ({source}): a prompt's admission rank is not finite")
        knots, counts = np.unique(values, return_counts=True)
        below = np.cumsum(counts) - counts
        cdf = (below + counts / 2) / values.size
        if knots.size > MAX_KNOTS:
            pick = np.unique(np.rint(np.linspace(0, knots.size - 1, MAX_KNOTS)).astype(np.int64))
            knots, cdf = knots[pick], cdf[pick]
        return cls(tuple(knots.tolist()), tuple(cdf.tolist()), int(values.size), source)

    def quantile(self, rank: float) -> float:
        """Where ``rank`` falls among the calibration ranks, in [0, 1]; non-decreasing in it.

        Linear between knots and clamped to the segment's ends, so rounding can never make a
        larger rank land below a smaller one.
        """
        if math.isnan(rank):
            raise ValueError("admission rank is NaN")
        knots, cdf = self.knots, self.cdf
        i = bisect_right(knots, rank)
        if i == 0:
            return 0.0
        if i == len(knots):
            return 1.0 if rank > knots[-1] else cdf[-1]
        lo, hi = cdf[i - 1], cdf[i]
        t = (rank - knots[i - 1]) / (knots[i] - knots[i - 1])
        return min(max(lo + t * (hi - lo), lo), hi)

    def level(self, rank: float, levels: int) -> int:
        """The level of ``rank`` among ``levels`` (0: the smallest ranks, run first)."""
        return min(levels - 1, int(self.quantile(rank) * levels))


@dataclass
class PriorityMapper:
    """A config's admission ranks mapped into one server's ``priority`` (module docstring).

    Build one with :meth:`from_config` (calibrates) or :meth:`load` (an exported map).
    """

    server: ServerSpec
    policy_section: PolicySection
    scale: RankScale
    levels: int
    predictor: Any | None
    target_model: str | None
    max_new_tokens: float
    provenance: dict[str, Any]

    def __post_init__(self) -> None:
        """Build the policy whose admission rank is mapped."""
        if self.levels < 1:
            raise LapsdError(f"levels must be >= 1, got {self.levels}")
        self.policy: Policy[Any] = self.policy_section.build()
        if self.policy.needs_oracle:
            raise LapsdError(f"policy {self.policy.name!r} needs every request's true service "
                             "time: it cannot be served")
        if self.policy.needs_prediction and self.predictor is None:
            raise LapsdError(f"policy {self.policy.name!r} ranks requests by a length "
                             "prediction: give a predictor (--predictor model.skops)")

    # ------------------------------------------------------------------ per request
    def predictions(self, prompts: Sequence[str], max_tokens: Sequence[float | None],
                    ) -> list[LengthPrediction | None]:
        """The predictor's beliefs (capped at each request's ``max_tokens``, else the map's).

        Raises
        ------
        LapsdError
            When a prompt is not a string or a ``max_tokens`` is not a number >= 1.
        """
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise LapsdError(f"prompt of type {type(prompt).__name__}: expected the prompt "
                                 "text (a string) as the predictor was trained on it")
        return predict_beliefs(self.predictor, self.target_model, prompts,
                        [self.max_new_tokens if m is None else check_max_tokens(m, "max_tokens")
                         for m in max_tokens])

    def ranks(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None,
              max_tokens: Sequence[float | None] | None = None) -> list[float]:
        """The policy's admission rank of each prompt."""
        n = len(prompts)
        beliefs = self.predictions(prompts, [None] * n if max_tokens is None else max_tokens)
        return _ranks(self.policy, beliefs, [0] * n if prompt_tokens is None else prompt_tokens)

    def priority_of_rank(self, rank: float) -> int | float:
        """The server's ``priority`` for an admission rank."""
        return self.server.value(self.scale.level(rank, self.levels), self.levels)

    def priority_for(self, prompt: str, *, prompt_tokens: int = 0,
                     max_tokens: float | None = None) -> int | float:
        """The ``priority`` to send with ``prompt``.

        Parameters
        ----------
        prompt
            The prompt text as the predictor was trained on it (the user's message).
        prompt_tokens
            Its length in tokens (used by policies that rank by prompt size).
        max_tokens
            The request's ``max_tokens`` (caps the belief; default: the map's
            ``max_new_tokens``).
        """
        return self.priorities([prompt], [prompt_tokens], [max_tokens])[0]

    def priorities(self, prompts: Sequence[str], prompt_tokens: Sequence[int] | None = None,
                   max_tokens: Sequence[float | None] | None = None) -> list[int | float]:
        """:meth:`priority_for` of several prompts at once (one predictor call)."""
        return [self.priority_of_rank(r) for r in self.ranks(prompts, prompt_tokens, max_tokens)]

    def request_fields(self, prompt: str, *, prompt_tokens: int = 0,
                       max_tokens: float | None = None,
                       secret: str | bytes | None = None) -> dict[str, Any]:
        """What to merge into the request body: ``priority``, and for vLLM the belief.

        The belief (``vllm_xargs``: :data:`XARG_MEDIAN`, :data:`XARG_SIGMA`) is read by lapsd's
        vLLM scheduler (:mod:`lapsd.integrations.vllm`) when signed with ``secret`` (the
        server's ``LAPSD_BELIEF_SECRET``; :func:`sign_belief`) and the server takes client
        beliefs; otherwise the scheduler predicts the length itself. Stock vLLM ignores it.
        """
        belief = self.predictions([prompt], [max_tokens])[0]
        rank = _ranks(self.policy, [belief], [prompt_tokens])[0]
        fields: dict[str, Any] = {"priority": self.priority_of_rank(rank)}
        if self.server.name == "vllm" and belief is not None:
            fields["vllm_xargs"] = (
                {XARG_MEDIAN: belief.median, XARG_SIGMA: belief.sigma} if secret is None
                else sign_belief(secret, belief.median, belief.sigma))
        return fields

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, config: str | Path | LapsdConfig, server: str, *,
                    predictor: str | Path | Any | None = None,
                    calibration: Sequence[str | Path] | None = None,
                    levels: int = DEFAULT_LEVELS, target_model: str | None = None,
                    max_new_tokens: float | None = None) -> PriorityMapper:
        """Calibrate a mapper for ``server`` from a config.

        Parameters
        ----------
        config
            ``lapsd-config.json`` (or a loaded config).
        server
            ``vllm``, ``sglang`` or ``trtllm``.
        predictor
            A predictor file or object; default: the config's own predictor (when its
            predictions came from one). Needed by length-aware policies.
        calibration
            Trace folders whose prompts calibrate the map; default: the config's traces.
        levels
            Number of priority levels.
        target_model
            The served model the predictor's beliefs are calibrated for; default: the
            calibration traces' target model (when they have one), else the predictor's.
        max_new_tokens
            The serving cap on output tokens; default: the calibration traces' cap.
        """
        spec = server_spec(server)
        cfg = load_config(config)
        # A config given as an object has no folder: its paths are relative to the working one.
        origin = Path("lapsd-config.json") if isinstance(config, LapsdConfig) else Path(config)
        section = cfg.policy
        probe = section.build()
        if cfg.prediction.what_if and probe.needs_prediction:
            warnings.warn(f"the config was tuned with {cfg.prediction.source}, a what-if of "
                          "predictions a server cannot have; its parameters may not suit the "
                          "real predictor", stacklevel=2)
        predictor_obj, predictor_ref = _predictor(origin, cfg, predictor, probe.needs_prediction)
        traces = ([Path(t) for t in calibration] if calibration
                  else config_traces(origin, cfg))
        prompts, tokens, targets, caps = _calibration_prompts(traces, probe.needs_prediction)
        target = target_model or (targets[0] if len(targets) == 1 else None)
        cap = (check_max_tokens(max_new_tokens, "max_new_tokens") if max_new_tokens is not None
               else min(caps, default=math.inf))
        beliefs = predict_beliefs(predictor_obj, target, prompts, [cap] * len(prompts))
        scale = RankScale.fit(_ranks(probe, beliefs, tokens),
                              f"{len(prompts)} prompts of {', '.join(map(str, traces))}")
        config_ref = ({"path": str(config), "sha256": sha256_file(config)}
                      if isinstance(config, str | Path) else None)
        return cls(spec, section, scale, levels, predictor_obj, target, cap,
                   {"config": config_ref, "predictor": predictor_ref,
                    "lapsd_version": __version__})

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The map as ``priority-map.json`` holds it (the predictor by reference)."""
        lo, hi = self.server.value_range(self.levels)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "server": self.server.name,
            "server_args": list(self.server.args),
            "priority": {"field": "priority", "integer": self.server.integer,
                         "higher_first": self.server.higher_first, "range": [lo, hi],
                         "levels": self.levels},
            "policy": self.policy_section.model_dump(mode="json"),
            "rank": _first_line(type(self.policy).admission_rank.__doc__),
            "target_model": self.target_model,
            "max_new_tokens": None if math.isinf(self.max_new_tokens) else self.max_new_tokens,
            "calibration": {"source": self.scale.source, "prompts": self.scale.prompts,
                            "knots": list(self.scale.knots), "cdf": list(self.scale.cdf)},
            "replay": {"policy": "static-priority",
                       "parameters": {"policy": self.policy_section.name,
                                      "parameters": self.policy_section.parameters,
                                      "preemptive": self.server.preemptive}},
            "behaviour": self.server.behaviour,
            "provenance": self.provenance,
        }

    @classmethod
    def load(cls, path: str | Path) -> PriorityMapper:
        """A mapper from an exported folder (or its ``priority-map.json``).

        The predictor is the copy beside the map, checked against the recorded sha256.

        Raises
        ------
        LapsdError
            When the file is missing, not a priority map, or its predictor changed.
        """
        p = Path(path)
        p = p / MAP_FILE if p.is_dir() else p
        data = read_json(p, missing=f"{p}: no such priority map (write one with `lapsd "
                                    "export-priorities`)")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise LapsdError(f"{p} is not a version-{FORMAT_VERSION} {FORMAT} file; re-export "
                             "it with `lapsd export-priorities`")
        ref = data["provenance"].get("predictor")
        predictor = None
        if ref is not None:
            copy = p.parent / PREDICTOR_FILE
            if not copy.is_file() or sha256_file(copy) != ref["sha256"]:
                raise LapsdError(f"{copy}: missing or not the predictor the map was calibrated "
                                 f"with (sha256 {ref['sha256'][:12]}...); re-export the map")
            predictor = _load_predictor(copy)
        cal = data["calibration"]
        cap = data["max_new_tokens"]
        return cls(server_spec(data["server"]), PolicySection.model_validate(data["policy"]),
                   RankScale(tuple(cal["knots"]), tuple(cal["cdf"]), cal["prompts"],
                             cal["source"]),
                   data["priority"]["levels"], predictor, data["target_model"],
                   math.inf if cap is None else float(cap), data["provenance"])

    def export(self, out: Path) -> list[Path]:
        """Write the map, the predictor copy, the server arguments and a gateway module.

        Returns the files written (``out`` is created; existing files are replaced).
        """
        ref = self.provenance.get("predictor")
        if self.predictor is not None and ref is None:
            raise LapsdError("the map's predictor was given as an object, not a file: build the "
                             "mapper with the predictor's path to export it")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if ref is not None:
            shutil.copyfile(ref["path"], out / PREDICTOR_FILE)
            written.append(out / PREDICTOR_FILE)
        for name, text in (
            (MAP_FILE, dumps(self.to_dict())),
            (ARGS_FILE, " ".join(self.server.args) + "\n"),
            (GATEWAY_FILE, _GATEWAY.format(server=self.server.title, map_file=MAP_FILE,
                                           secret_env=SECRET_ENV)),
            *self.server.files,
        ):
            atomic_write_text(out / name, text)
            written.append(out / name)
        return written


_GATEWAY = '''"""Fill the ``priority`` field of requests to {server} from the exported lapsd map.

    from gateway import priority_for, request_fields
    body["priority"] = priority_for(user_prompt, prompt_tokens=n, max_tokens=body["max_tokens"])
    # or, also carrying the length belief that lapsd's vLLM scheduler plug-in reads:
    body.update(request_fields(user_prompt, prompt_tokens=n, max_tokens=body["max_tokens"]))

With ``{secret_env}`` set (the secret of lapsd's vLLM scheduler), the belief is signed
and that scheduler may take it instead of predicting the length itself. Needs
``pip install 'lapsd[predict]'`` (the predictor). Written by ``lapsd export-priorities``.
"""

import os
from pathlib import Path

from lapsd.integrations.priorities import PriorityMapper

MAPPER = PriorityMapper.load(Path(__file__).with_name("{map_file}"))
SECRET = os.environ.get("{secret_env}")


def priority_for(prompt: str, prompt_tokens: int = 0, max_tokens: float | None = None):
    """The request's priority: the tuned policy's admission rank, mapped to {server}'s range."""
    return MAPPER.priority_for(prompt, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def request_fields(prompt: str, prompt_tokens: int = 0, max_tokens: float | None = None):
    """What to merge into the request body: ``priority`` (vLLM: and ``vllm_xargs``)."""
    return MAPPER.request_fields(prompt, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                                 secret=SECRET)
'''


def predict_beliefs(predictor: Any | None, target: str | None, prompts: Sequence[str],
             caps: Sequence[float]) -> list[LengthPrediction | None]:
    """The predictor's belief about each prompt with its cap (``None`` without a predictor)."""
    if predictor is None:
        return [None] * len(prompts)
    beliefs = predictor.predictions([p[:MAX_PROMPT_CHARS] for p in prompts], target)
    return [dataclasses.replace(b, cap=float(c)) for b, c in zip(beliefs, caps, strict=True)]


def _ranks(policy: Policy[Any], beliefs: Sequence[LengthPrediction | None],
           prompt_tokens: Sequence[int]) -> list[float]:
    for t in prompt_tokens:
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 0:
            raise LapsdError(f"prompt_tokens={t!r}: expected the prompt's length in tokens, a "
                             "whole number >= 0")
    return [policy.admission_rank(RequestInfo(i, 0.0, int(t), b))
            for i, (b, t) in enumerate(zip(beliefs, prompt_tokens, strict=True))]


def _real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool, not a string), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def check_max_tokens(value: Any, source: str) -> float:
    """``value`` as a cap on output tokens: a finite number >= 1.

    Raises
    ------
    LapsdError
        Naming ``source`` (the option or argument the value came from) otherwise: a cap below
        1, or NaN, would rank the request first.
    """
    number = _real(value)
    if number is None or not 1 <= number < math.inf:
        raise LapsdError(f"{source} {value!r}: expected the most output tokens a request may "
                         "produce, a finite number >= 1 (e.g. 512)")
    return number


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _load_predictor(path: Path) -> Any:
    require_extra("predict", "sklearn", "skops")
    from lapsd.predict.persist import load_predictor

    return load_predictor(path)


def _predictor(config: str | Path, cfg: LapsdConfig, given: str | Path | Any | None,
               needed: bool) -> tuple[Any | None, dict[str, str] | None]:
    """The predictor object and its file reference (``None`` when the policy needs none)."""
    if not needed:
        return None, None
    if given is None:
        if cfg.prediction.predictor is None:
            raise LapsdError(f"policy {cfg.policy.name!r} ranks requests by a length prediction "
                             f"and the config's predictions came from {cfg.prediction.source!r}"
                             ", not a predictor file: pass --predictor model.skops")
        return load_config_predictor(config, cfg)
    if isinstance(given, str | Path):
        path = Path(given)
        return _load_predictor(path), {"path": str(path), "sha256": sha256_file(path)}
    return given, None


def load_config_predictor(config: str | Path, cfg: LapsdConfig) -> tuple[Any, dict[str, str]]:
    """The predictor the config at ``config`` names, and its file reference.

    Found beside the config (or, for older configs, relative to the working directory) and
    checked against the sha256 the config records, by :func:`lapsd.replay.config.config_predictor`.

    Raises
    ------
    LapsdError
        When the config names no predictor, the file is missing or not a predictor, or its
        sha256 is not the one the config records (it was retrained or replaced since).
    """
    path = config_predictor(config, None, cfg)
    if path is None:
        raise LapsdError(f"the config's predictions came from {cfg.prediction.source!r}, not a "
                         "predictor file")
    return _load_predictor(path), {"path": str(path), "sha256": sha256_file(path)}


def _calibration_prompts(traces: Sequence[Path], need_text: bool,
                         ) -> tuple[list[str], list[int], list[str], list[float]]:
    """Prompts, prompt sizes, distinct target models and output caps of the traces."""
    prompts: list[str] = []
    tokens: list[int] = []
    targets: set[str] = set()
    caps: list[float] = []
    for path in traces:
        arrays = TraceArrays.from_trace(read_trace(path))
        kept = [i for i, text in enumerate(arrays.prompts) if text is not None]
        if need_text and not kept:
            raise LapsdError(f"calibration trace {path} has no prompt texts; pass --calibration "
                             "with a trace that has them")
        rows = kept if need_text else range(arrays.n_requests)
        prompts.extend(arrays.prompts[i] or "" for i in rows)
        tokens.extend(int(arrays.prompt_tokens[i]) for i in rows)
        targets.update(t for t in (arrays.target_models[i] for i in rows) if t is not None)
        if math.isfinite(arrays.max_new_tokens):
            caps.append(arrays.max_new_tokens)
    return prompts, tokens, sorted(targets), caps


# ---------------------------------------------------------------------- signed beliefs
class BeliefRefused(LapsdError):
    """A client's belief that the server does not take; ``kind`` names the check it failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _belief_numbers(median: Any, sigma: Any) -> tuple[float, float]:
    """A belief's median and sigma as floats, checked to be in range."""
    m, s = _real(median), _real(sigma)
    if m is None or not 1.0 <= m <= MAX_BELIEF_MEDIAN:
        raise BeliefRefused("invalid", f"{XARG_MEDIAN}={median!r}: expected a number of tokens "
                                       f"in [1, {MAX_BELIEF_MEDIAN:g}]")
    if s is None or not 0.0 <= s <= MAX_BELIEF_SIGMA:
        raise BeliefRefused("invalid", f"{XARG_SIGMA}={sigma!r}: expected a number in "
                                       f"[0, {MAX_BELIEF_SIGMA:g}]")
    return m, s


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise LapsdError(f"the belief-signing secret has {len(key)} bytes; use at least "
                         f"{MIN_SECRET_BYTES} random ones (e.g. `openssl rand -hex 32`)")
    return key


def _signature(key: bytes, belief_id: str, issued_at: int, median: float, sigma: float) -> str:
    """HMAC-SHA256 of the canonical bytes ``lapsd-belief-v1 NL id NL issued_at NL median NL sigma``.

    Numbers are written as Python's shortest round-trip ``repr`` of the float (issued_at as an
    integer), so the JSON the gateway sends verifies as the same bytes.
    """
    message = "\n".join(("lapsd-belief-v1", belief_id, str(issued_at), repr(median),
                         repr(sigma))).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_belief(secret: str | bytes, median: float, sigma: float, *,
                belief_id: str | None = None, issued_at: int | None = None) -> dict[str, Any]:
    """The ``vllm_xargs`` of a signed length belief, for lapsd's vLLM scheduler.

    A gateway calls it with the secret the server holds (``LAPSD_BELIEF_SECRET``) and merges
    the result into the request's ``vllm_xargs``; the server takes the belief once, within
    :data:`BELIEF_TTL_S` seconds of ``issued_at`` (:class:`BeliefVerifier`).

    Parameters
    ----------
    secret
        The shared secret (at least :data:`MIN_SECRET_BYTES` bytes).
    median, sigma
        The belief: median output tokens in [1, :data:`MAX_BELIEF_MEDIAN`], log-spread in
        [0, :data:`MAX_BELIEF_SIGMA`].
    belief_id
        A unique id (default: a random UUID); the server accepts each id once.
    issued_at
        Unix seconds (default: now).

    Raises
    ------
    LapsdError
        When the secret is too short or the numbers are out of range.
    """
    m, s = _belief_numbers(median, sigma)
    belief_id = uuid.uuid4().hex if belief_id is None else belief_id
    issued_at = int(time.time()) if issued_at is None else int(issued_at)
    return {XARG_MEDIAN: m, XARG_SIGMA: s, XARG_BELIEF_ID: belief_id,
            XARG_ISSUED_AT: issued_at,
            XARG_SIGNATURE: _signature(_key(secret), belief_id, issued_at, m, s)}


class BeliefVerifier:
    """Checks the signed beliefs of :func:`sign_belief` (the server side).

    A belief is taken when its HMAC matches (:func:`hmac.compare_digest`), its numbers are in
    range, it was issued within ``ttl_s`` seconds of now, and its id was not taken before
    (ids are remembered for ``2 * ttl_s`` seconds, after which they have expired anyway).

    Parameters
    ----------
    secret
        The shared secret (at least :data:`MIN_SECRET_BYTES` bytes).
    ttl_s
        How long a belief stays valid.
    clock
        Unix seconds now (tests).
    """

    def __init__(self, secret: str | bytes, *, ttl_s: float = BELIEF_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = _key(secret)
        self.ttl_s = ttl_s
        self._clock = clock
        #: Ids taken, with when they were taken (in that order).
        self._taken: dict[str, float] = {}

    def verify(self, xargs: Mapping[str, Any]) -> tuple[float, float]:
        """The belief's ``(median, sigma)``.

        Raises
        ------
        BeliefRefused
            When it is unsigned (``kind`` "unsigned"), malformed or out of range ("invalid"),
            forged ("bad signature"), too old or too new ("expired") or used before
            ("replayed").
        """
        signature = xargs.get(XARG_SIGNATURE)
        if signature is None:
            raise BeliefRefused("unsigned", f"no {XARG_SIGNATURE}")
        belief_id, issued_at = xargs.get(XARG_BELIEF_ID), xargs.get(XARG_ISSUED_AT)
        if not (isinstance(signature, str) and isinstance(belief_id, str)
                and 0 < len(belief_id) <= MAX_BELIEF_ID and isinstance(issued_at, int)
                and not isinstance(issued_at, bool)):
            raise BeliefRefused("invalid", f"{XARG_SIGNATURE}, {XARG_BELIEF_ID} (at most "
                                           f"{MAX_BELIEF_ID} characters) or {XARG_ISSUED_AT} "
                                           "(integer seconds) missing or of the wrong type")
        median, sigma = xargs.get(XARG_MEDIAN), xargs.get(XARG_SIGMA)
        m, s = _real(median), _real(sigma)
        if m is None or s is None:
            raise BeliefRefused("invalid", f"{XARG_MEDIAN}={median!r}, {XARG_SIGMA}={sigma!r}: "
                                           "expected numbers")
        # As bytes: compare_digest refuses a str with non-ASCII characters.
        if not hmac.compare_digest(_signature(self._key, belief_id, issued_at, m, s).encode(),
                                   signature.encode()):
            raise BeliefRefused("bad signature", f"{XARG_SIGNATURE} does not match the belief "
                                                 "(signed with another secret, or altered)")
        m, s = _belief_numbers(m, s)
        now = self._clock()
        if abs(now - issued_at) > self.ttl_s:
            raise BeliefRefused("expired", f"{XARG_ISSUED_AT}={issued_at} is more than "
                                           f"{self.ttl_s:g} s from the server's clock ({now:.0f})")
        while self._taken and next(iter(self._taken.values())) < now - 2 * self.ttl_s:
            del self._taken[next(iter(self._taken))]
        if belief_id in self._taken:
            raise BeliefRefused("replayed", f"{XARG_BELIEF_ID}={belief_id!r} was used before")
        self._taken[belief_id] = now
        return m, s
