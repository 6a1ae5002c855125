"""Connections: passwords never shown, and a store that lost its connections (the
server terminated them) carries on with new ones."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from queuectl.errors import StoreError, StoreUnavailable
from queuectl.models import NewJob
from queuectl.store.outcome import Completed
from queuectl.store.postgres import PostgresStore, redact_url
from tests.helpers import T0, clean_env, wait_until
from tests.pg.conftest import admin, schema_url

pytestmark = pytest.mark.postgres


# --- passwords ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/q", "postgresql://u:***@db:5432/q"),
        ("postgres://u:s%40cret@db/q?sslmode=require", "postgres://u:***@db/q?sslmode=require"),
        ("postgresql://db/q?user=u&password=secret", "postgresql://db/q?user=u&password=***"),
        ("postgresql://u@db/q", "postgresql://u@db/q"),
        ("postgresql://u:secret@[broken/q", "postgresql://u:***@[broken/q"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nosuchrole:secret@127.0.0.1:5432/test",  # the server refuses us
        "postgresql://127.0.0.1:5432/test?user=nosuchrole&password=secret",
        "postgresql://u:secret@127.0.0.1:notaport/test",  # libpq refuses the URL
        "postgresql://u:secret@[127.0.0.1/test",  # the URL does not even parse
    ],
)
def test_connection_errors_never_show_the_password(pg_server: str, url: str) -> None:
    with pytest.raises(StoreError) as exc:
        PostgresStore(url)
    assert "secret" not in str(exc.value)
    assert "***" in str(exc.value)


def test_an_unreachable_server_is_unavailable_without_the_password() -> None:
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as exc:
        PostgresStore("postgresql://u:secret@127.0.0.1:1/test", connect_tries=3)
    assert "secret" not in str(exc.value)
    assert "cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:1/test" in str(exc.value)
    assert time.monotonic() - t0 < 30


def test_the_cli_never_prints_the_password(pg_server: str, tmp_path: Path) -> None:
    url = "postgresql://nosuchrole:secret@127.0.0.1:5432/test"
    for args in (["status"], ["worker", "run", "--burst"], ["enqueue", "true"]):
        proc = subprocess.run(
            [sys.executable, "-m", "queuectl", "--home", str(tmp_path), "--db", url, *args],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 5, proc.stderr
        assert "secret" not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


# --- reconnecting ------------------------------------------------------------------------


def _backends(app: str) -> list[int]:
    with admin() as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchall()
    return sorted(r[0] for r in rows)


def _terminate(app: str) -> list[int]:
    """pg_terminate_backend every connection of `app`; wait until they are gone."""
    pids = _backends(app)
    with admin() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    wait_until(lambda: not set(pids) & set(_backends(app)), 10, "the backends to exit")
    return pids


def test_the_store_reconnects_after_its_backends_are_terminated(pg_schemas: Callable[[], str]) -> None:
    schema = pg_schemas()
    app = f"qvictim_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(schema_url(schema, application_name=app))
    other = PostgresStore(schema_url(schema))
    try:
        store.enqueue([NewJob(f"j{i}", "true", 0, 0, 1.0, T0) for i in range(3)], now=T0)
        store.wait_for_change(5)  # opens the LISTEN connection
        old = _terminate(app)
        assert len(old) == 2

        # A write goes to a new connection, not down the dead one.
        job = store.claim("w", now=T0)
        assert job is not None
        assert store.finish(job.id, job.lease, Completed("", ""), T0)
        # So does a read; and again after a second termination.
        _terminate(app)
        assert store.counts()["completed"] == 1

        # The listener notices its connection went (a wake-up), LISTENs again (a
        # wake-up, so nothing sent in between is missed), then sleeps until a NOTIFY.
        store.wait_for_change(5)
        store.wait_for_change(5)
        woke = threading.Event()
        thread = threading.Thread(target=lambda: (store.wait_for_change(30), woke.set()))
        thread.start()
        other.enqueue([NewJob("late", "true", 0, 0, 1.0, T0)], now=T0)
        thread.join(timeout=20)
        assert woke.is_set()
        assert not set(old) & set(_backends(app))
    finally:
        store.close()
        other.close()


def test_a_write_cut_off_mid_statement_is_unavailable_then_recovers(pg_schemas: Callable[[], str]) -> None:
    """A statement whose backend dies under it may or may not have committed: the
    store says StoreUnavailable (it does not guess), and the next call reconnects."""
    schema = pg_schemas()
    app = f"qvictim_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(schema_url(schema, application_name=app))
    try:
        pid = _backends(app)[0]
        blocker = admin()
        try:
            # Hold the config row so the store's write waits inside the server.
            blocker.execute(f'SET search_path = "{schema}"')
            store.config_set({"k": "1"})
            blocker.execute("BEGIN")
            blocker.execute("SELECT * FROM config FOR UPDATE")
            failed: list[BaseException] = []

            def write() -> None:
                try:
                    store.config_set({"k": "2"})
                except BaseException as exc:
                    failed.append(exc)

            thread = threading.Thread(target=write)
            thread.start()
            wait_until(lambda: _waiting(pid), 10, "the write to wait for the lock")
            with admin() as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            thread.join(timeout=20)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert failed and isinstance(failed[0], StoreUnavailable), failed
        store.config_set({"k": "3"})
        assert store.config_items() == {"k": "3"}
    finally:
        store.close()


def _waiting(pid: int) -> bool:
    with admin() as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return bool(row and row[0] == "Lock")


def test_no_psycopg_error_escapes(pg_store: PostgresStore) -> None:
    """A value PostgreSQL cannot hold is a queuectl error, not a driver one."""
    from queuectl.errors import QueuectlError

    with pytest.raises(QueuectlError) as exc:
        pg_store.enqueue([NewJob("big", "true", 0, 2**70, 1.0, T0)])
    assert type(exc.value).__module__ == "queuectl.errors"
    assert pg_store.counts()["pending"] == 0
