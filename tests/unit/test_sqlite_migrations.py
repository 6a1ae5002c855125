"""An older queuectl database is migrated step by step on open, keeping its jobs."""

from __future__ import annotations

from pathlib import Path

import apsw

from queuectl.models import JobState, NewJob
from queuectl.store.sqlite import APPLICATION_ID, MIGRATIONS, SQLiteStore
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
        assert triggers == {"jobs_history_update"}
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
