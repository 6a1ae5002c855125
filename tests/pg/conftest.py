"""PostgreSQL-only tests: the real server at 127.0.0.1:5432 (database `test`), each
test in a fresh schema of its own that is dropped afterwards.

If no server answers, these tests are skipped with the reason, except under CI=true,
where they fail: CI must really run them.  QUEUECTL_TEST_PG overrides the server URL.
psycopg is imported lazily, so a checkout without the `postgres` extra skips too.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

    from queuectl.store.postgres import PostgresStore

PG_SERVER = os.environ.get("QUEUECTL_TEST_PG", "postgresql://127.0.0.1:5432/test")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
    pytest.skip(reason)


def admin() -> psycopg.Connection[Any]:
    """A new autocommit connection to the test database, as the current OS user
    (trust auth; a superuser on the test machines, as pg_terminate_backend needs)."""
    import psycopg

    return psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)


def schema_url(schema: str, **params: str) -> str:
    """The server URL whose connections use `schema`, with extra URL parameters."""
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    sep = "&" if "?" in PG_SERVER else "?"
    return f"{PG_SERVER}{sep}options=-csearch_path%3D{schema}{extra}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server URL, once it is known to answer."""
    try:
        import psycopg
    except ImportError as exc:
        _unavailable(f"psycopg is not installed (pip install 'queuectl[postgres]'): {exc}")
        raise AssertionError("unreachable") from None
    try:
        conn = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _unavailable(f"PostgreSQL does not answer at {PG_SERVER}: {first}")
        raise AssertionError("unreachable") from None
    conn.close()
    return PG_SERVER


def _drop(schema: str, deadline: float) -> None:
    """Drop a schema, waiting for the server if a test restarted it."""
    import psycopg

    while True:
        try:
            with admin() as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def pg_schemas(pg_server: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh schemas: each call creates one and returns its name; all
    are dropped at teardown."""
    made: list[str] = []

    def make() -> str:
        schema = f"qpg_{uuid.uuid4().hex[:12]}"
        with admin() as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        made.append(schema)
        return schema

    try:
        yield make
    finally:
        deadline = time.monotonic() + 30
        for schema in made:
            _drop(schema, deadline)


@pytest.fixture
def pg_url(pg_schemas: Callable[[], str]) -> str:
    """The URL of a fresh, empty schema on the test server."""
    return schema_url(pg_schemas())


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresStore]:
    """A PostgresStore on a fresh schema, closed at teardown."""
    from queuectl.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    try:
        yield store
    finally:
        store.close()
