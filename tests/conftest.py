"""Fixtures shared by every tier.

`store` is parametrized over the backends: "sqlite" is a SQLiteStore on a file in
a temporary folder; "postgres" is `open_store(url)` on the real server at
127.0.0.1:5432 (database `test`), each test in a fresh schema that is dropped after.
A missing PostgreSQL skips those tests with the reason, except under CI=true, where
it fails them: CI must really run both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl.store import Store, open_store
from queuectl.store.sqlite import SQLiteStore
from tests.helpers import QUEUECTL_VARS, QHome

PG_SERVER = os.environ.get("QUEUECTL_TEST_PG", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _no_queuectl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the developer's own queue through the environment."""
    for name in QUEUECTL_VARS:
        monkeypatch.delenv(name, raising=False)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


def _postgres_schema() -> Iterator[str]:
    """Yield the URL of a fresh schema on the test server; drop it afterwards."""
    try:
        import queuectl.store.postgres  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "queuectl.store.postgres":
            pytest.skip("PostgreSQL store not built yet")
        _unavailable(f"PostgreSQL support cannot be imported: {exc}")
    import psycopg

    schema = f"qt_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _unavailable(f"PostgreSQL does not answer at {PG_SERVER}: {first}")
        raise AssertionError("unreachable") from None
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


class StoreFactory:
    """Opens stores on one backend and one database; closes them all at teardown."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.opened: list[Store] = []

    def open(self) -> Store:
        store: Store = SQLiteStore(self.url) if self.backend == "sqlite" else open_store(self.url)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in reversed(self.opened):
            store.close()
        self.opened.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory for connections to one fresh database of the backend."""
    if request.param == "sqlite":
        db = tmp_path / "db"
        db.mkdir()
        factory = StoreFactory("sqlite", str(db / "queue.db"))
        try:
            yield factory
        finally:
            factory.close_all()
        return
    gen = _postgres_schema()
    url = next(gen)
    factory = StoreFactory("postgres", url)
    try:
        yield factory
    finally:
        factory.close_all()
        for _ in gen:  # drops the schema
            pass


@pytest.fixture
def store(stores: StoreFactory) -> Store:
    """A Store of the parametrized backend on a fresh, empty database."""
    return stores.open()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    db = tmp_path / "db"
    db.mkdir(exist_ok=True)
    s = SQLiteStore(str(db / "queue.db"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def qhome(tmp_path: Path) -> Iterator[QHome]:
    """A fresh queuectl home (a temporary folder) and the CLI pointed at it; every
    worker process a test started through it is killed at teardown."""
    path = tmp_path / "home"
    path.mkdir()
    home = QHome(path)
    try:
        yield home
    finally:
        home.kill_all()


@pytest.fixture
def make_worker(store: Store) -> Iterator[Callable[..., Any]]:
    """Registered workers on the `store` fixture, quiet, cleaned up (row removed,
    output files closed)."""
    import io

    from queuectl.logs import json_logger
    from queuectl.worker import Worker

    made: list[Worker] = []

    def make(worker_id: str = "w1", **kw: Any) -> Worker:
        w = Worker(store, queue="test", worker_id=worker_id, log=json_logger(io.StringIO()), **kw)
        made.append(w)
        # As run() does: an unregistered worker's heartbeat fails, and it kills its job.
        w.register()
        return w

    try:
        yield make
    finally:
        for w in made:
            w.unregister()
