"""Faults that make a live worker look dead, or every process stall at once
(docs/reliability.md: "false verdicts and stalls").  Each runs the real CLI and
supervisord and ends with the chaos checker's invariants."""

from __future__ import annotations

import os
import signal
import time

from tests.chaos.harness import Cluster, Workload, check, wait_until


def _worker_pid(c: Cluster, job_id: str) -> tuple[int, int]:
    """(worker pid, lease) of the processing job `job_id`."""
    job = wait_until(
        lambda: (j := c.store.get(job_id)) is not None and j.state.value == "processing" and j,
        30,
        f"{job_id} to start",
    )
    return int((job.worker_id or "").split("-")[-2]), job.lease


def test_a_worker_judged_dead_keeps_the_job_it_claims_after_it_resumes(chaos: Cluster) -> None:
    """One worker, SIGSTOPped past heartbeat_timeout while it runs A: the monitor
    recovers A and removes the worker's row.  On SIGCONT the worker records A (its
    result dropped), claims B, and must run B: B was never recovered, so it is still
    the worker's own.  With max_retries 0, a B thrown away ends dead without a run."""
    c = chaos
    c.fast(heartbeat_interval="0.5", heartbeat_timeout="2", monitor_interval="0.5")
    w = Workload(c.path / "runs")
    # `a` outlasts any stop (30 s); with no retry it is not run a second time for
    # 30 s once recovered: its recovery is the fault, not what is tested.
    w.enqueue(c, [{"id": "a", "command": w.command(30), "max_retries": 0, "priority": 5}])
    w.expected["a"] = "dead"  # recovered with no retry left
    c.start(1)
    pid, _ = _worker_pid(c, "a")
    w.enqueue(c, [{"id": "b", "command": w.command(0.2), "max_retries": 0}])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not c.store.workers(), 30, "the stopped worker's row to be removed")
        wait_until(lambda: c.store.get("a").state.value != "processing", 30, "a to be recovered")
    finally:
        os.kill(pid, signal.SIGCONT)
    # `a` ends dead (its late result dropped); `b` runs once and completes.
    wait_until(lambda: c.store.get("b").state.value in ("completed", "dead"), 60, "b to end")
    wait_until(c.drained, 90, "the queue to drain")
    b = c.store.get("b")
    assert b is not None and b.state.value == "completed", (b, c.store.history("b"))
    assert b.attempts == 1
    check(c, w).ok()


def test_a_database_locked_past_heartbeat_timeout_kills_no_job(sqlite_chaos: Cluster) -> None:
    """An outside writer holds SQLite's write lock for 3x heartbeat_timeout: every
    process stalls alike, so nobody is dead.  No job is killed, nothing recovered,
    and no pass overlaps another (each recovery record is written once)."""
    c = sqlite_chaos
    c.fast(heartbeat_interval="0.5", heartbeat_timeout="2", monitor_interval="0.5")
    w = Workload(c.path / "runs")
    w.enqueue(c, [{"id": f"s{i}", "command": w.command(8), "max_retries": 0} for i in range(3)])
    c.start(3)
    for i in range(3):
        _worker_pid(c, f"s{i}")
    import apsw

    conn = apsw.Connection(c.db_url)
    conn.set_busy_timeout(10_000)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(6)  # the fault itself: the write lock held for 3x heartbeat_timeout
        conn.execute("COMMIT")
    finally:
        conn.close()
    wait_until(c.drained, 60, "the queue to drain")
    rep = check(c, w)
    rep.ok()
    assert rep.recoveries == 0, [e for e in c.recovery_logs()]
    assert all(c.store.get(f"s{i}").state.value == "completed" for i in range(3))
