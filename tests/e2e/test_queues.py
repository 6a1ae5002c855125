"""Workers that serve some queues only: a bare `worker run --queue`, and the pool of
`worker start --queue` under supervisord."""

from __future__ import annotations

import signal
from pathlib import Path

from queuectl.models import NewJob
from queuectl.store.sqlite import SQLiteStore
from tests.e2e.conftest import Home, wait_until


def put(home: Home, runs: Path, *jobs: tuple[str, str, int]) -> None:
    """Jobs (id, queue, priority) that append their id to `runs`, due now."""
    home.run("status")  # creates the database
    store = SQLiteStore(str(home.path / "db" / "queue.db"))
    try:
        store.enqueue(
            [NewJob(i, f"echo {i} >> {runs}", 0, prio, 30.0, store.now(), queue=q) for i, q, prio in jobs]
        )
    finally:
        store.close()


def ran(runs: Path) -> list[str]:
    return runs.read_text().split() if runs.exists() else []


def states(home: Home) -> dict[str, str]:
    return {j["id"]: j["state"] for j in home.json("list", "--all")}


def test_a_bare_worker_runs_only_its_queues_jobs(home: Home, tmp_path: Path) -> None:
    home.fast()
    runs = tmp_path / "runs"
    # b's jobs come first by priority: a worker serving b too would take them first.
    put(home, runs, ("b1", "b", 9), ("b2", "b", 9), ("a1", "a", 0), ("a2", "a", 0))
    worker = home.spawn("worker", "run", "--queue", "a", "--poll-interval", "0.05")
    wait_until(lambda: sorted(ran(runs)) == ["a1", "a2"], 30, "a's jobs to run")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert states(home) == {"a1": "completed", "a2": "completed", "b1": "pending", "b2": "pending"}
    assert sorted(ran(runs)) == ["a1", "a2"]


def test_worker_start_passes_its_queues_to_the_pool(home: Home, tmp_path: Path) -> None:
    home.fast()
    runs = tmp_path / "runs"
    put(home, runs, ("b1", "b", 9), ("a1", "a", 0), ("c1", "c", 0))
    home.run("worker", "start", "--detach", "--count", "2", "--queue", "a", "--queue", "c")
    try:
        wait_until(lambda: sorted(ran(runs)) == ["a1", "c1"], 30, "a's and c's jobs to run")
        # Scaling keeps the pool's queues; another set is refused while workers run.
        home.run("worker", "start", "--count", "1")
        refused = home.run("worker", "start", "--queue", "b", check=False)
        assert refused.returncode == 2 and "worker stop" in refused.stderr
        put(home, runs, ("a2", "a", 0))
        wait_until(lambda: "a2" in ran(runs), 30, "a's new job to run")
        assert states(home)["b1"] == "pending"
    finally:
        home.run("shutdown")
    assert "b1" not in ran(runs)
