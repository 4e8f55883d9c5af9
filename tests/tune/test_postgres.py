"""Several worker processes share one study in a real PostgreSQL; one is killed mid-trial.

The server is a throwaway cluster (``throwaway_postgres``: a temporary folder, a free port,
stopped and deleted after the test), or the one ``LAPSD_TEST_POSTGRES_URL`` names.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator

import optuna
import pytest
import throwaway_postgres
from optuna.trial import TrialState

from lapsd.tune.context import TuneSpec
from lapsd.tune.study import FINISHED, StorageSpec, StudyJob, prepare_study, work
from lapsd.tune.suite import Suite

from .conftest import TRACE, WHAT_IF, check_accounted

TARGET = 12


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("LAPSD_TEST_POSTGRES_URL"):
        yield url
        return
    bin_dir = throwaway_postgres.binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries: install the dev extra (its `pgserver` wheel "
                    "ships them), or set LAPSD_TEST_PG_BIN or LAPSD_TEST_POSTGRES_URL")
    with throwaway_postgres.cluster(bin_dir) as url:
        yield url


def test_workers_complete_study_despite_killed_worker(postgres_url: str) -> None:
    spec = TuneSpec(traces=(str(TRACE),),
                    suite=Suite(bursts=(10, 30), loads=(0.7,), poisson_n=80, seeds=(1,)),
                    predictions=WHAT_IF, policies=("laps-sd",))
    storage = StorageSpec(journal="unused", url=postgres_url, heartbeat=1, grace=3)
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
