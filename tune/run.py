"""A whole tuning run: study, load bands, held-out comparison, config and report.

Everything lands in the output folder::

    study.journal        the Optuna studies (unless --storage names a database)
    lapsd-config.json    the exported scheduler (validated against the schema)
    heldout.json         held-out metrics of every policy, per workload, and latencies
    report.html          the report (``lapsd report``)

Load bands (design page, section 8) are tuned after the single parameter set, one band at a
time: band ``b``'s study searches its parameters with the other bands fixed at their current
best, starting from the single set. The bands are exported when they improve the tuning
objective by more than :data:`BAND_MIN_GAIN`; the held-out table shows whether that gain
survives on unseen prompts either way.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lapsd import __version__
from lapsd.errors import LapsdError
from lapsd.io import atomic_write_text, sha256_file
from lapsd.replay.config import ACCEPTANCE_STATISTIC, VERSION, LapsdConfig, write_config
from lapsd.replay.policies.banded import LoadBand
from lapsd.replay.policies.laps_sd import LapsSD, LapsSDParams
from lapsd.replay.trace import trace_digest
from lapsd.tune.context import TuneSpec, load_context
from lapsd.tune.defaults import (
    CONFIG_FILE,
    DEFAULT_BAND_LIMITS,
    DEFAULT_BAND_TRIALS,
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    DEFAULT_TRIALS,
    HELDOUT_FILE,
    JOURNAL_FILE,
)
from lapsd.tune.heldout import baseline_factories, compare
from lapsd.tune.report import write_report
from lapsd.tune.study import StorageSpec, StudyJob, banded_policy, best_trial, run_job

#: Relative gain on the tuning objective that load bands need to be exported.
BAND_MIN_GAIN = 0.005


Progress = Callable[[str, int, int, float | None], None]


@dataclass(frozen=True)
class RunOptions:
    """How to run the studies (what may change between runs of one study).

    Parameters
    ----------
    out
        Output folder.
    n_trials
        Target number of finished trials of the single-set study.
    workers
        Worker processes.
    storage_url
        RDB URL, or ``None`` for the journal in ``out``.
    study
        Study name (band studies append ``-band<i>``).
    band_limits
        Largest number of waiting requests of each band but the last; empty: no bands.
    band_trials
        Target trials of each band's study.
    heartbeat, grace
        RDB heartbeat interval and grace period, seconds.
    """

    out: Path
    n_trials: int = DEFAULT_TRIALS
    workers: int = 1
    storage_url: str | None = None
    study: str = "lapsd"
    band_limits: tuple[int, ...] = DEFAULT_BAND_LIMITS
    band_trials: int = DEFAULT_BAND_TRIALS
    heartbeat: int = DEFAULT_HEARTBEAT
    grace: int = DEFAULT_GRACE

    @property
    def storage(self) -> StorageSpec:
        """Where the studies live."""
        return StorageSpec(str(self.out / JOURNAL_FILE), self.storage_url, self.heartbeat,
                           self.grace)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out/.lapsd-tune.lock`` so that one run at a time uses the folder's journal."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lapsd-tune.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LapsdError(f"{out} is in use by another `lapsd tune`; wait for it to finish "
                             "or choose another --out") from None
        yield


def run_tune(spec: TuneSpec, opts: RunOptions, progress: Progress | None = None,
             ) -> dict[str, Any]:
    """Tune, compare on held-out data, export; return a summary (also written as files)."""
    start = time.perf_counter()
    ctx = load_context(spec)  # checks the traces and the split before anything is written
    with _locked(opts.out):
        label = f"{opts.study}"
        job = StudyJob(spec, opts.storage, opts.study, opts.n_trials)
        study = run_job(job, opts.workers, _bind(progress, label, opts.n_trials))
        best = best_trial(study)
        tuned = ctx.space.to_params(best.params)
        assert isinstance(tuned, LapsSDParams)
        tuned_value = best.values[0]

        sets: list[dict[str, Any]] = []
        band_values: list[float] = []
        if opts.band_limits:
            sets = [dict(best.params) for _ in range(len(opts.band_limits) + 1)]
            for b in range(len(sets)):
                name = f"{opts.study}-band{b}"
                band_job = StudyJob(spec, opts.storage, name, opts.band_trials, band=b,
                                    band_limits=opts.band_limits, fixed=tuple(sets))
                band_study = run_job(band_job, opts.workers,
                                     _bind(progress, name, opts.band_trials))
                band_best = best_trial(band_study)
                sets[b] = dict(band_best.params)
                band_values.append(band_best.values[0])
        banded_value = band_values[-1] if band_values else None
        bands_kept = (banded_value is not None
                      and banded_value < tuned_value * (1 - BAND_MIN_GAIN))

        policies = baseline_factories(ctx)
        policies["laps-sd (tuned)"] = lambda: LapsSD(tuned)
        bands: list[LoadBand] | None = None
        if sets:
            bands = list(banded_policy(ctx, opts.band_limits, sets).bands)
            limits = opts.band_limits
            policies["laps-sd (banded)"] = lambda: banded_policy(ctx, limits, sets)
        if progress is not None:
            progress("held-out comparison", 0, 1, None)
        heldout = compare(ctx, policies)
        if progress is not None:
            progress("held-out comparison", 1, 1, None)
        heldout["tuning_objective"] = {"laps-sd (tuned)": tuned_value,
                                       "laps-sd (banded)": banded_value}
        atomic_write_text(opts.out / HELDOUT_FILE, json.dumps(heldout) + "\n")

        cfg: dict[str, Any] = {
            "version": VERSION,
            "policy": _policy_section(tuned),
            "acceptance_statistic": ACCEPTANCE_STATISTIC,
            "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": spec.c0,
                            "c1_s_per_token": spec.c1},
            "predictor": (None if spec.predictor is None else
                          {"path": str(spec.predictor), "sha256": sha256_file(spec.predictor)}),
            "predictions": "predictor" if spec.predictor else spec.predictions,
            "load_bands": (None if not bands_kept or bands is None else
                           {"by": "waiting_requests",
                            "bands": [{"max_waiting": b.max_waiting, "parameters": b.params}
                                      for b in bands]}),
            "provenance": {
                "traces": [{"path": str(t), "sha256": trace_digest(t)} for t in spec.traces],
                "workloads": [w.text for w in spec.suite.workloads()],
                "holdout_fraction": spec.holdout,
                "study": opts.study,
                "storage": opts.storage.describe(),
                "trial": best.number,
                "n_trials": opts.n_trials,
                "objective": "mean over workloads and traces of mean latency / srpt-oracle's"
                             + (" ; second: p99 latency / srpt-oracle's"
                                if spec.second_objective else ""),
                "search_space": ctx.space.describe(),
                "seed": spec.seed,
                "lapsd_version": __version__,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            },
            "heldout": {"workloads": heldout["workloads"], "requests": heldout["requests"],
                        "policies": heldout["summary"]},
        }
        if spec.second_objective:
            cfg["pareto_front"] = [
                {"trial": t.number, "values": list(t.values),
                 "parameters": ctx.space.to_params(t.params)}
                for t in sorted(study.best_trials, key=lambda t: t.values[0])]
        config = LapsdConfig.model_validate(cfg)
        write_config(config, opts.out / CONFIG_FILE)

        report = write_report(opts.out, opts.storage_url)
    return {
        "out": str(opts.out), "config": str(opts.out / CONFIG_FILE), "report": str(report),
        "elapsed_s": time.perf_counter() - start, "best_trial": best.number,
        "tuning_objective": tuned_value, "banded_objective": banded_value,
        "bands_exported": bands_kept, "parameters": asdict(tuned),
        "heldout": heldout["summary"], "heldout_workloads": heldout["workloads"],
    }


def _policy_section(params: LapsSDParams) -> dict[str, Any]:
    return {"name": "laps-sd", "parameters": params, "units": params.units()}


def _bind(progress: Progress | None, label: str, total: int,
          ) -> Callable[[int, float | None], None] | None:
    if progress is None:
        return None
    return lambda done, best: progress(label, done, total, best)
