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
from pathlib import Path
from typing import Any

import optuna
import pytest
import throwaway_postgres
from optuna.trial import TrialState

from lapsd.tune import study as study_module
from lapsd.tune.context import TuneSpec
from lapsd.tune.study import StorageSpec, StudyJob, prepare_study, work
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


def _worker_hung_in_trial(job: StudyJob, marker: str) -> None:
    """A worker whose first trial samples its parameters, says so in ``marker``, then hangs.

    The test kills it there, so the kill is inside a trial whatever the machine's speed.
    """
    real = study_module.trial_policy

    def hang(*args: Any, **kwargs: Any) -> Any:
        Path(marker).touch()
        time.sleep(600)
        return real(*args, **kwargs)

    study_module.trial_policy = hang
    work(job, 0)


def test_workers_complete_study_despite_killed_worker(postgres_url: str,
                                                      tmp_path: Path) -> None:
    spec = TuneSpec(traces=(str(TRACE),),
                    suite=Suite(bursts=(10, 30), loads=(0.7,), poisson_n=80, seeds=(1,)),
                    predictions=WHAT_IF, policies=("laps-sd",))
    storage = StorageSpec(journal="unused", url=postgres_url, heartbeat=1, grace=3)
    job = StudyJob(spec, storage, f"lapsd-test-{uuid.uuid4().hex[:10]}", TARGET)
    study = prepare_study(job)
    ctx = mp.get_context("spawn")
    marker = tmp_path / "in-trial"
    procs = [ctx.Process(target=_worker_hung_in_trial, args=(job, str(marker)))]
    procs += [ctx.Process(target=work, args=(job, w)) for w in (1, 2)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline, "worker 0 never started a trial"
            assert procs[0].is_alive(), f"worker 0 exited with {procs[0].exitcode}"
            time.sleep(0.02)
        procs[0].kill()
        for p in procs[1:]:
            p.join(timeout=300)
            assert p.exitcode == 0
        study = optuna.load_study(study_name=job.study, storage=storage.open())
        check_accounted(study, TARGET)
        failed = [t for t in study.trials if t.state == TrialState.FAIL and t.params]
        assert failed, "the killed worker's trial should have failed by heartbeat and retried"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        optuna.delete_study(study_name=job.study, storage=storage.open())
