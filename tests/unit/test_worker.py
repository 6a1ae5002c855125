"""Worker.run_once at fixed instants, on every backend: real /bin/sh jobs, retries
with backoff read from next_run_at, the dead-letter queue, order, timeouts, fencing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queuectl.api import Queue
from queuectl.models import JobState, NewJob, Outcome, iso
from queuectl.store import Store
from queuectl.store.outcome import RecoveredRetry
from tests.conftest import StoreFactory
from tests.helpers import T0, alive, group_members, read_lines, wait_until

MakeWorker = Callable[..., Any]


def test_a_job_completes(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": 'echo "hi from $QUEUECTL_JOB_ID"; echo warn >&2'}, now=T0)
    w = make_worker()
    ran = w.run_once(now=T0 + 1)
    assert ran is not None and ran.id == job_id
    job = q.get(job_id)
    assert job.state is JobState.COMPLETED
    assert (job.attempts, job.exit_code, job.error) == (1, 0, None)
    assert (job.stdout, job.stderr) == (f"hi from {job_id}\n", "warn\n")
    assert (job.started_at, job.finished_at, job.worker_id) == (T0 + 1, T0 + 1, "w1")
    assert [(e.from_state, e.to_state) for e in store.history(job_id)] == [
        (None, "pending"),
        ("pending", "processing"),
        ("processing", "completed"),
    ]
    assert w.run_once(now=T0 + 2) is None


def test_the_job_sees_its_id_lease_and_attempt(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": 'echo "$QUEUECTL_JOB_ID $QUEUECTL_LEASE $QUEUECTL_ATTEMPT"'}, now=T0)
    make_worker().run_once(now=T0)
    assert q.get(job_id).stdout == f"{job_id} 1 1\n"


def test_a_failing_job_backs_off_2_4_8_seconds_then_is_dead(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": "echo try; exit 3", "max_retries": 3}, now=T0)
    w = make_worker()
    now = T0
    for attempt, delay in ((1, 2.0), (2, 4.0), (3, 8.0)):
        assert w.run_once(now=now) is not None
        job = q.get(job_id)
        assert job.state is JobState.FAILED
        assert (job.attempts, job.exit_code, job.error) == (attempt, 3, "exited with code 3")
        assert job.next_run_at == now + delay
        assert job.to_dict()["next_run_at"] == iso(now + delay)
        assert w.run_once(now=now + delay - 0.001) is None  # not due yet
        now += delay
    assert w.run_once(now=now) is not None  # attempt 4 = max_retries + 1
    job = q.get(job_id)
    assert job.state is JobState.DEAD
    assert job.attempts == 4
    assert job.to_dict()["next_run_at"] is None
    assert [j.id for j in q.dlq_list()] == [job_id]
    assert w.run_once(now=now + 10_000) is None
    events = store.history(job_id)
    assert [(e.to_state, e.attempt, e.at) for e in events if e.from_state == "processing"] == [
        ("failed", 1, T0),
        ("failed", 2, T0 + 2),
        ("failed", 3, T0 + 6),
        ("dead", 4, T0 + 14),
    ]


def test_backoff_follows_the_config(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    q.config_set("backoff-base", "3")
    q.config_set("backoff_max", "5")
    job_id = q.enqueue({"command": "false", "max_retries": 5}, now=T0)
    w = make_worker()
    w.run_once(now=T0)
    assert q.get(job_id).next_run_at == T0 + 3
    w.run_once(now=T0 + 3)
    assert q.get(job_id).next_run_at == T0 + 3 + 5  # 9 s, capped at 5


def test_max_retries_zero_means_one_attempt(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": "false", "max_retries": 0}, now=T0)
    make_worker().run_once(now=T0)
    assert (q.get(job_id).state, q.get(job_id).attempts) == (JobState.DEAD, 1)


def test_dlq_retry_brings_a_dead_job_back(store: Store, make_worker: MakeWorker, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    q = Queue(store)
    job_id = q.enqueue({"command": f"test -e {flag}", "max_retries": 1}, now=T0)
    w = make_worker()
    w.run_once(now=T0)
    w.run_once(now=T0 + 2)
    assert q.get(job_id).state is JobState.DEAD
    flag.touch()  # the operator fixed the cause
    assert q.dlq_retry(job_id) == job_id
    job = q.get(job_id)
    assert (job.state, job.attempts) == (JobState.PENDING, 0)
    assert store.history(job_id)[-1].from_state == "dead"
    assert w.run_once(now=store.now() + 1) is not None
    job = q.get(job_id)
    assert (job.state, job.attempts, job.lease) == (JobState.COMPLETED, 1, 3)


def test_higher_priority_runs_first(store: Store, make_worker: MakeWorker, tmp_path: Path) -> None:
    out = tmp_path / "order"
    q = Queue(store)
    for name, prio in (("low", 0), ("mid", 5), ("high", 10), ("neg", -3), ("mid2", 5)):
        q.enqueue({"id": name, "command": f"echo {name} >> {out}", "priority": prio}, now=T0)
    w = make_worker()
    while w.run_once(now=T0 + 1):
        pass
    assert read_lines(out) == ["high", "mid", "mid2", "low", "neg"]


def test_run_at_and_delay_hold_jobs_back(store: Store, make_worker: MakeWorker, tmp_path: Path) -> None:
    out = tmp_path / "order"
    q = Queue(store)
    q.enqueue({"id": "later", "command": f"echo later >> {out}", "delay": 10}, now=T0)
    q.enqueue({"id": "at", "command": f"echo at >> {out}", "run_at": iso(T0 + 5)}, now=T0)
    q.enqueue({"id": "now", "command": f"echo now >> {out}"}, now=T0)
    q.enqueue({"id": "urgent-later", "command": f"echo urgent >> {out}", "delay": 7, "priority": 9}, now=T0)
    w = make_worker()
    steps = [(T0, "now"), (T0 + 4.9, None), (T0 + 5, "at"), (T0 + 6, None), (T0 + 10, "urgent-later")]
    steps += [(T0 + 10, "later"), (T0 + 10, None)]
    for now, expected in steps:
        ran = w.run_once(now=now)
        assert (ran.id if ran else None) == expected, now - T0
    assert read_lines(out) == ["now", "at", "urgent", "later"]


def test_a_delayed_job_with_a_retry_due_keeps_fifo_of_due_times(
    store: Store, make_worker: MakeWorker
) -> None:
    """A retry competes by its due time: an older due retry runs before a newer job."""
    q = Queue(store)
    q.enqueue({"id": "flaky", "command": "false"}, now=T0)
    w = make_worker()
    w.run_once(now=T0)  # flaky: retry due at T0 + 2
    q.enqueue({"id": "fresh", "command": "true"}, now=T0 + 3)
    assert w.run_once(now=T0 + 3).id == "flaky"  # type: ignore[union-attr]
    assert w.run_once(now=T0 + 3).id == "fresh"  # type: ignore[union-attr]


def test_command_not_found_fails_with_127(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": "no-such-command-queuectl", "max_retries": 0}, now=T0)
    make_worker().run_once(now=T0)
    job = q.get(job_id)
    assert (job.state, job.exit_code) == (JobState.DEAD, 127)
    assert job.error is not None and "command not found" in job.error


def test_output_is_cut_to_the_configured_tail(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    q.config_set("output_limit", "1")
    job_id = q.enqueue({"command": "seq 1 5000"}, now=T0)
    make_worker().run_once(now=T0)
    out = q.get(job_id).stdout or ""
    assert len(out) == 1024
    assert out.endswith("4999\n5000\n")


def test_a_timeout_kills_the_process_group_and_counts_as_a_failure(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    q = Queue(store)
    q.config_set("kill_grace", "0.2")
    sh, gc = tmp_path / "sh.pid", tmp_path / "gc.pid"
    command = f"echo $$ > {sh}; sh -c 'trap \"\" TERM; echo $$ > {gc}; exec sleep 60' & sleep 60; wait"
    job_id = q.enqueue({"command": command, "timeout": 0.5, "max_retries": 1}, now=T0)
    t = time.monotonic()
    make_worker().run_once(now=T0)
    assert time.monotonic() - t < 10
    job = q.get(job_id)
    assert job.state is JobState.FAILED
    assert job.error == "timeout after 0.5s"
    assert job.next_run_at == T0 + 2
    pgid, grandchild = int(sh.read_text()), int(gc.read_text())
    wait_until(lambda: not group_members(pgid), 5, "the job's process group to be gone")
    assert not alive(grandchild)


def test_a_result_with_a_stale_lease_is_dropped(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    job_id = q.enqueue({"command": "true"}, now=T0)
    old = store.claim("w1", now=T0)
    assert old is not None
    # The monitor recovers the attempt; another worker claims the job again.
    assert store.recover(job_id, old.lease, RecoveredRetry("heartbeat_lost", "gone", T0 + 2), now=T0 + 1)
    w1, w2 = make_worker("w1"), make_worker("w2")
    current = store.claim("w2", now=T0 + 2)
    assert current is not None and current.lease == old.lease + 1
    before, history = q.get(job_id), store.history(job_id)
    assert not w1.record(old, Outcome(exit_code=0, stdout="late"), now=T0 + 3)
    assert q.get(job_id) == before
    assert store.history(job_id) == history
    assert w2.record(current, Outcome(exit_code=0, stdout="fresh"), now=T0 + 4)
    job = q.get(job_id)
    assert (job.state, job.stdout, job.worker_id) == (JobState.COMPLETED, "fresh", "w2")


def test_a_worker_that_loses_its_lease_kills_its_job(
    stores: StoreFactory, store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    """While the job runs the worker heartbeats; once the monitor (here: another
    connection) has taken the job back, the next heartbeat kills the job."""
    q = Queue(store)
    q.config_set("heartbeat_interval", "0.05")
    started = tmp_path / "started"
    job_id = q.enqueue({"command": f"echo $$ > {started}; exec sleep 60"}, now=T0)
    w = make_worker()
    other = stores.open()

    def monitor() -> None:
        wait_until(started.exists, 10, "the job to start")
        job = other.get(job_id)
        assert job is not None
        other.recover(job_id, job.lease, RecoveredRetry("heartbeat_lost", "taken back", T0 + 60))

    thread = threading.Thread(target=monitor)
    thread.start()
    t = time.monotonic()
    try:
        w.run_once(now=T0)
    finally:
        thread.join()
    assert time.monotonic() - t < 20
    assert not alive(int(started.read_text()))
    job = q.get(job_id)
    assert (job.state, job.error, job.next_run_at) == (JobState.FAILED, "taken back", T0 + 60)
    assert [e.to_state for e in store.history(job_id)] == ["pending", "processing", "failed"]


def test_a_worker_runs_only_the_queues_it_serves(store: Store, make_worker: MakeWorker) -> None:
    q = Queue(store)
    store.enqueue(
        [
            NewJob("a1", "true", 0, 9, 30.0, T0, queue="a"),
            NewJob("b1", "true", 0, 0, 30.0, T0, queue="b"),
            NewJob("b2", "true", 0, 0, 30.0, T0, queue="b"),
        ],
        now=T0,
    )
    w = make_worker(serves=["b"])
    first = w.run_once(now=T0, chain=True)  # and b2 claimed with b1's finish
    assert first is not None and first.id == "b1"
    second = w.run_once(now=T0, chain=True)
    assert second is not None and second.id == "b2"
    assert w.run_once(now=T0) is None
    assert q.get("a1").state is JobState.PENDING


def test_an_idle_worker_does_not_spin_on_a_paused_queues_due_jobs(
    store: Store, make_worker: MakeWorker
) -> None:
    # A failed job due already, in a paused queue: a zero wait would spin the loop.
    store.enqueue([NewJob("p1", "exit 1", 3, 0, 30.0, T0, queue="p")], now=T0)
    w = make_worker(overrides={"poll_interval": 5.0})
    assert w.run_once(now=T0) is not None  # failed, due again at once... in 2 s
    store.set_paused("p", True)
    assert store.get("p1").state is JobState.FAILED  # type: ignore[union-attr]
    assert w.run_once() is None
    assert w._idle_timeout() > 0.5
    store.set_paused("p", False)
    assert w._idle_timeout() < 0.5  # its retry is due: no long sleep


def test_a_worker_serving_one_queue_still_recovers_every_queues_jobs(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    # Covering for an absent monitor is not a claim: a dead worker's job is recovered
    # whichever queue it is in.
    store.enqueue([NewJob("b1", "true", 3, 0, 30.0, T0, queue="b")], now=T0)
    assert store.claim("ghost", now=T0, queues=["b"]) is not None  # a worker that never registered
    w = make_worker(serves=["a"], logs_dir=tmp_path)
    w._cover_for_monitor(startup=True)
    job = store.get("b1")
    assert job is not None and job.state is JobState.PENDING  # given back: it never started
