"""Recovery verdicts that tell the truth: a stalled judge does not judge silence, a
clock step is told, a kill that loses the race to the worker is still recorded,
records name who recovered and why, and the worker's kill deadline comes before
any retry (docs/reliability.md).  Real stores, fixed instants, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from queuectl import procs
from queuectl.config import Config, check_combination
from queuectl.errors import InvalidInput
from queuectl.fence import Fence, deadline_after
from queuectl.models import JobState, WorkerInfo
from queuectl.monitor import Monitor
from queuectl.store import Store
from queuectl.store.outcome import Retry
from tests.helpers import T0, wait_until
from tests.unit.test_monitor import QUEUE, job, logs, register


class Events:
    """A logger that keeps what it is told (the monitor's log is its only output
    for a stall or a clock step)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.seen.append((event, kw))

    info = warning = error = exception = _add

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for e, kw in self.seen if e == event]


def monitor(store: Store, tmp_path: Path, log: Events | None = None) -> Monitor:
    return Monitor(store, queue=QUEUE, logs_dir=tmp_path / "logs", log=log or Events())


def _silent_worker_with_job(store: Store, heartbeat_at: float) -> None:
    """w1 on another host (judged by its heartbeat only) holds job a."""
    register(store, "w1", at=heartbeat_at, host="elsewhere", pid=1)
    store.enqueue([job("a")], now=heartbeat_at)
    claimed = store.claim("w1", now=heartbeat_at)
    assert claimed is not None
    assert store.heartbeat("w1", "a", claimed.lease, now=heartbeat_at)


def test_a_pass_after_a_stall_gives_every_worker_one_more_interval(store: Store, tmp_path: Path) -> None:
    _silent_worker_with_job(store, T0)
    assert monitor(store, tmp_path).guarded_pass(now=T0 + 1) == []
    # No pass by anyone for 30 s (> heartbeat_timeout 15): the database, the machine
    # or the clock stood still, the judge included.  Silence is not judged yet.
    log = Events()
    assert monitor(store, tmp_path, log).guarded_pass(now=T0 + 31) == []
    assert log.named("stall_detected")
    a = store.get("a")
    assert a is not None and a.state is JobState.PROCESSING
    # Still within the extra heartbeat interval (3 s): nothing.
    assert monitor(store, tmp_path).guarded_pass(now=T0 + 33.5) == []
    # The worker had its interval to speak and did not: now it is stale.
    done = monitor(store, tmp_path).guarded_pass(now=T0 + 34.1)
    assert done is not None
    assert [(r.event, r.reason) for r in done] == [
        ("job_recovered", "heartbeat_lost"),
        ("worker_removed", "heartbeat_lost"),
    ]


def test_a_worker_that_speaks_after_the_stall_keeps_its_job(store: Store, tmp_path: Path) -> None:
    _silent_worker_with_job(store, T0)
    assert monitor(store, tmp_path).guarded_pass(now=T0 + 1) == []
    assert monitor(store, tmp_path).guarded_pass(now=T0 + 31) == []
    job_a = store.get("a")
    assert job_a is not None
    assert store.heartbeat("w1", "a", job_a.lease, now=T0 + 32)  # it resumed too
    assert monitor(store, tmp_path).guarded_pass(now=T0 + 35) == []
    assert store.workers()[0].id == "w1"


def test_a_clock_step_forward_is_a_stall_and_a_step_back_is_told(store: Store, tmp_path: Path) -> None:
    _silent_worker_with_job(store, T0)
    log = Events()
    mon = monitor(store, tmp_path, log)
    assert mon.guarded_pass(now=T0 + 14.5) == []
    # The store's clock moved 5 s while this process's monotonic clock barely did:
    # the worker's 19.5 s of "silence" include the step, so it gets one more interval.
    assert mon.guarded_pass(now=T0 + 19.5) == []
    (jump,) = log.named("clock_jumped_forward")
    assert jump["step_s"] == pytest.approx(5, abs=0.5)
    a = store.get("a")
    assert a is not None and a.state is JobState.PROCESSING
    # Stepped back by 10 s: a warning with the size of the step, and what was due
    # before the step is still due after it.
    store.enqueue([replace(job("due"), run_at=T0 + 19.5)], now=T0 + 19.5)  # due at T0 + 19.5 ...
    store.enqueue([replace(job("later"), run_at=T0 + 60)], now=T0 + 19.5)
    assert mon.guarded_pass(now=T0 + 9.5) == []
    (back,) = log.named("clock_stepped_back")
    assert back["step_s"] == pytest.approx(-10, abs=0.5) and back["jobs_kept_due"] == 1
    register(store, "w2", at=T0 + 9.5, host="elsewhere", pid=2)
    claimed = store.claim("w2", now=T0 + 9.5)  # ... and claimed at the new T0 + 9.5
    assert claimed is not None and claimed.id == "due"
    later = store.get("later")
    assert later is not None and later.next_run_at == T0 + 60  # not due before the step: unchanged


def test_a_kill_that_loses_the_race_to_the_worker_is_recorded(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(store, "w1", at=T0, host=procs.hostname(), pid=os.getpid())
    store.enqueue([job("a", timeout=1)], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    env = {
        **os.environ,
        "QUEUECTL_JOB_ID": "a",
        "QUEUECTL_LEASE": str(claimed.lease),
        "QUEUECTL_QUEUE": QUEUE,
    }
    env["QUEUECTL_ATTEMPT"] = "1"
    child = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        wait_until(lambda: any(p.pid == child.pid for p in procs.job_processes(QUEUE)), 5)
        real_recover = store.recover

        def worker_finishes_first(*args: Any, **kwargs: Any) -> bool:
            # The job's own worker records its (killed) attempt between the
            # monitor's kill and its compare-and-set.
            assert store.finish("a", claimed.lease, Retry(T0 + 40, -9, None, "", ""), now=T0 + 30)
            return real_recover(*args, **kwargs)

        monkeypatch.setattr(store, "recover", worker_finishes_first)
        store.heartbeat("w1", "a", claimed.lease, now=T0 + 30)
        done = monitor(store, tmp_path).run_once(now=T0 + 30)  # past 1 + 5 + 10 s
        assert done == []  # the worker's finish won: no recovery
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    (rec,) = [r for r in logs(tmp_path) if r["event"] == "processes_killed"]
    assert rec["job_id"] == "a" and rec["attempt"] == 1 and rec["reason"] == "timeout"
    assert rec["killed_pids"] == [child.pid]
    assert str(rec["recovered_by"]).startswith(f"cli:{procs.hostname()}:")


def test_records_name_who_recovered_and_carry_their_own_fields(store: Store, tmp_path: Path) -> None:
    _silent_worker_with_job(store, T0)
    done = monitor(store, tmp_path).guarded_pass("monitor", now=T0 + 16)
    assert done
    by = f"monitor:{procs.hostname()}:{os.getpid()}"
    recs = logs(tmp_path)
    (job_rec,) = [r for r in recs if r["event"] == "job_recovered"]
    (worker_rec,) = [r for r in recs if r["event"] == "worker_removed"]
    assert job_rec["recovered_by"] == by and worker_rec["recovered_by"] == by
    assert job_rec["evidence"] == {"heartbeat_age_s": 16.0}
    # A removed worker's record has a worker's fields, not a job's set to null.
    assert set(worker_rec) == {
        "time",
        "event",
        "reason",
        "worker_id",
        "host",
        "pid",
        "evidence",
        "recovered_by",
    }
    # The same reason and recoverer in the job's history and error.
    last = store.history("a")[-1]
    assert last.reason == "heartbeat_lost"
    a = store.get("a")
    assert a is not None and a.error is not None and f"recovered by {by}" in a.error
    assert last.error == a.error


def test_a_manual_recovery_names_the_user(store: Store, tmp_path: Path) -> None:
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job("a")], now=T0)
    assert store.claim("w1", now=T0) is not None
    rec = monitor(store, tmp_path).recover_job("a", now=T0 + 1)
    assert rec.reason == "manual" and rec.evidence.get("user")
    assert rec.recovered_by.startswith("cli:")


@pytest.mark.parametrize("backoff_base", ["0", "1", "2"])
def test_a_retry_never_starts_before_the_live_workers_kill_deadline(
    store: Store, tmp_path: Path, backoff_base: str
) -> None:
    """A timeout recovery of a job whose worker heartbeats (maybe on a host now cut
    off): the retry is due no earlier than that worker's last heartbeat plus
    heartbeat_timeout, after the worker's own kill deadline."""
    store.config_set({"backoff_base": backoff_base, "backoff_max": "1"})
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job("a", timeout=1)], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    assert store.heartbeat("w1", "a", claimed.lease, now=T0 + 20)
    done = monitor(store, tmp_path).run_once(now=T0 + 20)
    assert [(r.job_id, r.reason) for r in done] == [("a", "timeout")]
    a = store.get("a")
    assert a is not None and a.next_run_at is not None
    cfg = Config.from_stored(store.config_items())
    kill_by = deadline_after(T0 + 20, cfg.heartbeat_timeout, cfg.heartbeat_interval)
    assert a.next_run_at >= T0 + 20 + cfg.heartbeat_timeout > kill_by


def test_the_worker_deadline_comes_two_intervals_before_any_recovery() -> None:
    assert deadline_after(100.0, 15.0, 3.0) == 109.0  # recovery may start at 115
    # The deadline is at least two intervals after the last heartbeat: the next one
    # has a whole interval to come back before a healthy job would be killed.
    check_combination({"heartbeat_interval": 3.0, "heartbeat_timeout": 12.0})
    assert deadline_after(100.0, 12.0, 3.0) == 106.0
    with pytest.raises(InvalidInput, match="at most a quarter of heartbeat_timeout"):
        check_combination({"heartbeat_interval": 3.0, "heartbeat_timeout": 11.9})


def test_the_fence_kills_the_group_at_its_deadline_on_its_own_clock() -> None:
    log = Events()
    fence = Fence(log)
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        armed = time.monotonic()
        fence.arm(child.pid, "a", armed + 0.3)
        fence.renew(armed + 0.6)  # a heartbeat reached the store: the deadline moves on
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() >= armed + 0.6
        assert fence.disarm() == "a"
        assert [kw["job_id"] for kw in log.named("lease_presumed_lost")] == ["a"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_disarmed_fence_kills_nothing() -> None:
    fence = Fence(Events())
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        fence.arm(child.pid, "a", time.monotonic() + 0.2)
        assert fence.disarm() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.6)  # well past the old deadline: still running
    finally:
        child.kill()
        child.wait()


def test_a_worker_that_re_registers_mid_job_keeps_it(store: Store, tmp_path: Path) -> None:
    """Its row removed while it was stopped, the worker re-registers naming the job it
    runs: the monitor must not take the job for a claim that never reached it."""
    register(store, "w1", at=T0, host="elsewhere", pid=1)
    store.enqueue([job("a")], now=T0)
    claimed = store.claim("w1", now=T0)
    assert claimed is not None
    again = WorkerInfo(
        id="w1", host="elsewhere", pid=1, proc_start=None, started_at=T0 + 2, heartbeat_at=T0 + 2, holding="a"
    )
    store.register_worker(again)
    assert monitor(store, tmp_path).run_once(now=T0 + 3) == []
    a = store.get("a")
    assert a is not None and a.state is JobState.PROCESSING and a.attempts == 1
