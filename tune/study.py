"""Optuna studies: storage, resumption, worker processes, and an exact trial count.

Storage
    By default a journal file (``study.journal``) in the output folder: append-only, safe for
    several processes on one machine, and resumable. Its writers lock it with ``flock``, which
    the kernel releases when a writer dies (:mod:`lapsd.tune.journal`), so a killed run leaves
    no lock for the next one to wait on. With ``--storage postgresql://...`` the
    study lives in Optuna's RDB storage, with heartbeats: a trial whose worker stops beating for
    ``grace`` seconds is failed and re-enqueued with the same parameters
    (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, Optuna 5's name for the
    retry-failed-trial callback).

Exact count
    A study has a *target* number of finished trials (complete or pruned). Each worker loops:
    stop once the target is reached; otherwise take a trial (a re-enqueued one first). A trial
    whose rank among the live trials (waiting, running, finished; by trial number) exceeds the
    target is surplus, the result of two workers asking at once: it fails at once, before any
    replay, marked ``lapsd: surplus``. So re-running a command runs only the remaining count,
    and every trial of the storage is either finished, a failure that was retried (its retry
    names it in ``retry_of`` or Optuna's ``failed_trial``), surplus, or a failure killed
    before it sampled any parameter (nothing to retry; a fresh trial takes its place).

Resumption
    Before workers start, :func:`prepare_study` re-enqueues failed trials that have no retry yet
    (a Ctrl-C fails the running trial). With the journal, the output folder is locked for the
    run and worker processes die with the process that started them (:func:`die_with_parent`),
    so a trial still ``RUNNING`` at start belongs to a killed run whose processes are all gone:
    it is failed and retried (with a warning), and no trial is computed by two runs at once.

Sampling
    TPE, seeded: worker ``w`` uses seed ``seed + w + 7919 * n`` (``n``: trials already in the
    study when it starts), so that parallel workers and resumed runs do not propose the same
    points again. With one worker a run is reproducible; with several, the order in which trials
    finish (and so what TPE has seen) depends on timing.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lapsd.errors import LapsdError, require_extra
from lapsd.replay.policies import REGISTRY, construct
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand
from lapsd.replay.policies.base import Policy
from lapsd.tune.context import TuneContext, TuneSpec, changed_settings, load_context
from lapsd.tune.defaults import DEFAULT_FAMILY, DEFAULT_GRACE, DEFAULT_HEARTBEAT
from lapsd.tune.journal import JournalFlock, recover_journal

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.WAITING, TrialState.RUNNING, *FINISHED)
SURPLUS = "surplus"


class SurplusTrial(Exception):
    """A trial beyond the target count (see the module docstring)."""


@dataclass(frozen=True)
class StorageSpec:
    """Where studies live: an RDB URL, or else a journal file.

    Parameters
    ----------
    journal
        Journal file path (used when ``url`` is ``None``).
    url
        SQLAlchemy URL (``postgresql://user:pass@host/db``), or ``None``.
    heartbeat
        Seconds between heartbeats of a running trial (RDB only).
    grace
        Seconds without a heartbeat after which a trial is failed and retried (RDB only).
    """

    journal: str
    url: str | None = None
    heartbeat: int = DEFAULT_HEARTBEAT
    grace: int = DEFAULT_GRACE

    def open(self) -> BaseStorage:
        """The Optuna storage.

        Raises
        ------
        LapsdError
            When the URL is not usable (:func:`check_storage`) or its database refuses the
            connection.
        """
        if self.url is None:
            return JournalStorage(JournalFileBackend(self.journal, JournalFlock(self.journal)))
        from sqlalchemy.exc import OperationalError

        check_storage(self.url)
        try:
            return RDBStorage(
                _driver_url(self.url), heartbeat_interval=self.heartbeat,
                grace_period=self.grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
            )
        except OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise LapsdError(f"--storage {self.describe()!r}: cannot use the database "
                             f"({reason}); check the host, port, user, password and database "
                             "name") from None

    @property
    def shared(self) -> bool:
        """Whether workers on other machines may use the study (RUNNING is not stale)."""
        return self.url is not None

    def describe(self) -> str:
        """The storage without credentials, for provenance."""
        return f"journal:{self.journal}" if self.url is None else _redacted(self.url)


def _redacted(url: str) -> str:
    """``url`` without its user and password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _driver_url(url: str) -> str:
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; lapsd depends on psycopg2.
    return re.sub(r"^postgresql://", "postgresql+psycopg2://", url)


def check_storage(url: str) -> None:
    """Check a ``--storage`` URL without connecting: its syntax, database and driver.

    Cheap enough to call before any work (it imports at most the database's driver).

    Raises
    ------
    LapsdError
        When the URL does not parse, names a database SQLAlchemy does not know, or its driver
        is not installed (for PostgreSQL: the ``postgres`` extra).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = _redacted(url)
    try:
        parsed = make_url(_driver_url(url))
        dialect = parsed.get_dialect()
    except (ArgumentError, ValueError) as exc:
        raise LapsdError(f"--storage {shown!r} is not a usable database URL ({exc}); expected "
                         "e.g. postgresql://user:password@host:5432/database") from None
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        try:
            require_extra("postgres", "psycopg2")
        except LapsdError as exc:
            raise LapsdError(f"--storage {shown!r}: {exc}") from None
        return
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise LapsdError(f"--storage {shown!r}: the {parsed.get_driver_name()} driver of "
                         f"{parsed.get_backend_name()} is not installed ({exc}); install it, "
                         "or use postgresql://") from None


@dataclass(frozen=True)
class StudyJob:
    """One study of one family member, to run to ``n_trials`` finished trials.

    ``band`` is ``None`` for a single parameter set of ``policy``; otherwise the study tunes
    that band of a :class:`BandedLapsSD` (``policy`` declares ``load_bands``) whose other bands use
    ``fixed`` (trial parameters per band) and whose limits are ``band_limits``. A policy
    without parameters has one trial: itself.
    """

    spec: TuneSpec
    storage: StorageSpec
    study: str
    n_trials: int
    policy: str = DEFAULT_FAMILY[0]
    band: int | None = None
    band_limits: tuple[int, ...] = ()
    fixed: tuple[Mapping[str, Any], ...] = ()

    def first_params(self) -> dict[str, Any]:
        """Enqueued as trial 0: the policy's defaults, or the band's current parameters."""
        from lapsd.tune.space import default_trial_params

        if self.band is not None:
            return dict(self.fixed[self.band])
        params_cls = getattr(REGISTRY[self.policy], "Params", None)
        return {} if params_cls is None else default_trial_params(params_cls)


def banded_policy(ctx: TuneContext, policy: str, limits: tuple[int, ...],
                  trial_params: Sequence[Mapping[str, Any]]) -> BandedLapsSD:
    """A :class:`BandedLapsSD` from per-band trial parameters of ``policy`` (its ``load_bands``)."""
    space = ctx.space(policy)
    assert space is not None and REGISTRY[policy].load_bands
    maxes: list[int | None] = [*limits, None]
    return BandedLapsSD([LoadBand(m, space.to_params(p))
                         for m, p in zip(maxes, trial_params, strict=True)])


def trial_policy(ctx: TuneContext, policy: str, trial_params: Mapping[str, Any],
                 ) -> Callable[[], Policy[Any]]:
    """Fresh schedulers of ``policy`` with a trial's parameters."""
    space = ctx.space(policy)
    params = None if space is None else space.to_params(trial_params)
    return lambda: construct(policy, params)


def _objective(job: StudyJob, ctx: TuneContext) -> Callable[[optuna.Trial], Any]:
    single = job.spec.second_objective is None
    space = ctx.space(job.policy)
    if job.band is not None:
        # Bands share the stability window (lapsd.replay.policies.banded): gamma stays the
        # single set's.
        assert space is not None
        space = replace(space, fixed={"gamma": int(job.fixed[job.band]["gamma"])})

    def objective(trial: optuna.Trial) -> Any:
        live = job_trials(trial.study, LIVE)
        if sum(t.number <= trial.number for t in live) > job.n_trials:
            trial.set_user_attr("lapsd", SURPLUS)
            raise SurplusTrial(f"trial {trial.number} is beyond the target of {job.n_trials}")
        make: Callable[[], Policy[Any]]
        if job.band is None:
            if space is not None:
                space.suggest(trial)
            make = trial_policy(ctx, job.policy, trial.params)
        else:
            assert space is not None
            space.suggest(trial)
            sets = [dict(p) for p in job.fixed]
            sets[job.band] = dict(trial.params)

            def make() -> Policy[Any]:
                return banded_policy(ctx, job.policy, job.band_limits, sets)
        mean, p99 = ctx.evaluator.score(make, trial if single else None)
        trial.set_user_attr("norm_mean", mean)
        trial.set_user_attr("norm_p99", p99)
        return mean if single else (mean, p99)

    return objective


def job_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The study's trials in ``states`` (not copied)."""
    return study.get_trials(deepcopy=False, states=states)


def _sampler(job: StudyJob, worker: int, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded by the run seed, the worker and the trials already in the study.

    A resumed run must not replay the random start-up points of the run it continues.
    """
    seed = job.spec.seed + worker + 7919 * n_existing
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _pruner(job: StudyJob) -> optuna.pruners.BasePruner:
    if job.spec.second_objective is not None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=2)


def load_job_study(job: StudyJob, worker: int = 0,
                   storage: BaseStorage | None = None) -> optuna.Study:
    """Open ``job``'s study for ``worker``, with its pruner and seeded sampler."""
    study = optuna.load_study(study_name=job.study, storage=storage or job.storage.open(),
                              pruner=_pruner(job))
    study.sampler = _sampler(job, worker, len(study.get_trials(deepcopy=False)))
    return study


def work(job: StudyJob, worker: int = 0, poll_s: float = 0.2,
         on_trial: Callable[[], None] | None = None) -> None:
    """Run trials of ``job`` until the study has its target count (one worker).

    Returns early, with the running trial failed (the next run retries it), on Ctrl-C.
    ``on_trial`` is called after each trial.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial retries are marked experimental; they are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    ctx = load_context(job.spec)
    study = load_job_study(job, worker)
    objective = _objective(job, ctx)
    try:
        _loop(job, study, objective, poll_s, on_trial)
    except KeyboardInterrupt:
        return  # optuna has failed the running trial; the next run retries it


def _loop(job: StudyJob, study: optuna.Study, objective: Callable[[optuna.Trial], Any],
          poll_s: float, on_trial: Callable[[], None] | None) -> None:
    while True:
        trials = job_trials(study, LIVE)
        if sum(t.state in FINISHED for t in trials) >= job.n_trials:
            return
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if len(trials) >= job.n_trials and not waiting:
            # Every remaining trial is running elsewhere: wait, failing stale ones (their retry
            # is enqueued by the storage's callback and picked up by the next ask).
            fail_stale_trials(study)
            time.sleep(poll_s)
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
        if on_trial is not None:
            on_trial()


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    done = set()
    for t in trials:
        if "retry_of" in t.user_attrs:
            done.add(int(t.user_attrs["retry_of"]))
        if "failed_trial" in t.system_attrs:
            done.add(int(t.system_attrs["failed_trial"]))
            done.update(RetryHeartbeatStaleTrialCallback.retry_history(t))
    return done


def job_settings(job: StudyJob) -> dict[str, Any]:
    """What must not change between runs of ``job``'s study, as the storage keeps it."""
    # Through JSON, as the storage keeps it (tuples become lists).
    return json.loads(json.dumps({**job.spec.fingerprint(), "policy": job.policy,
                                  "band": job.band, "band_limits": list(job.band_limits)}))


def check_settings(job: StudyJob, old: Mapping[str, Any] | None) -> None:
    """Refuse to continue a study made with settings ``old`` (``None``: a new study)."""
    if old is None:
        return
    changed = changed_settings(old, job_settings(job))
    if changed:
        raise LapsdError(f"study {job.study!r} in {job.storage.describe()} was made with other "
                         f"settings ({', '.join(changed)} differ); use another --out or --study")


def prepare_study(job: StudyJob) -> optuna.Study:
    """Create or resume the study: check its settings, fail stale trials, enqueue retries.

    With the journal, the caller must be the only process using it (a tuning run holds its
    output folder's lock): a killed run's leftovers are repaired and its running trials failed.
    Each repair is reported as a warning.
    """
    if not job.storage.shared:
        for message in recover_journal(job.storage.journal):
            warnings.warn(message, stacklevel=2)
    storage = job.storage.open()
    study = optuna.create_study(study_name=job.study, storage=storage,
                                directions=job.spec.directions, load_if_exists=True,
                                sampler=_sampler(job, 0), pruner=_pruner(job))
    old = study.user_attrs.get("lapsd_settings")
    check_settings(job, old)
    if old is None:
        study.set_user_attr("lapsd_settings", job_settings(job))
    trials = study.get_trials(deepcopy=False)
    stale = [] if job.storage.shared else [t for t in trials if t.state == TrialState.RUNNING]
    if stale:
        for t in stale:
            study.tell(t.number, state=TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
        warnings.warn(f"study {job.study!r}: trial(s) {', '.join(str(t.number) for t in stale)} "
                      "were left running by an earlier run that was killed; marked failed, and "
                      "retried with the same parameters", stacklevel=2)
    retried = _retried_numbers(trials)
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get("lapsd") != SURPLUS
                and t.number not in retried and t.params):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    if not trials:
        study.enqueue_trial(job.first_params())
    return study


def run_job(job: StudyJob, workers: int = 1,
            on_progress: Callable[[int, float | None], None] | None = None,
            poll_s: float = 0.5) -> optuna.Study:
    """Run ``job`` with ``workers`` processes; return the study when it has its target count.

    ``on_progress(finished, best)`` is called from this process while workers run.
    """
    study = prepare_study(job)
    if workers == 1:
        # In this process: no start-up of a worker, and the context is built once per run.
        work(job, 0, on_trial=None if on_progress is None
             else lambda: on_progress(*progress_of(study)))
        finished, best = progress_of(study)
        if finished < job.n_trials:
            raise KeyboardInterrupt  # work() returns early only when interrupted
        return study
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(job, w), daemon=True) for w in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            if on_progress is not None:
                on_progress(*progress_of(study))
            if any(p.exitcode not in (None, 0) for p in procs):
                break  # a worker crashed: the others would wait for its trial forever
            time.sleep(poll_s)
    finally:
        # On Ctrl-C the workers got SIGINT too and fail their running trial; give them a moment
        # to record it before stopping them.
        for p in procs:
            p.join(timeout=5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    finished, best = progress_of(study)
    if on_progress is not None:
        on_progress(finished, best)
    if failed or finished < job.n_trials:
        raise RuntimeError(f"study {job.study!r}: {len(failed)} worker(s) failed (exit codes "
                           f"{failed}); {finished} of {job.n_trials} trials finished; re-run the "
                           "same command to continue")
    return study


def _worker(job: StudyJob, worker: int) -> None:
    """A worker process of :func:`run_job`."""
    die_with_parent()
    work(job, worker)


#: ``prctl`` option: the signal this process gets when its parent ends (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End this process (SIGKILL) when the process that started it ends, however it ends.

    For a :mod:`multiprocessing` child: a worker that outlived a killed parent would keep
    writing the study, unseen, while a re-run retries the trial it computes. On Linux the kernel
    sends the signal (``PR_SET_PDEATHSIG``; the parent is the thread that started the child,
    so start workers from a thread that outlives them); elsewhere a thread waits on the
    parent's sentinel, a pipe that closes when the parent ends. Nothing happens in a process
    that :mod:`multiprocessing` did not start.
    """
    parent = mp.parent_process()
    if parent is None:
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
        if not parent.is_alive():  # it ended before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        parent.join()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def progress_of(study: optuna.Study) -> tuple[int, float | None]:
    """Finished trials and the best first objective value so far."""
    done = job_trials(study, FINISHED)
    values = [t.values[0] for t in done if t.state == TrialState.COMPLETE]
    return len(done), (min(values) if values else None)


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best trial: the only one, or the Pareto-front member with the lowest mean latency."""
    if len(study.directions) == 1:
        return study.best_trial
    return min(study.best_trials, key=lambda t: t.values[0])
