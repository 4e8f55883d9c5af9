"""A whole tuning run: predictor, a study per policy, load bands, held-out comparison, export.

Everything lands in the output folder::

    predictor.skops      the length predictor trained on the tuning split (default)
    study.journal        the Optuna studies (unless --storage names a database)
    lapsd-config.json    the exported scheduler (validated; format version 2)
    heldout.json         held-out metrics of every policy, per workload, and latencies
    report.html          the report (``lapsd report``)

The tuner searches a *family* of policies (LAPS-SD, Gittins, lp-srpt, lp-sjf by default): one
study per member with parameters, one trial for a member without. The member best on the
tuning suite is exported. Every member (tuned), the other baselines, the best member as a
static priority (what a server's priority scheduling can run of it) and ``srpt-oracle`` are
then replayed on held-out prompts with the same predictions; if something beats the exported
policy there, the config, the report and the command say so.

Load bands (design page, section 8) are tuned for LAPS-SD when it is exported, one band at a
time: band ``b``'s study searches its parameters with the other bands fixed at their current
best, starting from the single set. The bands are kept when they improve the tuning objective
by more than :data:`BAND_MIN_GAIN`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lapsd import __version__
from lapsd.errors import LapsdError
from lapsd.io import atomic_write_text, check_output, sha256_file
from lapsd.replay.config import (
    ACCEPTANCE_STATISTIC,
    VERSION,
    HeldoutMetrics,
    LapsdConfig,
    policy_section,
    relative_to_config,
    write_config,
)
from lapsd.replay.matrix import PolicyFactory
from lapsd.replay.policies import REGISTRY
from lapsd.replay.policies.params import PolicyParams
from lapsd.replay.trace import trace_digest
from lapsd.replay.workload import check_recorded
from lapsd.tune.context import (
    TRAINED,
    TuneContext,
    TuneSpec,
    changed_settings,
    load_context,
    prediction_sources,
    split,
)
from lapsd.tune.defaults import (
    CONFIG_FILE,
    DEFAULT_BAND_LIMITS,
    DEFAULT_BAND_TRIALS,
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    DEFAULT_TRIALS,
    HELDOUT_FILE,
    JOURNAL_FILE,
    PREDICTOR_FILE,
)
from lapsd.tune.heldout import (
    HELDOUT_SEEDS,
    STATIC,
    HeldoutResult,
    Verdict,
    baseline_factories,
    compare,
    static_label,
    static_priority_factory,
    summary_json,
)
from lapsd.tune.report import write_report
from lapsd.tune.study import (
    StorageSpec,
    StudyJob,
    banded_policy,
    best_trial,
    check_settings,
    run_job,
    trial_policy,
)

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
        Target number of finished trials of each family member with parameters.
    workers
        Worker processes.
    storage_url
        RDB URL, or ``None`` for the journal in ``out``.
    study
        Study name prefix (a member's study is ``<study>-<policy>``; band studies append
        ``-band<i>``).
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


@dataclass
class Member:
    """One family member's outcome on the tuning suite."""

    policy: str
    study: str
    trial: int
    trials: int
    objective: float
    params: dict[str, Any]


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


def _stamp(spec: TuneSpec) -> dict[str, Any]:
    """What a trained predictor's card records of the run it was trained for."""
    return json.loads(json.dumps(replace(spec, predictor=None).fingerprint()))


def _kept_predictor(spec: TuneSpec, out: Path) -> bool:
    """Whether ``out`` holds the predictor trained for ``spec`` (by an earlier, resumed run).

    Raises
    ------
    LapsdError
        When it holds one trained for other settings: the config beside it names that one.
    """
    from lapsd.predict.persist import load_predictor

    path = out / PREDICTOR_FILE
    if not path.is_file():
        return False
    old = load_predictor(path).card.get("lapsd_tune")
    if old == _stamp(spec):
        return True
    changed = ("it was not trained by lapsd tune" if not isinstance(old, dict) else
               f"{', '.join(changed_settings(old, _stamp(spec)))} differ")
    raise LapsdError(f"{path} was trained for a run with other settings ({changed}); use "
                     "another --out (this run would replace it)")


def train_predictor(spec: TuneSpec, out: Path) -> TuneSpec:
    """Train the predictor on the tuning split's prompts (all traces), saved in ``out``.

    A predictor already there from an earlier run of the same spec is kept, so that a resumed
    run tunes with the very predictor it started with; one of another spec is refused (see
    :func:`_kept_predictor`). Returns the spec that uses it.
    """
    from lapsd.predict.persist import save_predictor
    from lapsd.predict.train import fit_on_arrays

    path = out / PREDICTOR_FILE
    if _kept_predictor(spec, out):
        return replace(spec, predictor=str(path))
    _, tune_sets, _ = split(spec)
    predictor = fit_on_arrays([a for _, a in tune_sets], seed=spec.seed)
    predictor.card["lapsd_tune"] = _stamp(spec)
    predictor.card["trained_on"] = ("the tuning split of " + ", ".join(spec.traces)
                                    + f" (holdout {spec.holdout}, seed {spec.seed})")
    save_predictor(predictor, path)
    return replace(spec, predictor=str(path))


def check_run(spec: TuneSpec, opts: RunOptions) -> None:
    """Check everything a run needs before it trains or writes anything.

    The output folder can be written; the traces read and split; the workloads can be made;
    a given predictor loads; the storage opens; and whatever an earlier run left in the folder
    or the storage (studies, the trained predictor) was made with these settings, so that a
    refused run changes nothing.

    Raises
    ------
    LapsdError
        Naming the first problem.
    """
    check_output(opts.out, "--out", folder=True)
    if opts.out.exists() and not opts.out.is_dir():
        raise LapsdError(f"--out {opts.out} is a file; name a folder for the run")
    _, tune_sets, _ = split(spec)
    if (spec.predictions == TRAINED and spec.repredict_every is not None
            and not any(r for _, a in tune_sets for r in a.responses)):
        raise LapsdError(
            "--repredict-every: the tuning traces keep no response text, so the predictor "
            "trained on them could not re-predict; use traces that keep it (lapsd collect, "
            "Spec-Bench answers) or a predictor trained on text (--predictor)")
    if spec.recorded_updates:
        for name, a in tune_sets:
            check_recorded(a, f"--recorded-updates: trace {name}")
    spec.suite.workloads()
    spec.suite.with_seeds(HELDOUT_SEEDS).workloads()
    spec.server  # noqa: B018  (its cost table reads, or the run is refused in one line)
    if spec.predictions == "predictor":
        prediction_sources(spec)  # the file loads, and re-predicts if asked to
    if opts.storage_url is not None or (opts.out / JOURNAL_FILE).is_file():
        studies = {s.study_name: s.user_attrs.get("lapsd_settings")
                   for s in opts.storage.open().get_all_studies()}
        for job in _jobs(spec, opts):
            check_settings(job, studies.get(job.study))
    if spec.predictions == TRAINED:
        _kept_predictor(spec, opts.out)


def _member_job(spec: TuneSpec, opts: RunOptions, policy: str, n_trials: int = 1) -> StudyJob:
    return StudyJob(spec, opts.storage, f"{opts.study}-{policy}", n_trials, policy=policy)


def _band_job(spec: TuneSpec, opts: RunOptions, policy: str, band: int,
              fixed: tuple[dict[str, Any], ...] = ()) -> StudyJob:
    return StudyJob(spec, opts.storage, f"{opts.study}-{policy}-band{band}", opts.band_trials,
                    policy=policy, band=band, band_limits=opts.band_limits, fixed=fixed)


def _jobs(spec: TuneSpec, opts: RunOptions) -> list[StudyJob]:
    """Every study a run may use (band studies of the searched policies that have load bands)."""
    jobs = [_member_job(spec, opts, p) for p in spec.policies]
    if opts.band_limits:
        jobs += [_band_job(spec, opts, p, b) for p in spec.policies if REGISTRY[p].load_bands
                 for b in range(len(opts.band_limits) + 1)]
    return jobs


@dataclass
class TuneResult:
    """What a tuning run did (:func:`run_tune`; ``lapsd tune --json`` prints :meth:`to_json`).

    Attributes
    ----------
    out, config, report
        The run folder, its exported config and its report page.
    predictor, predictions
        The predictor file (``None``: none) and the predictions' source.
    elapsed_s
        Wall time of the run.
    exported, verdict
        The exported held-out row and how it fares against the best baseline.
    policy, parameters
        The exported policy and its parameters as the config holds them.
    tuning_objective, banded_objective, bands_exported
        Each tuned row's objective; with load bands, theirs and whether they were exported.
    heldout, heldout_workloads
        Per held-out row, its means; the held-out workloads.
    """

    out: str
    config: str
    report: str
    predictor: str | None
    predictions: str
    elapsed_s: float
    exported: str
    verdict: Verdict
    policy: str
    parameters: dict[str, Any]
    tuning_objective: dict[str, float]
    banded_objective: float | None
    bands_exported: bool
    heldout: dict[str, HeldoutMetrics]
    heldout_workloads: list[str]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON values (the verdict as its line)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "verdict": str(self.verdict),
                "heldout": summary_json(self.heldout)}


def run_tune(spec: TuneSpec, opts: RunOptions, progress: Progress | None = None,
             ) -> TuneResult:
    """Tune the family, compare on held-out data, export; return a summary (also as files)."""
    start = time.perf_counter()
    check_run(spec, opts)
    with _locked(opts.out):
        if spec.predictions == TRAINED:
            if progress is not None:
                progress("training the length predictor", 0, 1, None)
            spec = train_predictor(spec, opts.out)
            if progress is not None:
                progress("training the length predictor", 1, 1, None)
        ctx = load_context(spec)  # checks the traces and the split before any study
        members = [_tune_member(spec, opts, ctx, name, progress) for name in spec.policies]
        winner = min(members, key=lambda m: m.objective)
        bands, band_value = _tune_bands(spec, opts, ctx, winner, progress)
        bands_kept = band_value is not None and band_value < winner.objective * (
            1 - BAND_MIN_GAIN)

        policies = baseline_factories(ctx, exclude=set(spec.policies))
        for m in members:
            policies[_label(m)] = trial_policy(ctx, m.policy, m.params)
        if bands is not None:
            policies[f"{winner.policy} (banded)"] = bands
        if winner.policy != STATIC:
            policies[static_label(winner.policy)] = static_priority_factory(
                ctx, winner.policy, _params(ctx, winner.policy, winner.params))
        if progress is not None:
            progress("held-out comparison", 0, 1, None)
        heldout = compare(ctx, policies)
        if progress is not None:
            progress("held-out comparison", 1, 1, None)
        exported = f"{winner.policy} (banded)" if bands_kept else _label(winner)
        objectives = {_label(m): m.objective for m in members}
        if band_value is not None:
            objectives[f"{winner.policy} (banded)"] = band_value
        heldout.export(exported, objectives)
        atomic_write_text(opts.out / HELDOUT_FILE, json.dumps(heldout.to_json()) + "\n")

        config = _config(spec, opts, ctx, members, winner, bands if bands_kept else None,
                         heldout)
        write_config(config, opts.out / CONFIG_FILE)
        report = write_report(opts.out, opts.storage_url)
    assert heldout.verdict is not None
    return TuneResult(
        out=str(opts.out), config=str(opts.out / CONFIG_FILE), report=str(report),
        predictor=spec.predictor, predictions=spec.predictions,
        elapsed_s=time.perf_counter() - start, exported=exported, verdict=heldout.verdict,
        policy=winner.policy, parameters=config.policy.parameters,
        tuning_objective={_label(m): m.objective for m in members},
        banded_objective=band_value, bands_exported=bands_kept,
        heldout=heldout.summary, heldout_workloads=heldout.workloads)


def _label(m: Member) -> str:
    return f"{m.policy} (tuned)" if m.params else m.policy


def _tune_member(spec: TuneSpec, opts: RunOptions, ctx: TuneContext, policy: str,
                 progress: Progress | None) -> Member:
    """Run the study of one family member (one trial when it has no parameters)."""
    space = ctx.space(policy)
    n = opts.n_trials if space is not None and space.dims else 1
    job = _member_job(spec, opts, policy, n)
    study = run_job(job, opts.workers, _bind(progress, job.study, n))
    best = best_trial(study)
    return Member(policy, job.study, best.number, n, best.values[0], dict(best.params))


def _tune_bands(spec: TuneSpec, opts: RunOptions, ctx: TuneContext, winner: Member,
                progress: Progress | None) -> tuple[PolicyFactory | None, float | None]:
    """Load bands of an exported policy that has them: their scheduler factory and objective."""
    if not REGISTRY[winner.policy].load_bands or not opts.band_limits:
        return None, None
    sets = [dict(winner.params) for _ in range(len(opts.band_limits) + 1)]
    value = None
    for b in range(len(sets)):
        job = _band_job(spec, opts, winner.policy, b, tuple(sets))
        best = best_trial(run_job(job, opts.workers,
                                  _bind(progress, job.study, opts.band_trials)))
        sets[b] = dict(best.params)
        value = best.values[0]
    limits = opts.band_limits
    return (lambda: banded_policy(ctx, winner.policy, limits, sets)), value


def _params(ctx: TuneContext, policy: str, trial_params: dict[str, Any],
            ) -> PolicyParams | None:
    space = ctx.space(policy)
    return None if space is None else space.to_params(trial_params)


def _config(spec: TuneSpec, opts: RunOptions, ctx: TuneContext, members: list[Member],
            winner: Member, bands: PolicyFactory | None, heldout: HeldoutResult,
            ) -> LapsdConfig:
    space = ctx.space(winner.policy)
    study_summary = summary_json(heldout.summary)
    config_file = opts.out / CONFIG_FILE
    cfg: dict[str, Any] = {
        "version": VERSION,
        "policy": policy_section(winner.policy, _params(ctx, winner.policy, winner.params)),
        "prediction": {
            "source": "predictor" if spec.uses_predictor else spec.predictions,
            "what_if": spec.what_if,
            "predictor": (None if not spec.uses_predictor or spec.predictor is None else
                          {"path": relative_to_config(spec.predictor, config_file),
                           "sha256": sha256_file(spec.predictor)}),
            "repredict_every": spec.repredict_every,
            "recorded_updates": spec.recorded_updates,
        },
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": spec.c0,
                        "c1_s_per_token": spec.c1},
        "family": {m.policy: {
            "tuning_objective": m.objective, "trials": m.trials,
            "parameters": policy_section(m.policy, _params(ctx, m.policy, m.params))["parameters"],
            "heldout_norm_mean": study_summary[_label(m)]["norm_mean"]} for m in members},
        "provenance": {
            "traces": [{"path": relative_to_config(t, config_file), "sha256": trace_digest(t)}
                       for t in spec.traces],
            "workloads": [w.text for w in spec.suite.workloads()],
            "holdout_fraction": spec.holdout,
            "server": {"batch_size": spec.batch_size,
                       "step_cost": spec.server.cost.source,
                       "capacity": spec.server.capacity,
                       "loads": "relative to capacity (batch-1 servers the batched one is "
                                "worth)" if spec.batch_size > 1 else "relative to batch size 1"},
            "study": winner.study,
            "storage": opts.storage.describe(),
            "trial": winner.trial,
            "n_trials": winner.trials,
            "objective": "mean over workloads and traces of mean latency / srpt-oracle's"
                         + (" ; second: p99 latency / srpt-oracle's"
                            if spec.second_objective else ""),
            "search_space": None if space is None else space.describe(),
            "seed": spec.seed,
            "lapsd_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
        "heldout": {"workloads": heldout.workloads, "requests": heldout.requests,
                    "policies": study_summary, "exported": heldout.exported,
                    "verdict": str(heldout.verdict)},
    }
    if REGISTRY[winner.policy].uses_acceptance:
        cfg["acceptance_statistic"] = ACCEPTANCE_STATISTIC
    if bands is not None:
        banded = bands()
        cfg["load_bands"] = {"by": "waiting_requests",
                             "bands": [{"max_waiting": b.max_waiting,
                                        "parameters": policy_section(winner.policy,
                                                                     b.params)["parameters"]}
                                       for b in banded.bands]}  # type: ignore[attr-defined]
    if spec.second_objective and space is not None:
        import optuna

        study = optuna.load_study(study_name=winner.study, storage=opts.storage.open())
        cfg["pareto_front"] = [
            {"trial": t.number, "values": list(t.values),
             "parameters": policy_section(winner.policy, space.to_params(t.params))["parameters"]}
            for t in sorted(study.best_trials, key=lambda t: t.values[0])]
    return LapsdConfig.model_validate(cfg)


def _bind(progress: Progress | None, label: str, total: int,
          ) -> Callable[[int, float | None], None] | None:
    if progress is None:
        return None
    return lambda done, best: progress(label, done, total, best)

