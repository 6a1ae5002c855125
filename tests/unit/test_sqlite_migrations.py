"""An older queuectl database is migrated step by step on open, keeping its jobs."""

from __future__ import annotations

from pathlib import Path

import apsw

from queuectl.models import JobState, NewJob, WorkerInfo
from queuectl.store.outcome import Completed
from queuectl.store.sqlite import APPLICATION_ID, MIGRATIONS, SQLiteStore
from queuectl.trail_files import seal_pending
from tests.helpers import T0


def test_a_version_1_database_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.execute(MIGRATIONS[0])
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute(
        "INSERT INTO jobs (id, command, state, max_retries, priority, timeout, created_at,"
        " updated_at, run_at, next_run_at) VALUES ('old', 'true', 'pending', 3, 0, 60, ?, ?, ?, ?)",
        (T0, T0, T0, T0),
    )
    conn.close()

    store = SQLiteStore(str(path))
    try:
        version = store.conn.execute("PRAGMA user_version").fetchall()[0][0]
        assert version == len(MIGRATIONS)
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
        assert "jobs_due" in indexes and "jobs_worker" not in indexes
        job = store.claim("w1", now=T0 + 1)
        assert job is not None and job.id == "old" and job.state is JobState.PROCESSING
        assert [e.to_state for e in store.history("old")] == ["pending", "processing"]
        assert store.lease_info("monitor") is None  # v2's table exists
    finally:
        store.close()


def test_a_version_5_database_takes_the_v6_index_and_first_events(tmp_path: Path) -> None:
    # v6 narrows jobs_next to the jobs an idle worker must wake for and drops the
    # insert trigger (insert_jobs writes the first event): a job already waiting for
    # its retry stays the next due, and a new job gets one first event, not two.
    path = tmp_path / "v5.db"
    conn = apsw.Connection(str(path))
    for step in MIGRATIONS[:5]:
        conn.execute(step)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=5")
    conn.execute(
        "INSERT INTO jobs (id, command, state, attempts, max_retries, priority, timeout, created_at,"
        " updated_at, run_at, next_run_at) VALUES ('retry', 'false', 'failed', 1, 3, 0, 60, ?, ?, ?, ?)",
        (T0, T0, T0, T0 + 2),
    )
    conn.close()

    store = SQLiteStore(str(path))
    try:
        triggers = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")}
        # v10's dependency triggers come later; no insert trigger is left.
        assert triggers == {"jobs_history_update", "jobs_release_children", "jobs_cancel_children"}
        assert store.next_due() == T0 + 2
        store.enqueue(
            [NewJob("now", "true", 3, 0, 60.0, T0 + 1), NewJob("later", "true", 3, 0, 60.0, T0 + 9)], T0 + 1
        )
        assert [(e.from_state, e.to_state, e.at, e.attempt) for e in store.history("now")] == [
            (None, "pending", T0 + 1, 0)
        ]
        assert len(store.history("later")) == 1
        # The job due on arrival is not in jobs_next; the retry still comes first.
        assert store.next_due() == T0 + 2
        assert store.claim("w1", now=T0 + 1.5).id == "now"  # type: ignore[union-attr]
    finally:
        store.close()


def _counted(store: SQLiteStore) -> dict[str, int]:
    """Every state's count, counted from the jobs table itself."""
    out = {s.value: 0 for s in JobState}
    for state, n in store.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
        out[state] = n
    return out


def _upto(store: SQLiteStore) -> tuple[int, int]:
    """(the snapshot's seq, the newest event's seq)."""
    row = store.conn.execute(
        "SELECT (SELECT seq FROM job_counts_upto), (SELECT coalesce(max(seq), 0) FROM job_events)"
    ).fetchall()[0]
    return int(row[0]), int(row[1])


def test_a_version_6_database_takes_a_counts_snapshot_of_its_jobs(tmp_path: Path) -> None:
    # v7's snapshot is counted from the jobs table, as of the newest event; what
    # happens after is read from the events until a fold moves it into the snapshot.
    path = tmp_path / "v6.db"
    conn = apsw.Connection(str(path))
    for step in MIGRATIONS[:6]:
        conn.execute(step)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=6")
    # Jobs in three states, written as v6 writes them: each insert with its first
    # event, each state change through the history trigger.
    for i in range(5):
        conn.execute(
            "INSERT INTO jobs (id, command, state, max_retries, priority, timeout, created_at,"
            " updated_at, run_at, next_run_at) VALUES (?, 'true', 'pending', 0, 0, 60, ?, ?, ?, ?)",
            (f"j{i}", T0, T0, T0, T0),
        )
        conn.execute(
            "INSERT INTO job_events (job_id, at, from_state, to_state, attempt)"
            " VALUES (?, ?, NULL, 'pending', 0)",
            (f"j{i}", T0),
        )
    for job_id, end in (("j0", "dead"), ("j1", "completed"), ("j2", "completed")):
        conn.execute(
            "UPDATE jobs SET state = 'processing', attempts = 1, lease = 1, worker_id = 'w1' WHERE id = ?",
            (job_id,),
        )
        conn.execute("UPDATE jobs SET state = ? WHERE id = ?", (end, job_id))
    conn.close()

    store = SQLiteStore(str(path))
    try:
        want = {s.value: 0 for s in JobState} | {"pending": 2, "completed": 2, "dead": 1}
        assert _counted(store) == want
        snapshot = dict(store.conn.execute("SELECT state, n FROM job_counts").fetchall())
        assert snapshot == want and store.counts() == want
        assert _upto(store) == (11, 11)  # 5 first events, 3 claims, 3 finishes
        job = store.claim("w2", now=T0)
        assert job is not None
        assert store.counts() == {**want, "pending": 1, "processing": 1}  # from the events
        assert _upto(store) == (11, 12)
        store.fold_counts()
        assert _upto(store) == (12, 12)
        assert store.counts() == _counted(store) == {**want, "pending": 1, "processing": 1}
    finally:
        store.close()


def test_a_bulk_insert_folds_the_counts_and_a_small_one_does_not(tmp_path: Path) -> None:
    from queuectl.store.sqlite.insert import FOLD_MIN_ROWS

    store = SQLiteStore(str(tmp_path / "q.db"))
    try:
        store.enqueue([NewJob("one", "true", 0, 0, 60.0, T0)], T0)
        assert _upto(store) == (0, 1)
        store.enqueue([NewJob(f"b{i}", "true", 0, 0, 60.0, T0) for i in range(FOLD_MIN_ROWS)], T0)
        assert _upto(store) == (FOLD_MIN_ROWS + 1, FOLD_MIN_ROWS + 1)
        assert store.counts() == _counted(store) == {**_counted(store), "pending": FOLD_MIN_ROWS + 1}
    finally:
        store.close()


def test_a_purge_of_the_newest_events_keeps_the_counts_right(tmp_path: Path) -> None:
    # Deleting the newest events lets SQLite hand their seqs out again: the snapshot
    # must then be up to the newest event left, or the next events would be missed.
    store = SQLiteStore(str(tmp_path / "q.db"))
    try:
        store.enqueue(
            [NewJob("keep", "true", 0, 0, 60.0, T0 + 5), NewJob("done", "true", 0, 0, 60.0, T0)], T0
        )
        job = store.claim("w1", now=T0)
        assert job is not None and job.id == "done"
        store.finish(job.id, job.lease, Completed("", ""))
        store.fold_counts()
        assert _upto(store) == (4, 4)
        seal_pending(store)  # a purge deletes only the events the audit trail has sealed
        assert store.purge([JobState.COMPLETED]) == 1
        assert _upto(store) == (1, 1)  # only keep's first event is left
        store.enqueue([NewJob("new", "true", 0, 0, 60.0, T0)], T0)  # takes seq 2 again
        assert _upto(store) == (1, 2)
        assert store.counts() == _counted(store) == {**_counted(store), "pending": 2}
    finally:
        store.close()


def test_a_version_8_database_takes_the_home_of_each_worker(tmp_path: Path) -> None:
    # v9: workers.home; a worker registered by an older queuectl has none, and no
    # home's lifecycle command takes it for its own.
    path = tmp_path / "v8.db"
    conn = apsw.Connection(str(path))
    for step in MIGRATIONS[:8]:
        conn.execute(step)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=8")
    conn.execute(
        "INSERT INTO workers (id, host, pid, proc_start, started_at, heartbeat_at)"
        " VALUES ('old', 'h', 1, 2, ?, ?)",
        (T0, T0),
    )
    conn.close()

    store = SQLiteStore(str(path))
    try:
        assert store.conn.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
        store.register_worker(WorkerInfo("new", "h", 3, 4, T0, T0, home="/srv/q"))
        assert {w.id: w.home for w in store.workers()} == {"old": None, "new": "/srv/q"}
    finally:
        store.close()


def test_both_stores_number_their_schema_versions_alike() -> None:
    # A version number means one model in both stores, so the newest must be equal.
    from queuectl.store.postgres import MIGRATIONS as PG_MIGRATIONS
    from queuectl.store.postgres import SCHEMA_VERSION as PG_VERSION
    from queuectl.store.sqlite import SCHEMA_VERSION

    assert SCHEMA_VERSION == len(MIGRATIONS) == PG_VERSION == len(PG_MIGRATIONS)


def test_a_database_at_the_current_version_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "current.db"
    SQLiteStore(str(path)).close()
    conn = apsw.Connection(str(path))
    before = conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
    conn.execute("INSERT INTO config (key, value) VALUES ('max_retries', '5')")
    conn.close()
    store = SQLiteStore(str(path))
    try:
        ids = (
            store.conn.execute("PRAGMA application_id").fetchall()
            + store.conn.execute("PRAGMA user_version").fetchall()
        )
        assert ids == [(APPLICATION_ID,), (len(MIGRATIONS),)]
        assert (
            store.conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall() == before
        )
        assert store.config_items() == {"max_retries": "5"}
    finally:
        store.close()
