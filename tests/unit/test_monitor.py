"""Monitor.run_once(now=...) on both stores, at fixed instants: no sleeps."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from queuectl import procs
from queuectl.errors import Conflict
from queuectl.models import JobState, NewJob, WorkerInfo
from queuectl.monitor import Monitor
from queuectl.recovery import LEASE
from queuectl.store import Store
from queuectl.store.outcome import Completed, RecoveredRetry
from tests.conftest import StoreFactory
from tests.helpers import T0, wait_until

QUEUE = "test-queue-key"


def job(job_id: str, *, max_retries: int = 3, timeout: float = 60.0) -> NewJob:
    return NewJob(id=job_id, command="true", max_retries=max_retries, priority=0, timeout=timeout, run_at=T0)


def register(
    store: Store, worker_id: str, *, at: float, pid: int | None = None, host: str | None = None
) -> None:
    pid = os.getpid() if pid is None else pid
    store.register_worker(
        WorkerInfo(
            id=worker_id,
            host=host or procs.hostname(),
            pid=pid,
            proc_start=procs.proc_start(pid),
            started_at=at,
            heartbeat_at=at,
        )
    )


def monitor(store: Store, tmp_path: Path) -> Monitor:
    return Monitor(store, queue=QUEUE, logs_dir=tmp_path / "logs")


def logs(tmp_path: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted((tmp_path / "logs").glob("recovered_jobs_*.json")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def test_a_silent_worker_is_stale_only_after_heartbeat_timeout(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0)  # this process: alive
    store.enqueue([job("a")], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    store.heartbeat("w1", "a", claimed.lease, now=T0 + 1)
    mon = monitor(store, tmp_path)
    assert mon.run_once(now=T0 + 15) == []  # 14 s of silence: within heartbeat_timeout (15)
    assert not (tmp_path / "logs").exists()  # a pass that recovers nothing writes no file
    done = mon.run_once(now=T0 + 16.5)
    assert [(r.event, r.reason, r.job_id) for r in done] == [
        ("job_recovered", "heartbeat_lost", "a"),
        ("worker_removed", "heartbeat_lost", None),
    ]
    a = store.get("a")
    assert a is not None and a.state is JobState.FAILED
    assert a.next_run_at == pytest.approx(T0 + 16.5 + 2)  # backoff 2 ** 1
    assert store.workers() == []
    assert store.history("a")[-1].reason == "heartbeat_lost"
    # The old worker's late result is fenced off.
    assert not store.finish("a", claimed.lease, Completed("", ""), now=T0 + 17)
    assert [r["job_id"] for r in logs(tmp_path) if r["event"] == "job_recovered"] == ["a"]


def test_a_dead_pid_on_this_host_is_stale_at_once(store: Store, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    register(store, "w1", at=T0, pid=gone.pid)
    store.enqueue([job("a", max_retries=0)], now=T0)
    assert store.claim("w1", now=T0) is not None
    done = monitor(store, tmp_path).run_once(now=T0 + 0.1)
    assert done[0].reason == "worker_died" and done[0].state_after == "dead"
    assert done[0].evidence == {"pid": gone.pid, "proc_start": None}
    a = store.get("a")
    assert a is not None and a.state is JobState.DEAD


def test_another_hosts_worker_is_judged_by_heartbeat_only(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0, pid=999_999, host="elsewhere")
    store.enqueue([job("a")], now=T0)
    assert store.claim("w1", now=T0) is not None
    mon = monitor(store, tmp_path)
    assert mon.run_once(now=T0 + 5) == []
    assert [r.job_id for r in mon.run_once(now=T0 + 20) if r.job_id] == ["a"]


def test_a_job_past_its_timeout_is_recovered_as_timeout(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0)
    store.enqueue([job("a", timeout=10)], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    mon = monitor(store, tmp_path)
    # Heartbeating all along; timeout 10 + kill_grace 5 + timeout_grace 10 = 25 s.
    store.heartbeat("w1", "a", claimed.lease, now=T0 + 24)
    assert mon.run_once(now=T0 + 24) == []
    store.heartbeat("w1", "a", claimed.lease, now=T0 + 26)
    done = mon.run_once(now=T0 + 26)
    assert [(r.job_id, r.reason) for r in done] == [("a", "timeout")]
    assert store.workers() != []  # the worker itself is fine


def test_a_claim_its_worker_never_received_is_recovered(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0)
    store.enqueue([job("a"), job("b")], now=T0)
    a = store.claim("w1", now=T0)
    assert a is not None
    # The worker heartbeats while idle after the claim: it never got job a.
    store.heartbeat("w1", None, None, now=T0 + 3)
    mon = monitor(store, tmp_path)
    assert [(r.job_id, r.reason) for r in mon.run_once(now=T0 + 3) if r.job_id] == [("a", "heartbeat_lost")]
    # Control: a worker that reports the job it runs keeps it.
    b = store.claim("w1", now=T0 + 4)
    assert b is not None and b.id in ("a", "b")
    store.heartbeat("w1", b.id, b.lease, now=T0 + 7)
    assert mon.run_once(now=T0 + 7) == []


def test_two_monitors_never_recover_one_job_twice(stores: StoreFactory, tmp_path: Path) -> None:
    s1, s2 = stores.open(), stores.open()
    register(s1, "w1", at=T0, host="elsewhere", pid=1)
    s1.enqueue([job(f"j{i}") for i in range(5)], now=T0)
    for _ in range(5):
        s1.claim("w1", now=T0)
    m1, m2 = monitor(s1, tmp_path / "m1"), monitor(s2, tmp_path / "m2")
    first = m1.run_once(now=T0 + 30)
    second = m2.run_once(now=T0 + 30)
    assert len([r for r in first if r.event == "job_recovered"]) == 5
    assert second == []
    for i in range(5):
        assert [e.to_state for e in s1.history(f"j{i}")] == ["pending", "processing", "failed"]


def test_dry_run_changes_nothing(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job("a")], now=T0)
    store.claim("w1", now=T0)
    done = monitor(store, tmp_path).run_once(now=T0 + 60, dry_run=True)
    assert {r.event for r in done} == {"job_recovered", "worker_removed"}
    a = store.get("a")
    assert a is not None and a.state is JobState.PROCESSING
    assert len(store.workers()) == 1
    assert not (tmp_path / "logs").exists()


def test_recovery_log_format_and_mode(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0, host="elsewhere", pid=4242)
    store.enqueue([job("a")], now=T0)
    store.claim("w1", now=T0)
    monitor(store, tmp_path).run_once(now=T0 + 60)
    (f,) = (tmp_path / "logs").glob("recovered_jobs_*.json")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    rec = next(r for r in logs(tmp_path) if r["event"] == "job_recovered")
    assert rec["job_id"] == "a" and rec["attempt"] == 1 and rec["worker_id"] == "w1"
    assert rec["host"] == "elsewhere" and rec["pid"] == 4242 and rec["command"] == "true"
    assert rec["state_before"] == "processing" and rec["state_after"] == "failed"
    assert str(rec["time"]).endswith("Z") and rec["reason"] == "heartbeat_lost"


def test_orphan_job_processes_are_killed(store: Store, tmp_path: Path) -> None:
    store.enqueue([job("a")], now=T0)
    env = {**os.environ, "QUEUECTL_JOB_ID": "a", "QUEUECTL_LEASE": "7", "QUEUECTL_QUEUE": QUEUE}
    orphan = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        wait_until(lambda: any(p.pid == orphan.pid for p in procs.job_processes(QUEUE)), 5)
        done = monitor(store, tmp_path).run_once(now=T0)
        assert [(r.event, r.job_id, r.pid) for r in done] == [("orphan_killed", "a", orphan.pid)]
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_guarded_passes_take_turns(stores: StoreFactory, tmp_path: Path) -> None:
    s1, s2 = stores.open(), stores.open()
    assert s1.acquire_lease(LEASE, "worker:x:1", "worker", 30, now=T0)
    # Someone holds the lease: a pass does not run.
    assert monitor(s2, tmp_path).guarded_pass("monitor", now=T0 + 1) is None
    assert s1.release_lease(LEASE, "worker:x:1", True, now=T0 + 2)
    assert monitor(s2, tmp_path).guarded_pass("monitor", now=T0 + 3) == []
    info = s1.lease_info(LEASE)
    assert info is not None and info.last_pass_kind == "monitor" and info.last_monitor_pass_at == T0 + 3


def test_manual_recovery_of_one_job(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0)
    store.enqueue([job("a"), job("b")], now=T0)
    store.claim("w1", now=T0)
    mon = monitor(store, tmp_path)
    rec = mon.recover_job("a", now=T0 + 1)
    assert rec.reason == "manual"
    with pytest.raises(Conflict):
        mon.recover_job("a", now=T0 + 2)  # no longer processing


def test_a_recovery_whose_pass_died_before_its_log_is_logged_by_the_next_pass(
    store: Store, tmp_path: Path
) -> None:
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job("a")], now=T0)
    a = store.claim("w1", now=T0)
    assert a is not None
    record = {"time": "2023-11-14T22:13:50.000Z", "event": "job_recovered", "job_id": "a", "attempt": 1}
    # What a pass killed right after its compare-and-set leaves behind:
    assert store.recover(
        "a", a.lease, RecoveredRetry("heartbeat_lost", "gone", T0 + 2, audit=json.dumps(record)), T0
    )
    # A lost compare-and-set adds nothing to the outbox.
    assert not store.recover("a", a.lease, RecoveredRetry("heartbeat_lost", "x", T0 + 2, audit="{}"), T0)
    assert [json.loads(text) for _, text in store.audit_pending()] == [record]
    monitor(store, tmp_path).run_once(now=T0 + 1)
    assert [r for r in logs(tmp_path) if r["event"] == "job_recovered"] == [record]
    assert store.audit_pending() == []
    monitor(store, tmp_path).run_once(now=T0 + 2)
    assert len([r for r in logs(tmp_path) if r["event"] == "job_recovered"]) == 1  # written once


def test_a_fold_that_fails_leaves_the_pass_standing(sqlite_store: Store, tmp_path: Path) -> None:
    # The counts' snapshot table gone (a real SQLite error at the fold): the pass
    # still recovers, records itself, and says what failed.
    import io

    from queuectl.logs import json_logger
    from queuectl.store.sqlite import SQLiteStore

    assert isinstance(sqlite_store, SQLiteStore)
    sqlite_store.enqueue([job("a")], now=T0)
    assert sqlite_store.claim("gone", now=T0) is not None  # no such worker: heartbeat_lost
    sqlite_store.conn.execute("DROP TABLE job_counts_upto")
    out = io.StringIO()
    mon = Monitor(sqlite_store, queue=QUEUE, logs_dir=tmp_path / "logs", log=json_logger(out))
    done = mon.guarded_pass(now=T0 + 1)
    assert done is not None and [r.job_id for r in done] == ["a"]
    info = sqlite_store.lease_info(LEASE)
    assert info is not None and info.last_pass_at == T0 + 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [r for r in records if r["event"] == "counts_fold_failed"]
    assert len(failed) == 1 and "job_counts_upto" in failed[0]["error"]


def test_a_cancelled_job_whose_worker_died_is_left_cancelled_and_its_processes_killed(
    store: Store, tmp_path: Path
) -> None:
    """The worker died after the cancel and before its heartbeat saw it: the pass
    removes the worker, recovers nothing (the job is terminal), and kills what the
    attempt left running."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    register(store, "w1", at=T0, pid=dead.pid)
    store.enqueue([job("a")], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    assert store.cancel(["a"], "op@h", now=T0 + 1) == ["a"]
    env = {
        **os.environ,
        "QUEUECTL_JOB_ID": "a",
        "QUEUECTL_LEASE": str(claimed.lease),
        "QUEUECTL_QUEUE": QUEUE,
    }
    leftover = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        wait_until(lambda: any(p.pid == leftover.pid for p in procs.job_processes(QUEUE)), 5)
        done = monitor(store, tmp_path).run_once(now=T0 + 2)
        assert sorted((r.event, r.job_id) for r in done) == [("orphan_killed", "a"), ("worker_removed", None)]
        assert leftover.wait(timeout=10) == -signal.SIGKILL
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
    after = store.get("a")
    assert after is not None and (after.state, after.attempts) == (JobState.CANCELLED, 1)
    assert [e.to_state for e in store.history("a")] == ["pending", "processing", "cancelled"]
    assert store.workers() == []
