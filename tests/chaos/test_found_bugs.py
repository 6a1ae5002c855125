"""Regression tests for bugs the chaos suite found (each names its scenario)."""

from __future__ import annotations

import json

from tests.chaos.harness import Cluster, Workload, check


def test_a_worker_draining_short_jobs_keeps_heartbeating(sqlite_chaos: Cluster) -> None:
    """Found by `supervisord tree SIGKILL` on PostgreSQL: a worker that runs jobs
    shorter than its check interval back to back never idled and so never
    heartbeated; after heartbeat_timeout its own fallback pass (or the monitor)
    declared it dead, removed its row, and then recovered (killed) every job it
    claimed until the queue ran dry."""
    c = sqlite_chaos
    c.fast(heartbeat_interval="0.2", heartbeat_timeout="1", monitor_interval="0.2")
    w = Workload(c.path / "runs")
    w.enqueue(c, w.specs(60, sleep=(0.04, 0.06)))  # ~3.5 s of work, > heartbeat_timeout
    c.spawn("monitor", "run", name="monitor")
    proc = c.spawn("worker", "run", "--burst", "--poll-interval", "0.05")
    assert proc.wait(timeout=60) == 0
    rep = check(c, w)
    rep.ok()
    assert rep.recoveries == 0
    assert all(j.attempts == 1 for j in c.store.list_jobs())
    log = (c.path / "bare-1.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in log if line.startswith("{")]
    assert "lease_lost" not in events and "worker_reregistered" not in events
