"""A worker and job control, on every backend: a cancelled running attempt is
killed (its whole group) at the worker's next heartbeat and never recorded as a
failure; a running attempt's output is saved at heartbeats as it is written."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl.api import Queue
from queuectl.logs import json_logger
from queuectl.models import JobState
from queuectl.store import Store
from queuectl.worker import Worker
from tests.conftest import StoreFactory
from tests.helpers import T0, alive, group_members, wait_until


@pytest.fixture
def worker(store: Store) -> Iterator[tuple[Worker, io.StringIO]]:
    Queue(store).config_set("heartbeat_interval", "0.05")
    buf = io.StringIO()
    w = Worker(store, queue="test", worker_id="w1", log=json_logger(buf))
    w.register()
    try:
        yield w, buf
    finally:
        w.unregister()


def events(buf: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in buf.getvalue().splitlines()]


def test_a_cancelled_running_job_is_killed_and_stays_cancelled(
    stores: StoreFactory, store: Store, worker: tuple[Worker, io.StringIO], tmp_path: Path
) -> None:
    w, buf = worker
    q = Queue(store)
    sh, gc = tmp_path / "sh.pid", tmp_path / "gc.pid"
    command = f"sh -c 'trap \"\" TERM; echo $$ > {gc}; exec sleep 300' & echo $$ > {sh}; sleep 300; wait"
    job_id = q.enqueue({"command": command, "max_retries": 3}, now=T0)
    other = stores.open()

    def operator() -> None:
        wait_until(lambda: sh.exists() and gc.exists(), 10, "the job and its grandchild to start")
        assert other.cancel([job_id], "op@host") == [job_id]

    thread = threading.Thread(target=operator)
    thread.start()
    t = time.monotonic()
    try:
        assert w.run_once(now=T0) is not None
    finally:
        thread.join()
    assert time.monotonic() - t < 10
    pgid, grandchild = int(sh.read_text()), int(gc.read_text())
    wait_until(lambda: not group_members(pgid), 5, "the job's process group to be gone")
    assert not alive(grandchild)
    job = q.get(job_id)
    assert (job.state, job.attempts, job.next_run_at) == (JobState.CANCELLED, 1, None)
    history = store.history(job_id)
    assert [e.to_state for e in history] == ["pending", "processing", "cancelled"]
    assert history[-1].reason == "cancelled by op@host"
    seen = events(buf)
    assert "cancel_seen" in seen and "job_cancelled" in seen
    assert "lease_lost" not in seen and "result_dropped" not in seen and "job_finished" not in seen
    assert w.run_once(now=T0 + 10_000) is None  # never retried


def test_a_job_cancelled_before_it_started_is_not_run(
    store: Store, worker: tuple[Worker, io.StringIO], tmp_path: Path
) -> None:
    w, buf = worker
    q = Queue(store)
    ran = tmp_path / "ran"
    job_id = q.enqueue({"command": f"touch {ran}"}, now=T0)
    job = store.claim("w1", now=T0)
    assert job is not None
    assert store.cancel([job_id], "op@host", now=T0 + 1) == [job_id]
    w._next = job  # claimed with the last finish, as run(chain=True) leaves it
    w._last_beat_ok -= 60  # missed heartbeats: the worker asks the store first
    assert w.run_once(now=T0 + 2) is not None
    assert not ran.exists()
    assert q.get(job_id).state is JobState.CANCELLED
    assert "cancel_seen" in events(buf)


def test_a_running_jobs_output_is_saved_as_it_is_written(
    stores: StoreFactory, store: Store, worker: tuple[Worker, io.StringIO], tmp_path: Path
) -> None:
    w, _ = worker
    q = Queue(stores.open())  # the worker's thread has the fixture's connection
    go = tmp_path / "go"
    job_id = q.enqueue(
        {"command": f"echo first; echo oops >&2; while [ ! -e {go} ]; do sleep 0.02; done; echo second"},
        now=T0,
    )
    thread = threading.Thread(target=w.run_once, kwargs={"now": T0})
    thread.start()
    try:
        wait_until(lambda: q.get(job_id).stdout == "first\n", 10, "the first line to be saved")
        job = q.get(job_id)
        assert (job.state, job.stderr) == (JobState.PROCESSING, "oops\n")
    finally:
        go.touch()
        thread.join()
    job = q.get(job_id)
    assert (job.state, job.stdout, job.stderr) == (JobState.COMPLETED, "first\nsecond\n", "oops\n")


def test_the_saved_output_is_bounded_by_output_limit(
    stores: StoreFactory, store: Store, worker: tuple[Worker, io.StringIO], tmp_path: Path
) -> None:
    w, _ = worker
    q = Queue(stores.open())  # the worker's thread has the fixture's connection
    q.config_set("output_limit", "1")
    w._refresh_config()
    go = tmp_path / "go"
    job_id = q.enqueue({"command": f"seq 1 5000; while [ ! -e {go} ]; do sleep 0.02; done"}, now=T0)
    thread = threading.Thread(target=w.run_once, kwargs={"now": T0})
    thread.start()
    try:
        out = wait_until(lambda: q.get(job_id).stdout, 10, "the output to be saved")
        assert len(out) == 1024 and out.endswith("4999\n5000\n")
    finally:
        go.touch()
        thread.join()
