"""The folder a live run writes (``lapsd live``) and ``validate``/``fit-batch-cost`` read.

A format of its own, like a trace's: read and written here without torch, so that a machine
without the GPU extras checks a run.

A run's folder ``DIR`` (written at the end, atomically: complete or absent; Ctrl-C writes what had
finished and marks the run interrupted)::

    DIR/trace/             a lapsd trace of the finished requests, in arrival order (request
                           ids "00017:PROMPT_ID"; round_s as :mod:`lapsd.collect.live`
                           defines it, draft_s/verify_s from the
                           engine; manifest: timing "measured_per_round", the collector block,
                           and a "live" block; with --states, the target's hidden states as a
                           collection records them, :mod:`lapsd.collect.states`)
    DIR/schedule.parquet   one row per round, in the order they ran: step, batch (requests in
                           the step; at batch sizes above one a step's rows are its members,
                           best-ranked first, and its idle, switch and scheduler times are on
                           its first row, zero on the others), request_id, round,
                           start_s/end_s (engine round start, boundary; seconds since the run
                           started), round_s, engine_s, scheduler_s (policy calls since the last
                           boundary), switch_s (host clock) and switch_device_s (engine clock)
                           of the switch before the round (0 when the same request continues),
                           switched (another request ran before; in a batch: it was not in
                           the last step), preempted (and it had not finished),
                           preempted_context (its context; in a batch: the step's preempted
                           requests, their count in preemptions and contexts summed),
                           swapped (host copies at this switch),
                           evicted (requests swapped out for room), idle_s (before the
                           round), context_tokens, admitted (requests admitted so far: those
                           the policy knew of when it picked the round)
    DIR/requests.parquet   one row per workload request, in arrival order: request_id,
                           prompt_id, position, arrival_ns/arrival_s, first_run_s,
                           finish_ns/finish_s, latency_s, prompt_tokens, output_tokens, rounds,
                           service_s (its rounds' round_s), engine_s, prefill_s, preemptions,
                           swaps (times swapped to host), oracle_service_s (srpt-oracle),
                           prediction_* (every field of the request's LengthPrediction, to reuse
                           it exactly) and prediction_p50/p90 (null: no prediction)
    DIR/live.json          the run: policy (name, parameters and scale, or the config's path and
                           sha256), workload, measured capacity, predictions source, the
                           collector block (device, GPU, dtype, versions, engine path), switch
                           statistics, scheduler overhead, latency, wall time
    DIR/lapsd-config.json  with --config: the config as the run read it
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.io import atomic_dir, read_json, sha256_file, write_json
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies import create
from lapsd.replay.policies.base import Policy, TraceScale
from lapsd.replay.trace import Trace, read_trace, write_trace

TRACE_DIR = "trace"
SCHEDULE_FILE = "schedule.parquet"
REQUESTS_FILE = "requests.parquet"
INFO_FILE = "live.json"
CONFIG_COPY = "lapsd-config.json"
KIND, VERSION = "lapsd-live", 1



@dataclass
class LiveRun:
    """A live run's folder, read back (:func:`read_live`)."""

    path: Path
    info: dict[str, Any]
    trace: Trace
    schedule: pl.DataFrame
    requests: pl.DataFrame

    def predictions(self) -> list[LengthPrediction] | None:
        """The predictions the scheduler was told, in arrival order (``None``: none)."""
        names = [f.name for f in dataclasses.fields(LengthPrediction)]
        if "prediction_" + names[0] not in self.requests.columns:
            return None
        cols = [self.requests[f"prediction_{n}"].to_list() for n in names]
        return [LengthPrediction(**dict(zip(names, values, strict=True)))
                for values in zip(*cols, strict=True)]

    def policy_factory(self) -> Callable[[], Policy]:
        """A builder of fresh schedulers like the one the run used."""
        return policy_factory(self.info["policy"], scale_of(self.info), self.path)


def scale_of(info: dict[str, Any]) -> TraceScale:
    """The typical round a run's scheduler was built with (``live.json``'s ``scale``)."""
    return TraceScale(**info["scale"])


def policy_factory(section: dict[str, Any], scale: TraceScale, base: Path | None = None
                   ) -> Callable[[], Policy]:
    """Fresh schedulers from a ``policy`` section of ``live.json`` (or of a run being set up).

    ``{"name", "parameters"}``: a registered policy (scale-dependent defaults from ``scale``);
    ``{"config": {"path", "sha256"}}``: the config, read from ``base/lapsd-config.json`` when
    ``base`` is given (a recorded run), checked against the recorded sha256.
    """
    from lapsd.replay.config import scheduler_factory

    if "config" in section:
        ref = section["config"]
        path = Path(ref["path"]) if base is None else base / CONFIG_COPY
        if "sha256" in ref and sha256_file(path) != ref["sha256"]:
            raise LapsdError(f"{path}: the config changed since the run used it (sha256 differs)")
        return scheduler_factory(path)
    name, params = section["name"], dict(section.get("parameters") or {})
    create(name, scale, **params)  # checked once, here
    return lambda: create(name, scale, **params)


def read_live(path: Path | str) -> LiveRun:
    """Read a live run's folder.

    Raises
    ------
    LapsdError
        When it is not a complete live run folder.
    """
    base = Path(path)
    info_path = base / INFO_FILE
    info = read_json(info_path, missing=f"{base} is not a live run folder (no {INFO_FILE}; "
                                        "write one with `lapsd live`)")
    if info.get("kind") != KIND or info.get("version") != VERSION:
        raise LapsdError(f"{info_path}: not a version-{VERSION} {KIND} file")
    return LiveRun(base, info, read_trace(base / TRACE_DIR),
                   pl.read_parquet(base / SCHEDULE_FILE), pl.read_parquet(base / REQUESTS_FILE))


def prompt_index(trace: Trace, arrays: TraceArrays, prompt_ids: Sequence[str], what: str,
                 fix: str) -> np.ndarray:
    """Where each of ``prompt_ids`` is among ``trace``'s requests (``arrays``, its arrays).

    A collection's request ids are prompt ids; a live run's trace names its requests
    "position:prompt id". Of a prompt served twice, the first is used.

    Raises
    ------
    LapsdError
        Naming the first prompt the trace lacks: ``"{what}: no request ...: {fix}"``.
    """
    keys = ([r.split(":", 1)[-1] for r in arrays.request_ids] if "live" in trace.manifest
            else arrays.request_ids)
    where: dict[str, int] = {}
    for i, key in enumerate(keys):
        where.setdefault(key, i)
    missing = sorted(set(prompt_ids) - set(where))
    if missing:
        raise LapsdError(f"{what}: no request {missing[0]!r} (and {len(missing) - 1} more of "
                         f"the prompts asked for): {fix}")
    return np.array([where[p] for p in prompt_ids], dtype=np.int64)


def read_info(path: Path) -> dict[str, Any]:
    """``live.json`` of a live run folder (for ``--capacity-from``)."""
    p = Path(path) / INFO_FILE
    info = read_json(p, missing=f"--capacity-from {path}: no {INFO_FILE} there (not a live run "
                                f"folder)", what=f"--capacity-from {path}: ")
    if info.get("kind") != KIND:
        raise LapsdError(f"--capacity-from {path}: {p} is not a live run's {INFO_FILE}")
    return info


def write_live(out: Path, info: dict[str, Any], trace: Trace, schedule: list[dict[str, Any]],
               requests: pl.DataFrame, *, config: Path | None = None,
               overwrite: bool = False) -> None:
    """Write a run's folder atomically (module docstring); ``config``: the config it served."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_trace(trace, tmp / TRACE_DIR)
        pl.DataFrame(schedule, infer_schema_length=None).write_parquet(tmp / SCHEDULE_FILE)
        requests.write_parquet(tmp / REQUESTS_FILE)
        if config is not None:
            shutil.copyfile(config, tmp / CONFIG_COPY)
        write_json(tmp / INFO_FILE, info)
