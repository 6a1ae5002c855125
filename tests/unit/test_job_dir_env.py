"""A job runs in its directory with its variables added to the worker's environment;
a directory that is missing at run time fails the attempt, never the worker."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queuectl.api import Queue
from queuectl.models import JobState
from queuectl.store import Store
from tests.helpers import T0

MakeWorker = Callable[..., Any]


def test_a_job_runs_in_its_cwd_with_its_env(store: Store, make_worker: MakeWorker, tmp_path: Path) -> None:
    q = Queue(store)
    job_id = q.enqueue(
        {
            "command": 'pwd; echo "$MODE $QUEUECTL_JOB_ID"; echo "${PATH:+base}"',
            "cwd": str(tmp_path),
            "env": {"MODE": "full", "QUIET": ""},
        },
        now=T0,
    )
    here = os.getcwd()
    make_worker().run_once(now=T0)
    job = q.get(job_id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.stdout == f"{tmp_path}\nfull {job_id}\nbase\n"
    assert os.getcwd() == here  # the worker came back to its own directory
    assert job.to_dict()["env"] == {"MODE": "full", "QUIET": ""}


def test_a_job_runs_where_it_was_enqueued(
    store: Store, make_worker: MakeWorker, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    q = Queue(store)
    job_id = q.enqueue({"command": "pwd"}, now=T0)
    monkeypatch.chdir("/")
    make_worker().run_once(now=T0)
    assert q.get(job_id).stdout == f"{tmp_path}\n"


def test_a_missing_cwd_fails_the_attempt_with_a_clear_error(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    q = Queue(store)
    gone = tmp_path / "gone"
    afile = tmp_path / "file"
    afile.write_text("")
    missing = q.enqueue({"command": "touch ran", "cwd": str(gone), "max_retries": 1}, now=T0)
    not_dir = q.enqueue({"command": "true", "cwd": str(afile), "max_retries": 0}, now=T0)
    w = make_worker()
    w.run_once(now=T0)
    w.run_once(now=T0)
    job = q.get(missing)
    assert (job.state, job.attempts, job.exit_code) == (JobState.FAILED, 1, None)  # retried per backoff
    assert job.error == f"cannot run in {gone}: no such directory"
    job = q.get(not_dir)
    assert (job.state, job.error) == (JobState.DEAD, f"cannot run in {afile}: not a directory")
    gone.mkdir()
    assert w.run_once(now=T0 + 60) is not None  # the worker lives on; the retry runs there
    assert q.get(missing).state is JobState.COMPLETED
    assert (gone / "ran").exists()


def test_a_job_without_cwd_runs_in_the_workers_directory(
    store: Store, make_worker: MakeWorker, tmp_path: Path, monkeypatch: Any
) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": "pwd"}, now=T0)
    # As a job enqueued before jobs had a directory (schema 9): cwd NULL.
    store_conn = getattr(store, "conn", None)
    if store_conn is not None:
        store_conn.execute("UPDATE jobs SET cwd = NULL WHERE id = ?", (job_id,))
    else:
        store._db.run(lambda c: c.execute("UPDATE jobs SET cwd = NULL WHERE id = %s", (job_id,)))  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)
    make_worker().run_once(now=T0)
    assert q.get(job_id).stdout == f"{tmp_path}\n"


def test_the_workers_log_never_holds_a_jobs_env(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    import io

    from queuectl.logs import json_logger

    out = io.StringIO()
    q = Queue(store)
    q.enqueue(
        {"command": 'echo "$TOKEN"; exit 3', "env": {"TOKEN": "s3cr3t-value"}, "max_retries": 0}, now=T0
    )
    q.enqueue({"command": "true", "env": {"TOKEN": "s3cr3t-value"}, "cwd": str(tmp_path / "no")}, now=T0)
    w = make_worker()
    w.log = json_logger(out)
    w.run_once(now=T0)
    w.run_once(now=T0)
    assert "job_finished" in out.getvalue()
    assert "s3cr3t-value" not in out.getvalue()
