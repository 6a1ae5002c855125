"""An older queuectl database is migrated step by step on open, keeping its jobs."""

from __future__ import annotations

from pathlib import Path

import apsw

from queuectl.models import JobState
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
