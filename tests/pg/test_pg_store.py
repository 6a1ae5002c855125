"""What only the PostgreSQL store has to prove: its schema lives where the URL says
and is migrated once under concurrent first opens, claims are exactly-once across
connections, NOTIFY wakes idle waiters, and its fences and errors hold."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from queuectl.errors import DuplicateJob, StoreError
from queuectl.models import JobState, NewJob, WorkerInfo
from queuectl.store.outcome import Completed, Dead, RecoveredRetry, Retry
from queuectl.store.postgres import MIGRATIONS, PostgresStore
from tests.helpers import T0, clean_env, wait_until
from tests.pg.conftest import admin, schema_url

pytestmark = pytest.mark.postgres


def jobs(n: int, prefix: str = "j", at: float = T0) -> list[NewJob]:
    return [NewJob(f"{prefix}{i:05d}", f"echo {i}", 3, 0, 60.0, at) for i in range(n)]


# --- schema ------------------------------------------------------------------------------

_OPEN_ON_GO = """
import sys, time
from pathlib import Path
from queuectl.store.postgres import PostgresStore
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
PostgresStore(url).close()
"""


def test_concurrent_first_opens_migrate_once(pg_url: str, tmp_path: Path) -> None:
    """Several processes open an empty schema at the same instant: every one succeeds
    and each migration is applied exactly once (the advisory lock serializes them)."""
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_ON_GO, pg_url, str(r), str(go)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in readies
    ]
    try:
        wait_until(lambda: all(r.exists() for r in readies), 30, "the openers to start")
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
    store = PostgresStore(pg_url)
    store.close()
    with admin() as conn:
        schema = pg_url.rsplit("%3D", 1)[1]
        rows = conn.execute(f'SELECT version FROM "{schema}".queuectl_schema ORDER BY version').fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


def test_tables_live_in_the_urls_schema(pg_store: PostgresStore, pg_url: str) -> None:
    schema = pg_url.rsplit("%3D", 1)[1]
    with admin() as conn:
        found = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'job_events'"
        ).fetchall()
    assert (schema,) in found
    assert ("public",) not in found


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    schema = pg_url.rsplit("%3D", 1)[1]
    with admin() as conn:
        conn.execute(f'INSERT INTO "{schema}".queuectl_schema (version) VALUES (99)')
    with pytest.raises(StoreError, match="version 99, newer than this queuectl knows"):
        PostgresStore(pg_url)


def test_a_version_7_schema_migrates_to_the_current_version_with_its_jobs(pg_url: str) -> None:
    # Version 7 held the model SQLite's 9 holds; steps 8 and 9 change nothing, and 10
    # adds the job-control columns and tables (the jobs keep their values).
    schema = pg_url.rsplit("%3D", 1)[1]
    with admin() as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("CREATE TABLE queuectl_schema (version integer PRIMARY KEY, applied_at timestamptz)")
        for number, step in enumerate(MIGRATIONS[:7], 1):
            conn.execute(step)
            conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (number,))
        conn.execute(
            "INSERT INTO jobs (id, command, state, max_retries, priority, timeout, created_at,"
            " updated_at, run_at, next_run_at) VALUES ('old', 'true', 'pending', 3, 0, 60, %s, %s, %s, %s)",
            (T0, T0, T0, T0),
        )
        tables = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY 1, 2",
            (schema,),
        ).fetchall()
    store = PostgresStore(pg_url)
    try:
        job = store.claim("w1", now=T0 + 1)
        assert job is not None and job.id == "old" and job.attempts == 1 and job.queue == "default"
        store.register_worker(WorkerInfo("w1", "h", 1, 2, T0, T0, home="/srv/q"))
        assert [w.home for w in store.workers()] == ["/srv/q"]
    finally:
        store.close()
    with admin() as conn:
        versions = conn.execute(f'SELECT version FROM "{schema}".queuectl_schema ORDER BY version').fetchall()
        after = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY 1, 2",
            (schema,),
        ).fetchall()
    assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1)) == list(range(1, 15))
    added = {
        ("jobs", "cwd", "text"),
        ("jobs", "env", "text"),
        ("jobs", "queue", "text"),
        ("jobs", "unique_key", "text"),
        ("job_deps", "child", "text"),
        ("job_deps", "parent", "text"),
        ("queues", "concurrency", "bigint"),
        ("queues", "name", "text"),
        ("queues", "paused", "boolean"),
        *(
            ("schedules", column, kind)
            for column, kind in (
                ("name", "text"),
                ("cron", "text"),
                ("tz", "text"),
                ("job", "text"),
                ("paused", "boolean"),
                ("next_run_at", "double precision"),
                ("created_at", "double precision"),
                ("last_run_at", "double precision"),
                ("last_job_id", "text"),
            )
        ),
        ("job_events", "actor", "text"),
        ("job_events", "xid", "xid8"),
        *(
            (table, column, kind)
            for table, columns in {
                "audit_notes": "id bigint,xid xid8,at double precision,kind text,actor text,detail text",
                "audit_head": "id integer,seq bigint,hash text,mark_xid xid8,mark_src integer,mark_id bigint",
                "audit_lines": "seq bigint,sealed_at double precision,hash text,line text",
                "audit_homes": "home text,seq bigint,hash text,at double precision",
                "audit_checkpoints": "seq bigint,hash text,at double precision,actor text",
            }.items()
            for column, kind in (c.split(" ", 1) for c in columns.split(","))
        ),
    }
    assert set(after) == set(tables) | added


def test_a_foreign_jobs_table_is_refused(pg_url: str) -> None:
    schema = pg_url.rsplit("%3D", 1)[1]
    with admin() as conn:
        conn.execute(f'CREATE TABLE "{schema}".jobs (x int)')
    with pytest.raises(StoreError, match="not queuectl's"):
        PostgresStore(pg_url)


def test_a_missing_schema_is_a_clear_error(pg_server: str) -> None:
    with pytest.raises(StoreError, match="no schema to create tables in"):
        PostgresStore(schema_url("qpg_no_such_schema"))


# --- claims and fencing ------------------------------------------------------------------


def test_concurrent_claimers_get_each_job_exactly_once(pg_store: PostgresStore, pg_url: str) -> None:
    """Six threads, each with its own connections, drain 600 jobs: SKIP LOCKED hands
    every job to exactly one of them."""
    pg_store.enqueue(jobs(600))
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def drain(n: int) -> None:
        store = PostgresStore(pg_url)
        try:
            start.wait(timeout=30)
            while (job := store.claim(f"w{n}", now=T0 + 1)) is not None:
                with lock:
                    claimed.append((job.id, job.lease))
                assert store.finish(job.id, job.lease, Completed("", ""), T0 + 2)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    ids = Counter(job_id for job_id, _ in claimed)
    assert sorted(ids) == [j.id for j in jobs(600)]
    assert max(ids.values()) == 1
    assert {lease for _, lease in claimed} == {1}
    assert pg_store.counts()["completed"] == 600


def test_a_recovered_job_fences_out_its_old_worker(pg_store: PostgresStore) -> None:
    pg_store.enqueue(jobs(1))
    pg_store.register_worker(WorkerInfo("old", "host-a", 1, None, T0, T0))
    first = pg_store.claim("old", now=T0)
    assert first is not None
    # PROCESSING -> FAILED by the monitor of another host
    assert pg_store.recover(first.id, first.lease, RecoveredRetry("heartbeat_lost", "gone", T0 + 1), T0)
    assert not pg_store.recover(first.id, first.lease, RecoveredRetry("heartbeat_lost", "x", T0 + 1), T0)
    second = pg_store.claim("new", now=T0 + 1)
    assert second is not None and second.lease == first.lease + 1
    # The old worker wakes up: its heartbeat and its result are both refused.
    assert not pg_store.heartbeat("old", first.id, first.lease)
    assert not pg_store.finish(first.id, first.lease, Completed("", ""), T0 + 2)
    assert pg_store.finish(second.id, second.lease, Completed("ok", ""), T0 + 2)
    got = pg_store.get(first.id)
    assert got is not None and got.state is JobState.COMPLETED and got.stdout == "ok"
    chain = [(e.from_state, e.to_state, e.worker_id) for e in pg_store.history(first.id)]
    assert chain == [
        (None, "pending", None),
        ("pending", "processing", "old"),
        ("processing", "failed", "old"),
        ("failed", "processing", "new"),
        ("processing", "completed", "new"),
    ]


# --- enqueue -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 500], ids=["insert", "copy"])
def test_duplicate_ids_are_named_and_nothing_is_inserted(pg_store: PostgresStore, n: int) -> None:
    pg_store.enqueue([NewJob("taken", "true", 0, 0, 1.0, T0)])
    batch = jobs(n)
    with pytest.raises(DuplicateJob) as exc:
        pg_store.enqueue([*batch[:-1], NewJob("taken", "true", 0, 0, 1.0, T0)])
    assert exc.value.job_id == "taken"
    with pytest.raises(DuplicateJob) as exc:
        pg_store.enqueue([*batch, batch[1]])
    assert exc.value.job_id == batch[1].id
    assert pg_store.counts()["pending"] == 1
    assert pg_store.get(batch[0].id) is None


def test_bulk_enqueue_writes_every_first_event(pg_store: PostgresStore) -> None:
    ids = pg_store.enqueue(jobs(2000), now=T0)
    assert len(ids) == 2000
    assert pg_store.counts()["pending"] == 2000
    assert [(e.from_state, e.to_state, e.at) for e in pg_store.history(ids[-1])] == [(None, "pending", T0)]


def test_enqueue_without_now_uses_the_database_clock(pg_store: PostgresStore) -> None:
    with admin() as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    assert abs(pg_store.now() - row[0]) < 5
    before = pg_store.now()
    pg_store.enqueue([NewJob("a", "true", 0, 0, 1.0, before)])
    job = pg_store.get("a")
    assert job is not None and before <= job.created_at <= pg_store.now()


def test_output_with_nul_bytes_is_stored(pg_store: PostgresStore) -> None:
    pg_store.enqueue(jobs(1))
    job = pg_store.claim("w", now=T0)
    assert job is not None
    assert pg_store.finish(job.id, job.lease, Retry(T0 + 2, 1, "bad\x00", "a\x00b", "\udcff"), T0)
    got = pg_store.get(job.id)
    assert got is not None
    assert (got.stdout, got.error) == ("a\ufffdb", "bad\ufffd")
    assert got.stderr is not None and "\x00" not in got.stderr


# --- NOTIFY --------------------------------------------------------------------------------


def _waiter(store: PostgresStore, timeout: float) -> tuple[threading.Thread, list[float]]:
    """wait_for_change(timeout) in a thread; the list gets its duration."""
    took: list[float] = []

    def wait() -> None:
        t0 = time.monotonic()
        store.wait_for_change(timeout)
        took.append(time.monotonic() - t0)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, took


def _listening(store: PostgresStore) -> None:
    """The first wait opens the LISTEN connection and returns at once."""
    t0 = time.monotonic()
    store.wait_for_change(30)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("change", ["enqueue", "dlq_retry"])
def test_notify_wakes_an_idle_waiter(pg_url: str, change: str) -> None:
    waiter, other = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        if change == "dlq_retry":
            other.enqueue([NewJob("d", "false", 0, 0, 1.0, T0)])
            job = other.claim("w", now=T0)
            assert job is not None
            other.finish(job.id, job.lease, Dead(1, None, "", ""), T0)
        _listening(waiter)
        thread, took = _waiter(waiter, 30)
        if change == "enqueue":
            other.enqueue([NewJob("n", "true", 0, 0, 1.0, T0)])
        else:
            assert other.dlq_retry(None) == ["d"]
        thread.join(timeout=20)
        assert took and took[0] < 10, "the waiter slept through the notification"
    finally:
        waiter.close()
        other.close()


def test_notifications_do_not_cross_schemas(pg_schemas: Callable[[], str]) -> None:
    waiter = PostgresStore(schema_url(pg_schemas()))
    other = PostgresStore(schema_url(pg_schemas()))
    try:
        _listening(waiter)
        thread, took = _waiter(waiter, 0.5)
        other.enqueue(jobs(1))
        thread.join(timeout=20)
        assert took and took[0] >= 0.5
    finally:
        waiter.close()
        other.close()


def test_wakeup_fd_ends_the_wait(pg_store: PostgresStore) -> None:
    _listening(pg_store)
    r, w = os.pipe()
    try:
        thread, took = _waiter_fd(pg_store, r)
        os.write(w, b"x")
        thread.join(timeout=20)
        assert took and took[0] < 10
    finally:
        os.close(r)
        os.close(w)


def _waiter_fd(store: PostgresStore, fd: int) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def wait() -> None:
        t0 = time.monotonic()
        store.wait_for_change(30, fd)
        took.append(time.monotonic() - t0)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, took


def test_a_queues_running_count_reads_only_its_processing_jobs(pg_store: PostgresStore, pg_url: str) -> None:
    # queuectl_room counts a queue's PROCESSING jobs at every claim from a limited
    # queue.  Through jobs_state it would walk every dead 'processing' entry that the
    # claims and finishes since the last vacuum left (all queues'): a partial index
    # of the processing jobs by queue keeps it to that queue's.
    import psycopg

    pg_store.enqueue([NewJob(f"w{i:03d}", "true", 3, 0, 60.0, T0, queue="work") for i in range(50)], T0)
    for _ in range(50):
        job = pg_store.claim("w1", now=T0)
        assert job is not None
        pg_store.finish(job.id, job.lease, Completed("", ""), now=T0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN SELECT count(*) FROM jobs WHERE state = 'processing' AND queue = 'capped'"
            )
        )
    assert "jobs_running" in plan, plan


def test_a_claimer_that_loses_a_queues_lock_is_told_to_claim_again(
    pg_store: PostgresStore, pg_url: str
) -> None:
    # Another claimer holds the queue's room lock (its claim is in flight): this one
    # passes the queue over rather than wait, and next_due() says the queue has a job
    # due and room, so its worker claims again at once instead of idling.
    import psycopg

    from queuectl.store.postgres.schema import ROOM_LOCK

    pg_store.enqueue([NewJob("l1", "true", 3, 0, 60.0, T0, queue="lim")], T0)
    pg_store.set_concurrency("lim", 2)
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema() || '/' || 'lim'))", (ROOM_LOCK,))
        assert pg_store.claim("w1", queues=["lim"]) is None
        due = pg_store.next_due(["lim"])
        assert due is not None and due <= pg_store.now()
        other.execute("SELECT pg_advisory_unlock_all()")
    job = pg_store.claim("w1", queues=["lim"])
    assert job is not None and job.id == "l1"
    assert pg_store.next_due(["lim"]) is None
