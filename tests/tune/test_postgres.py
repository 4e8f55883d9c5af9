"""Several worker processes share one study in a real PostgreSQL; one is killed mid-trial."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from lapsd.tune.context import TuneSpec
from lapsd.tune.study import FINISHED, StorageSpec, StudyJob, prepare_study, work
from lapsd.tune.suite import Suite

from .conftest import TRACE, WHAT_IF, check_accounted

URL = os.environ.get("LAPSD_TEST_POSTGRES_URL")
TARGET = 12

pytestmark = pytest.mark.skipif(
    not URL, reason="LAPSD_TEST_POSTGRES_URL is not set: run `eval \"$(tests/tune/"
                    "start_postgres.sh)\"` (as root) to start a local PostgreSQL and set it")


def test_workers_complete_study_despite_killed_worker() -> None:
    assert URL is not None
    spec = TuneSpec(traces=(str(TRACE),),
                    suite=Suite(bursts=(10, 30), loads=(0.7,), poisson_n=80, seeds=(1,)),
                    predictions=WHAT_IF, policies=("laps-sd",))
    storage = StorageSpec(journal="unused", url=URL, heartbeat=1, grace=3)
    job = StudyJob(spec, storage, f"lapsd-test-{uuid.uuid4().hex[:10]}", TARGET)
    study = prepare_study(job)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=work, args=(job, w)) for w in range(3)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 120
        # Kill worker 0 once trials are finishing and running (it is then inside a trial).
        while True:
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done >= 2 and running >= 3:
                break
            assert time.monotonic() < deadline, "workers made no progress"
            time.sleep(0.02)
        procs[0].kill()
        for p in procs[1:]:
            p.join(timeout=300)
            assert p.exitcode == 0
        study = optuna.load_study(study_name=job.study, storage=storage.open())
        check_accounted(study, TARGET)
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        assert failed, "the killed worker's trial should have failed by heartbeat and retried"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        optuna.delete_study(study_name=job.study, storage=storage.open())
