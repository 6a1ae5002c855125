"""The Store contract (queuectl/store/__init__.py), written once and run against every
backend through the parametrized `store` fixture.  Only protocol methods are used,
and time is always passed explicitly, so both backends are checked at fixed instants.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuectl.api import Queue
from queuectl.errors import DuplicateJob, InvalidInput
from queuectl.models import Event, Job, JobState, NewJob, Outcome, Transition, WorkerInfo
from queuectl.store import Store
from queuectl.store.outcome import Completed, GivenBack, RecoveredDead, RecoveredRetry, finished
from queuectl.trail_files import seal_pending
from tests.conftest import StoreFactory
from tests.helpers import T0, wait_until


def new(
    job_id: str, *, command: str = "true", max_retries: int = 3, priority: int = 0, run_at: float = T0
) -> NewJob:
    return NewJob(
        id=job_id, command=command, max_retries=max_retries, priority=priority, timeout=30.0, run_at=run_at
    )


def claim(store: Store, now: float, worker: str = "w1") -> Job:
    job = store.claim(worker, now=now)
    assert job is not None, f"nothing claimable at {now}"
    return job


def finish(store: Store, job: Job, state: JobState, now: float, **kw: Any) -> bool:
    """Finish `job` with the outcome that sends it to `state` (Completed, Retry, Dead)."""
    result = Outcome(
        kw.get("exit_code", 0 if state is JobState.COMPLETED else 1),
        kw.get("error"),
        kw.get("stdout", "out"),
        kw.get("stderr", "err"),
    )
    return store.finish(
        job.id, job.lease, finished(Transition(state, kw.get("next_run_at")), result), now=now
    )


def states(store: Store) -> dict[str, str]:
    return {j.id: j.state.value for j in store.list_jobs()}


def chain(events: list[Event]) -> list[tuple[str | None, str]]:
    return [(e.from_state, e.to_state) for e in events]


# --- clock ------------------------------------------------------------------------------


def test_now_is_the_current_epoch_time(store: Store) -> None:
    assert abs(store.now() - time.time()) < 60


# --- enqueue / get / history ---------------------------------------------------------


def test_enqueue_inserts_pending_jobs_and_their_first_event(store: Store) -> None:
    ids = store.enqueue([new("a", max_retries=2, priority=5, run_at=T0 + 10), new("b")], now=T0)
    assert ids == ["a", "b"]
    a = store.get("a")
    assert a is not None
    assert a.state is JobState.PENDING
    assert (a.command, a.attempts, a.max_retries, a.priority, a.timeout, a.lease) == (
        "true",
        0,
        2,
        5,
        30.0,
        0,
    )
    assert (a.created_at, a.updated_at, a.run_at, a.next_run_at) == (T0, T0, T0 + 10, T0 + 10)
    assert (a.started_at, a.finished_at, a.worker_id, a.exit_code, a.error) == (None,) * 5
    [event] = store.history("a")
    assert (event.job_id, event.at, event.from_state, event.to_state, event.attempt) == (
        "a",
        T0,
        None,
        "pending",
        0,
    )


def test_enqueue_is_all_or_nothing(store: Store) -> None:
    store.enqueue([new("a")], now=T0)
    with pytest.raises(DuplicateJob) as err:
        store.enqueue([new("b"), new("a"), new("c")], now=T0 + 1)
    assert err.value.job_id == "a"
    with pytest.raises(DuplicateJob):
        store.enqueue([new("x"), new("x")], now=T0 + 1)
    assert states(store) == {"a": "pending"}
    assert [e.to_state for e in store.history("b")] == []
    assert store.counts()["pending"] == 1


def test_get_and_history_of_an_unknown_job(store: Store) -> None:
    assert store.get("nope") is None
    assert store.history("nope") == []


def test_ids_are_data_not_sql(store: Store) -> None:
    odd = ["x'); DROP TABLE jobs;--", 'a"b', "ünïcødé ✓", "%_*"]
    store.enqueue([new(i) for i in odd], now=T0)
    assert sorted(states(store)) == sorted(odd)
    for i in odd:
        assert store.get(i) is not None
    assert store.get("%") is None


def test_a_reopened_store_has_everything(stores: StoreFactory) -> None:
    """Enqueue, stop, reopen: nothing is lost."""
    first = stores.open()
    first.enqueue([new(f"j{i:03d}", priority=i % 3) for i in range(50)], now=T0)
    job = claim(first, T0 + 1)
    finish(first, job, JobState.COMPLETED, T0 + 2)
    first.config_set({"max_retries": "7"})
    before = [(j, first.history(j.id)) for j in first.list_jobs()]
    first.close()
    second = stores.open()
    assert [(j, second.history(j.id)) for j in second.list_jobs()] == before
    assert second.config_items() == {"max_retries": "7"}


# --- list / counts --------------------------------------------------------------------


def test_list_jobs_in_creation_order_by_state_and_limit(store: Store) -> None:
    store.enqueue([new("c"), new("a")], now=T0 + 1)
    store.enqueue([new("b")], now=T0)
    store.enqueue([new("d")], now=T0 + 2)
    assert [j.id for j in store.list_jobs()] == ["b", "a", "c", "d"]
    assert [j.id for j in store.list_jobs(limit=2)] == ["b", "a"]
    assert store.list_jobs(limit=0) == []
    job = claim(store, T0 + 3)
    assert [j.id for j in store.list_jobs(JobState.PROCESSING)] == [job.id]
    assert [j.id for j in store.list_jobs(JobState.PENDING)] == [
        i for i in ("b", "a", "c", "d") if i != job.id
    ]
    assert store.list_jobs(JobState.DEAD) == []


def test_counts_has_every_state(store: Store) -> None:
    assert store.counts() == {s.value: 0 for s in JobState}
    store.enqueue([new("a"), new("b"), new("c")], now=T0)
    finish(store, claim(store, T0), JobState.COMPLETED, T0)
    claim(store, T0)
    zero = {s.value: 0 for s in JobState}
    assert store.counts() == {**zero, "pending": 1, "processing": 1, "completed": 1}


# --- claim ----------------------------------------------------------------------------


def test_claim_takes_a_due_job_and_counts_the_attempt(store: Store) -> None:
    assert store.claim("w1", now=T0) is None
    store.enqueue([new("a", run_at=T0 + 5)], now=T0)
    assert store.claim("w1", now=T0 + 4.999) is None
    job = claim(store, T0 + 5, worker="w1")
    assert job.id == "a"
    assert job.state is JobState.PROCESSING
    assert (job.attempts, job.lease, job.worker_id, job.started_at) == (1, 1, "w1", T0 + 5)
    assert store.get("a") == job
    assert store.claim("w2", now=T0 + 100) is None  # a processing job is never claimed twice
    last = store.history("a")[-1]
    assert (last.from_state, last.to_state, last.attempt, last.worker_id, last.at) == (
        "pending",
        "processing",
        1,
        "w1",
        T0 + 5,
    )


def test_claim_order_is_priority_then_due_time_then_id(store: Store) -> None:
    store.enqueue(
        [
            new("low-early", priority=0, run_at=T0 - 10),
            new("high-late", priority=5, run_at=T0 - 1),
            new("high-early", priority=5, run_at=T0 - 2),
            new("b-low", priority=0, run_at=T0 - 5),
            new("a-low", priority=0, run_at=T0 - 5),
            new("negative", priority=-1, run_at=T0 - 100),
            new("future", priority=100, run_at=T0 + 60),
        ],
        now=T0 - 100,
    )
    order = [claim(store, T0).id for _ in range(6)]
    assert order == ["high-early", "high-late", "low-early", "a-low", "b-low", "negative"]
    assert store.claim("w1", now=T0) is None
    assert claim(store, T0 + 60).id == "future"


def test_no_two_claimers_get_the_same_job(stores: StoreFactory) -> None:
    a, b = stores.open(), stores.open()
    a.enqueue([new(f"j{i:02d}") for i in range(40)], now=T0)
    got: list[tuple[str, int]] = []
    for i in range(40):
        job = claim(a if i % 2 else b, T0, worker=f"w{i % 2}")
        got.append((job.id, job.lease))
    assert sorted(got) == [(f"j{i:02d}", 1) for i in range(40)]
    assert a.claim("w0", now=T0) is None
    assert b.claim("w1", now=T0) is None


CLAIMER = """
import os, sys, time
from queuectl.store import open_store
url, me, ready, go = sys.argv[1:5]
store = open_store(url)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
taken = []
while (job := store.claim(me, now=float(sys.argv[5]))) is not None:
    taken.append(job.id)
store.close()
print("\\n".join(taken))
"""


def test_claimers_in_four_processes_never_share_a_job(stores: StoreFactory, tmp_path: Path) -> None:
    """One connection per process, as workers run: four processes claim at once (a
    start line holds them back until all are connected); every job goes to one."""
    first = stores.open()
    first.enqueue([new(f"j{i:03d}") for i in range(300)], now=T0)
    go = tmp_path / "go"
    procs = []
    for n in range(4):
        args = [stores.url, f"w{n}", str(tmp_path / f"ready{n}"), str(go), repr(T0)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        wait_until(
            lambda: all((tmp_path / f"ready{n}").exists() for n in range(4)), 60, "the claimers to connect"
        )
    finally:
        go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    taken = [job_id for out, _ in outputs for job_id in out.split()]
    assert sorted(taken) == [f"j{i:03d}" for i in range(300)]
    assert first.counts()["processing"] == 300
    owners = {j.id: j.worker_id for j in first.processing()}
    for n, (out, _) in enumerate(outputs):
        assert all(owners[job_id] == f"w{n}" for job_id in out.split())
    assert {j.lease for j in first.processing()} == {1}


# --- finish and fencing -----------------------------------------------------------------


def test_finish_records_the_outcome(store: Store) -> None:
    store.enqueue([new("a")], now=T0)
    job = claim(store, T0 + 1)
    assert finish(store, job, JobState.COMPLETED, T0 + 2, stdout="hello\n", stderr="")
    done = store.get("a")
    assert done is not None
    assert done.state is JobState.COMPLETED
    assert (done.exit_code, done.error, done.stdout, done.stderr) == (0, None, "hello\n", "")
    assert (done.started_at, done.finished_at, done.updated_at, done.worker_id) == (
        T0 + 1,
        T0 + 2,
        T0 + 2,
        "w1",
    )
    last = store.history("a")[-1]
    assert (last.from_state, last.to_state, last.attempt, last.exit_code, last.at) == (
        "processing",
        "completed",
        1,
        0,
        T0 + 2,
    )


def test_a_failed_job_waits_for_its_retry(store: Store) -> None:
    store.enqueue([new("a")], now=T0)
    job = claim(store, T0)
    assert finish(
        store, job, JobState.FAILED, T0 + 1, next_run_at=T0 + 3, exit_code=2, error="exited with code 2"
    )
    failed = store.get("a")
    assert failed is not None
    assert (failed.state, failed.next_run_at, failed.exit_code, failed.error) == (
        JobState.FAILED,
        T0 + 3,
        2,
        "exited with code 2",
    )
    assert store.next_due() == T0 + 3
    assert store.claim("w1", now=T0 + 2.999) is None
    again = claim(store, T0 + 3)
    assert (again.id, again.attempts, again.lease) == ("a", 2, 2)


def test_finish_with_a_stale_lease_changes_nothing(store: Store) -> None:
    store.enqueue([new("a")], now=T0)
    old = claim(store, T0)
    # The monitor takes the job back; it is claimed again with a new lease.
    assert store.recover("a", old.lease, RecoveredRetry("heartbeat_lost", "worker gone", T0 + 1), now=T0 + 1)
    new_attempt = claim(store, T0 + 1, worker="w2")
    assert new_attempt.lease == old.lease + 1
    before, history = store.get("a"), store.history("a")
    for state in (JobState.COMPLETED, JobState.FAILED, JobState.DEAD):
        assert not finish(store, old, state, T0 + 5, next_run_at=T0 + 9)
    for outcome in (
        RecoveredRetry("timeout", "late", T0 + 9),
        RecoveredDead("timeout", "late"),
        GivenBack("timeout", "late", T0 + 9),
    ):
        assert not store.recover("a", old.lease, outcome, now=T0 + 5)
    assert store.get("a") == before
    assert store.history("a") == history
    # The current lease still holds.
    assert finish(store, new_attempt, JobState.COMPLETED, T0 + 6)
    # And a finished job cannot be finished again, even with its own lease.
    assert not finish(store, new_attempt, JobState.FAILED, T0 + 7, next_run_at=T0 + 8)
    assert store.get("a").state is JobState.COMPLETED  # type: ignore[union-attr]


def test_finish_of_an_unknown_job_is_false(store: Store) -> None:
    assert not store.finish("nope", 1, Completed("", ""), now=T0)


def test_bulk_enqueue_writes_one_first_event_per_job(store: Store) -> None:
    ids = store.enqueue([new(f"b{i:04d}") for i in range(500)], now=T0)
    for job_id in (ids[0], ids[250], ids[-1]):
        assert [(e.from_state, e.to_state, e.at, e.attempt) for e in store.history(job_id)] == [
            (None, "pending", T0, 0)
        ]
    # A refused bulk insert (a repeated id) writes no job and no event.
    with pytest.raises(DuplicateJob):
        store.enqueue([new("c1"), new("c2"), new("c1")], now=T0 + 1)
    assert store.history("c1") == [] and store.history("c2") == []


def test_a_job_due_on_arrival_needs_no_wake_up(store: Store) -> None:
    # next_due may leave out jobs due already (a claim finds them); never a later one.
    store.enqueue([new("now"), new("later", run_at=T0 + 40)], now=T0)
    assert store.next_due() in (T0, T0 + 40)
    assert claim(store, T0).id == "now"
    assert store.next_due() == T0 + 40


# --- next_due ----------------------------------------------------------------------------


def test_next_due_is_the_earliest_runnable_time(store: Store) -> None:
    assert store.next_due() is None
    store.enqueue([new("a", run_at=T0 + 50), new("b", run_at=T0 + 20), new("c", run_at=T0 + 30)], now=T0)
    assert store.next_due() == T0 + 20
    job = claim(store, T0 + 25)  # b: processing jobs are not due
    assert job.id == "b"
    assert store.next_due() == T0 + 30
    finish(store, job, JobState.FAILED, T0 + 26, next_run_at=T0 + 28)
    assert store.next_due() == T0 + 28


# --- dead-letter queue ------------------------------------------------------------------


def _dead(store: Store, job_id: str, now: float) -> Job:
    store.enqueue([new(job_id, max_retries=0)], now=now)
    job = store.claim("w1", now=now)
    while job is not None and job.id != job_id:  # pragma: no cover - only job_id is due
        job = store.claim("w1", now=now)
    assert job is not None
    assert finish(store, job, JobState.DEAD, now, exit_code=1, error="exited with code 1")
    return job


def test_dlq_retry_moves_dead_jobs_back_with_attempts_reset(store: Store) -> None:
    old = _dead(store, "d1", T0)
    store.enqueue([new("p")], now=T0)
    assert store.dlq_retry(["d1", "p", "nope"], now=T0 + 10) == ["d1"]
    job = store.get("d1")
    assert job is not None
    assert (job.state, job.attempts, job.next_run_at, job.updated_at) == (
        JobState.PENDING,
        0,
        T0 + 10,
        T0 + 10,
    )
    last = store.history("d1")[-1]
    assert (last.from_state, last.to_state, last.attempt, last.at) == ("dead", "pending", 0, T0 + 10)
    assert store.get("p").state is JobState.PENDING  # type: ignore[union-attr]
    # The retried job runs again with a fresh attempt count, and a new lease.
    again = claim(store, T0 + 10)
    assert again.id in ("d1", "p")
    again = again if again.id == "d1" else claim(store, T0 + 10)
    assert (again.attempts, again.lease > old.lease) == (1, True)
    assert store.dlq_retry(["d1"], now=T0 + 11) == []


def test_dlq_retry_all(store: Store) -> None:
    assert store.dlq_retry(None, now=T0) == []
    for i in range(3):
        _dead(store, f"d{i}", T0 + i)
    store.enqueue([new("p")], now=T0)
    assert sorted(store.dlq_retry(None, now=T0 + 10)) == ["d0", "d1", "d2"]
    assert store.counts()["dead"] == 0
    assert store.counts()["pending"] == 4
    assert store.list_jobs(JobState.DEAD) == []


# --- purge ----------------------------------------------------------------------------------


def test_purge_deletes_finished_jobs_and_their_history(store: Store) -> None:
    store.enqueue([new("old", priority=2), new("new", priority=1), new("keep")], now=T0)
    for now in (T0 + 1, T0 + 5):  # "old" finishes at T0 + 1, "new" at T0 + 5
        finish(store, claim(store, now), JobState.COMPLETED, now)
    _dead(store, "dead", T0 + 2)
    seal_pending(store)  # a purge deletes only the history the audit trail has sealed
    assert store.purge([JobState.COMPLETED], before=T0 + 3) == 1
    assert sorted(states(store)) == ["dead", "keep", "new"]
    assert store.history("old") == []
    assert store.purge([JobState.COMPLETED, JobState.DEAD]) == 2
    assert states(store) == {"keep": "pending"}
    assert len(store.history("keep")) == 1


def test_purge_with_a_limit_deletes_the_earliest_created_first(store: Store) -> None:
    # The recovery pass's retention batches: at most `limit` jobs, oldest first, and
    # only those last updated before the cutoff.
    store.enqueue([new(f"j{i}", run_at=T0) for i in range(5)], now=T0)
    for i in range(5):
        finish(store, claim(store, T0 + i), JobState.COMPLETED, T0 + 10 + i)
    seal_pending(store)  # a purge deletes only the history the audit trail has sealed
    assert store.purgeable([JobState.COMPLETED], before=T0 + 13) == 3
    assert store.purge([JobState.COMPLETED], before=T0 + 13, limit=2) == 2
    assert sorted(states(store)) == ["j2", "j3", "j4"]
    assert store.history("j0") == [] and store.history("j2") != []
    assert store.purge([JobState.COMPLETED], before=T0 + 13, limit=2) == 1  # j2; j3 is too new
    assert store.purge([JobState.COMPLETED], before=T0 + 13, limit=2) == 0
    assert sorted(states(store)) == ["j3", "j4"]
    assert store.counts().get("completed") == 2


@pytest.mark.parametrize("bad", [["pending"], ["processing"], ["failed"], []])
def test_purge_refuses_unfinished_states(store: Store, bad: list[str]) -> None:
    # Refused before the store is asked (rules.check_purge): a store trusts its input.
    store.enqueue([new("a")], now=T0)
    with pytest.raises(InvalidInput, match="only completed, dead and cancelled jobs can be purged"):
        Queue(store).purge(bad)
    assert states(store) == {"a": "pending"}


# --- recovery ------------------------------------------------------------------------------


def test_processing_lists_the_running_jobs(store: Store) -> None:
    assert store.processing() == []
    store.enqueue([new("a"), new("b"), new("c")], now=T0)
    first, second = claim(store, T0, "w1"), claim(store, T0, "w2")
    assert sorted(j.id for j in store.processing()) == sorted([first.id, second.id])
    assert all(j.state is JobState.PROCESSING for j in store.processing())


def test_recover_ends_the_attempt_with_a_reason(store: Store) -> None:
    store.enqueue([new("a"), new("b", max_retries=0)], now=T0)
    a, b = claim(store, T0), claim(store, T0)
    assert store.recover(a.id, a.lease, RecoveredRetry("heartbeat_lost", "worker gone", T0 + 4), now=T0 + 2)
    assert store.recover(b.id, b.lease, RecoveredDead("timeout", "too slow"), now=T0 + 2)
    got = store.get(a.id)
    assert got is not None
    assert (got.state, got.next_run_at, got.error, got.updated_at) == (
        JobState.FAILED,
        T0 + 4,
        "worker gone",
        T0 + 2,
    )
    last = store.history(a.id)[-1]
    assert (last.from_state, last.to_state, last.reason, last.error, last.at) == (
        "processing",
        "failed",
        "heartbeat_lost",
        "worker gone",
        T0 + 2,
    )
    assert store.get(b.id).state is JobState.DEAD  # type: ignore[union-attr]
    assert store.history(b.id)[-1].reason == "timeout"
    # A second recovery of the same attempt (another monitor) changes nothing.
    assert not store.recover(a.id, a.lease, RecoveredRetry("heartbeat_lost", "again", T0 + 9), now=T0 + 3)
    assert store.get(a.id) == got


# --- workers -------------------------------------------------------------------------------


def worker(wid: str, heartbeat_at: float = T0, pid: int = 4242) -> WorkerInfo:
    return WorkerInfo(id=wid, host="host-a", pid=pid, proc_start=99, started_at=T0, heartbeat_at=heartbeat_at)


def test_worker_rows_and_their_jobs(store: Store) -> None:
    assert store.workers() == []
    store.register_worker(worker("w1"))
    store.register_worker(worker("w2", pid=7))
    store.enqueue([new("a")], now=T0)
    claim(store, T0, "w2")
    rows = {w.id: w for w in store.workers()}
    assert rows["w1"] == worker("w1")
    assert rows["w2"].job_id == "a"
    assert (rows["w2"].host, rows["w2"].pid, rows["w2"].proc_start) == ("host-a", 7, 99)
    store.register_worker(worker("w1", heartbeat_at=T0 + 5, pid=8))  # insert or replace
    assert {w.id: w.pid for w in store.workers()} == {"w1": 8, "w2": 7}
    store.unregister_worker("w1")
    store.unregister_worker("never-registered")
    assert [w.id for w in store.workers()] == ["w2"]


def test_heartbeat_tells_whether_the_worker_and_its_lease_hold(store: Store) -> None:
    assert not store.heartbeat("w1", None, None, now=T0)
    store.register_worker(worker("w1"))
    assert store.heartbeat("w1", None, None, now=T0 + 1)
    assert store.workers()[0].heartbeat_at == T0 + 1
    store.enqueue([new("a")], now=T0)
    job = claim(store, T0 + 1)
    assert store.heartbeat("w1", "a", job.lease, now=T0 + 2)
    assert not store.heartbeat("w1", "a", job.lease + 1, now=T0 + 3)
    assert store.recover("a", job.lease, RecoveredRetry("heartbeat_lost", "gone", T0 + 10), now=T0 + 4)
    assert not store.heartbeat("w1", "a", job.lease, now=T0 + 5)


def test_remove_worker_is_a_compare_and_set_on_the_heartbeat(store: Store) -> None:
    store.register_worker(worker("w1", heartbeat_at=T0))
    assert store.heartbeat("w1", None, None, now=T0 + 1)
    assert not store.remove_worker("w1", T0)  # it beat since the monitor looked
    assert [w.id for w in store.workers()] == ["w1"]
    assert store.remove_worker("w1", T0 + 1)
    assert store.workers() == []
    assert not store.remove_worker("w1", T0 + 1)


# --- the monitor lease ---------------------------------------------------------------


def test_lease_has_one_holder_at_a_time_until_it_expires(store: Store) -> None:
    assert store.lease_info("monitor") is None
    assert store.acquire_lease("monitor", "h1", "monitor", 10, now=T0)
    info = store.lease_info("monitor")
    assert info is not None
    assert (info.name, info.holder, info.kind, info.acquired_at, info.expires_at) == (
        "monitor",
        "h1",
        "monitor",
        T0,
        T0 + 10,
    )
    assert (info.last_pass_at, info.last_pass_by, info.last_pass_kind, info.last_monitor_pass_at) == (
        None,
    ) * 4
    assert not store.acquire_lease("monitor", "h2", "worker", 10, now=T0 + 5)
    assert store.acquire_lease("monitor", "h1", "monitor", 10, now=T0 + 5)  # renewed
    assert store.lease_info("monitor").expires_at == T0 + 15  # type: ignore[union-attr]
    assert not store.acquire_lease("monitor", "h2", "worker", 10, now=T0 + 14.9)
    assert store.acquire_lease("monitor", "h2", "worker", 10, now=T0 + 15)  # expired: taken over
    assert store.lease_info("monitor").holder == "h2"  # type: ignore[union-attr]
    assert store.lease_info("other") is None


def test_release_lease_records_the_pass(store: Store) -> None:
    assert not store.release_lease("monitor", "h1", True, now=T0)
    assert store.acquire_lease("monitor", "h1", "monitor", 10, now=T0)
    assert not store.release_lease("monitor", "h2", True, now=T0 + 1)  # not the holder
    assert store.release_lease("monitor", "h1", True, now=T0 + 2)
    info = store.lease_info("monitor")
    assert info is not None
    assert (info.last_pass_at, info.last_pass_by, info.last_pass_kind, info.last_monitor_pass_at) == (
        T0 + 2,
        "h1",
        "monitor",
        T0 + 2,
    )
    # Released: anyone may take it at once.
    assert store.acquire_lease("monitor", "w9", "worker", 10, now=T0 + 3)
    assert store.release_lease("monitor", "w9", True, now=T0 + 4)
    info = store.lease_info("monitor")
    assert info is not None
    assert (info.last_pass_at, info.last_pass_by, info.last_pass_kind, info.last_monitor_pass_at) == (
        T0 + 4,
        "w9",
        "worker",
        T0 + 2,
    )
    # A release without a pass leaves the record of the last pass alone.
    assert store.acquire_lease("monitor", "h1", "monitor", 10, now=T0 + 5)
    assert store.release_lease("monitor", "h1", False, now=T0 + 6)
    assert store.lease_info("monitor").last_pass_at == T0 + 4  # type: ignore[union-attr]


# --- config -------------------------------------------------------------------------------


def test_config_items_round_trip(store: Store) -> None:
    assert store.config_items() == {}
    store.config_set({"max_retries": "5", "backoff_base": "3"})
    store.config_set({"max_retries": "6"})
    assert store.config_items() == {"max_retries": "6", "backoff_base": "3"}


# --- the history ------------------------------------------------------------------------


def test_history_is_append_only_and_records_every_state_change(store: Store) -> None:
    """A job's whole life: every state change adds exactly one event, earlier events
    never change, and each event starts where the previous one ended."""
    seen: list[Event] = []

    def step(action: Callable[[], object], now: float) -> None:
        before = store.get("a")
        action()
        after = store.get("a")
        assert after is not None
        events = store.history("a")
        assert events[: len(seen)] == seen, "an earlier event changed"
        changed = before is None or before.state is not after.state
        assert len(events) == len(seen) + (1 if changed else 0)
        if changed:
            event = events[-1]
            assert event.to_state == after.state.value
            assert event.from_state == (before.state.value if before else None)
            assert event.attempt == after.attempts
            assert event.at == now
        seen[:] = events

    store.enqueue([new("a", max_retries=1)], now=T0)
    seen[:] = store.history("a")
    lease = {}
    step(lambda: lease.update(j=claim(store, T0 + 1)), T0 + 1)
    step(lambda: finish(store, lease["j"], JobState.FAILED, T0 + 2, next_run_at=T0 + 4), T0 + 2)
    step(lambda: finish(store, lease["j"], JobState.COMPLETED, T0 + 2.5), T0 + 2.5)  # stale: no event
    step(lambda: lease.update(j=claim(store, T0 + 4)), T0 + 4)
    step(lambda: store.heartbeat("w1", "a", lease["j"].lease, now=T0 + 4.5), T0 + 4.5)  # no state change
    step(lambda: finish(store, lease["j"], JobState.DEAD, T0 + 5), T0 + 5)
    step(lambda: store.dlq_retry(["a"], now=T0 + 6), T0 + 6)
    step(lambda: lease.update(j=claim(store, T0 + 7)), T0 + 7)
    step(
        lambda: store.recover("a", lease["j"].lease, RecoveredRetry("manual", "op", T0 + 8), now=T0 + 7.5),
        T0 + 7.5,
    )
    step(lambda: lease.update(j=claim(store, T0 + 8)), T0 + 8)
    step(lambda: finish(store, lease["j"], JobState.COMPLETED, T0 + 9), T0 + 9)
    assert chain(seen) == [
        (None, "pending"),
        ("pending", "processing"),
        ("processing", "failed"),
        ("failed", "processing"),
        ("processing", "dead"),
        ("dead", "pending"),
        ("pending", "processing"),
        ("processing", "failed"),
        ("failed", "processing"),
        ("processing", "completed"),
    ]
    assert [e.attempt for e in seen] == [0, 1, 1, 2, 2, 0, 1, 1, 2, 2]
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    assert seen[-1].worker_id == "w1"


# --- waiting -------------------------------------------------------------------------------


def test_wait_for_change_times_out_when_nothing_happens(store: Store) -> None:
    store.wait_for_change(0.01)  # start watching (a first call may return at once)
    t = time.monotonic()
    store.wait_for_change(0.3)
    assert 0.25 <= time.monotonic() - t < 3


def test_wait_for_change_wakes_on_the_wakeup_fd(store: Store) -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        t = time.monotonic()
        store.wait_for_change(10, wakeup_fd=r)
        assert time.monotonic() - t < 5
    finally:
        os.close(r)
        os.close(w)


def test_wait_for_change_wakes_when_another_connection_enqueues(stores: StoreFactory) -> None:
    waiter, other = stores.open(), stores.open()
    waiter.wait_for_change(0.01)  # start watching
    timer = threading.Timer(0.2, lambda: other.enqueue([new("a")], now=T0))
    t = time.monotonic()
    timer.start()
    try:
        waiter.wait_for_change(20)
    finally:
        timer.join()
    assert time.monotonic() - t < 10
    assert waiter.get("a") is not None


# --- finish and claim in one transaction --------------------------------------------------


def test_finish_and_claim_finishes_then_takes_the_next_job(store: Store) -> None:
    store.enqueue([new("a"), new("b")], now=T0)
    a = store.claim("w1", now=T0)
    assert a is not None and a.id == "a"
    held, nxt = store.finish_and_claim("a", a.lease, Completed("out", ""), "w1", now=T0 + 1)
    assert held and nxt is not None and nxt.id == "b" and nxt.state is JobState.PROCESSING
    assert nxt.worker_id == "w1" and nxt.attempts == 1 and nxt.lease == 1
    done = store.get("a")
    assert done is not None and done.state is JobState.COMPLETED and done.stdout == "out"
    assert [e.to_state for e in store.history("a")] == ["pending", "processing", "completed"]
    held, nxt = store.finish_and_claim("b", 1, Completed("", ""), "w1", now=T0 + 2)
    assert held and nxt is None


def test_finish_and_claim_is_fenced_and_still_claims(store: Store) -> None:
    store.enqueue([new("a"), new("b")], now=T0)
    a = store.claim("w1", now=T0)
    assert a is not None
    assert store.recover("a", a.lease, RecoveredRetry("heartbeat_lost", "gone", T0 + 100), now=T0 + 1)
    held, nxt = store.finish_and_claim("a", a.lease, Completed("", ""), "w1", now=T0 + 2)
    assert not held and nxt is not None and nxt.id == "b"
    after = store.get("a")
    assert after is not None and after.state is JobState.FAILED and after.exit_code is None
