"""Two homes on one database (two supervisord on one host, on one SQLite file or one
PostgreSQL schema): every lifecycle command of one home (`worker stop`,
`stop-workers`, `shutdown`, `worker status`) acts on its own processes only, and the
other home's workers, under supervisord or run by hand, go on working."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl.models import WorkerInfo
from queuectl.store import Store
from tests.chaos.harness import Cluster, pg_available, pg_schema
from tests.helpers import T0, alive, wait_until


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="qdb", dir="/tmp"))
        try:
            yield str(folder / "shared.db")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    reason = pg_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with pg_schema() as url:
        yield url


@pytest.fixture
def homes(shared_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    a, b = Cluster(shared_url), Cluster(shared_url)
    try:
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


def _status(c: Cluster) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(c.run("worker", "status", "--json").stdout)
    return rows


def _b_is_untouched(b: Cluster, supervised: dict[str, int], bare: int) -> None:
    assert b.running_workers() == supervised
    assert all(alive(pid) for pid in supervised.values())
    assert alive(bare)


def test_one_homes_lifecycle_commands_leave_the_other_homes_workers_alone(
    homes: tuple[Cluster, Cluster],
) -> None:
    a, b = homes
    a.fast()
    a.start(2)
    b.start(2)
    bare = b.spawn("worker", "run").pid
    wait_until(lambda: len(a.store.workers()) == 5, 30, "five workers registered")
    b_supervised = b.running_workers()
    assert len(b_supervised) == 2

    # worker status: each home sees its own workers only (the --all view sees all).
    # (Each home's monitor has a line too: a supervisord process, no worker row.)
    a_pids = {int(str(r["pid"])) for r in _status(a)}
    assert a_pids == {*a.running_workers().values(), a.monitor_pid()}
    b_rows = [r for r in _status(b) if r["worker_id"] is not None]
    assert {int(str(r["pid"])) for r in b_rows} == {*b_supervised.values(), bare}
    assert {r["home"] for r in b_rows} == {os.path.realpath(b.path)}
    everyone = json.loads(a.run("worker", "status", "--all", "--json").stdout)
    assert len(everyone) == 6  # five workers and A's monitor line
    assert {r["home"] for r in everyone if r["pid"] == bare} == {os.path.realpath(b.path)}

    assert a.run("worker", "stop").stdout == "stopped 2 worker(s)\n"
    wait_until(lambda: not a.running_workers(), 30, "A's workers stopped")
    _b_is_untouched(b, b_supervised, bare)

    a.start(1)
    assert a.run("stop-workers").stdout == "stopped 1 worker(s)\n"
    _b_is_untouched(b, b_supervised, bare)

    a.start(1)
    assert a.run("shutdown").stdout == "stopped 1 worker(s) and supervisord\n"
    _b_is_untouched(b, b_supervised, bare)

    # B still works the shared queue, with every worker it had.
    b.run("enqueue", "true", "--id", "after")
    wait_until(lambda: b.counts()["completed"] == 1, 30, "B to run a job")
    assert b.run("worker", "stop").stdout == "stopped 3 worker(s)\n"
    wait_until(lambda: not alive(bare), 30, "B's bare worker to stop")


def test_a_worker_row_keeps_its_home(store: Store) -> None:
    store.register_worker(WorkerInfo("a1", "h", 10, 1, T0, T0, home="/srv/a"))
    store.register_worker(WorkerInfo("b1", "h", 11, 1, T0, T0, home="/srv/b"))
    store.register_worker(WorkerInfo("a1", "h", 10, 1, T0, T0 + 1, home="/srv/a2"))  # re-registered
    assert {w.id: w.home for w in store.workers()} == {"a1": "/srv/a2", "b1": "/srv/b"}
    assert store.workers()[0].to_dict()["home"] in ("/srv/a2", "/srv/b")


@pytest.mark.postgres
def test_a_version_6_postgres_schema_takes_the_home_of_each_worker() -> None:
    reason = pg_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    import psycopg

    from queuectl.store import open_store
    from queuectl.store.postgres import MIGRATIONS

    with pg_schema() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE queuectl_schema (version integer PRIMARY KEY, applied_at timestamptz)")
        for number, step in enumerate(MIGRATIONS[:6], 1):
            conn.execute(step)
            conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (number,))
        conn.execute(
            "INSERT INTO workers (id, host, pid, proc_start, started_at, heartbeat_at)"
            " VALUES ('old', 'h', 1, 2, %s, %s)",
            (T0, T0),
        )
        store = open_store(url)
        try:
            assert len(MIGRATIONS) == 14
            row = conn.execute("SELECT max(version) FROM queuectl_schema").fetchone()
            assert row is not None and row[0] == 14
            store.register_worker(WorkerInfo("new", "h", 3, 4, T0, T0, home="/srv/q"))
            assert {w.id: w.home for w in store.workers()} == {"old": None, "new": "/srv/q"}
        finally:
            store.close()
