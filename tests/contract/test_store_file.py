"""Store.check_database() and the errors of a damaged database, on every backend:
a usable database passes the check; a SQLite file deleted, replaced or truncated
under an open store fails it with StoreGone / StoreCorrupt, and a corrupt page is
StoreCorrupt (exit 5, never "busy", never retried)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import apsw
import pytest

from queuectl.errors import StoreBusy, StoreCorrupt, StoreFatal, StoreGone
from queuectl.models import JobState, NewJob
from queuectl.store.sqlite import SQLiteStore
from tests.conftest import StoreFactory
from tests.helpers import T0


def jobs(n: int) -> list[NewJob]:
    return [NewJob(f"j{i}", f"echo {i} {'x' * 300}", 3, 0, 30.0, T0) for i in range(n)]


def test_a_usable_database_passes_the_check(stores: StoreFactory) -> None:
    a, b = stores.open(), stores.open()
    a.check_database()
    a.enqueue(jobs(50), now=T0)
    assert a.claim("w1", now=T0) is not None
    a.check_database()
    b.check_database()  # another connection's writes, checkpoints included
    assert b.counts()[JobState.PENDING.value] == 49


def test_exit_code_of_every_fatal_store_error_is_5() -> None:
    for cls in (StoreFatal, StoreGone, StoreCorrupt):
        assert cls("x").exit_code == 5
    assert issubclass(StoreGone, StoreFatal) and issubclass(StoreCorrupt, StoreFatal)
    assert not issubclass(StoreBusy, StoreFatal)


# --- SQLite: the file under the store --------------------------------------------------


def sqlite_factory(stores: StoreFactory) -> Path:
    if stores.backend != "sqlite":
        pytest.skip("PostgreSQL: the server owns its files (check_database checks nothing)")
    return Path(stores.url)


def test_a_deleted_file_is_store_gone(stores: StoreFactory) -> None:
    path = sqlite_factory(stores)
    store = stores.open()
    store.enqueue(jobs(3), now=T0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreGone, match="deleted"):
        store.check_database()


def test_a_replaced_file_is_store_gone(stores: StoreFactory, tmp_path: Path) -> None:
    path = sqlite_factory(stores)
    store = stores.open()
    store.enqueue(jobs(3), now=T0)
    other = SQLiteStore(str(tmp_path / "other.db"))
    other.close()
    shutil.copyfile(tmp_path / "other.db", tmp_path / "incoming.db")
    os.replace(tmp_path / "incoming.db", path)
    with pytest.raises(StoreGone, match="replaced"):
        store.check_database()


@pytest.mark.parametrize("cut", ["half", "odd"])
def test_a_truncated_file_is_store_corrupt(stores: StoreFactory, cut: str) -> None:
    path = sqlite_factory(stores)
    writer = stores.open()
    writer.enqueue(jobs(500), now=T0)
    writer.close()  # the last connection: everything checkpointed into the file
    store = stores.open()
    store.check_database()
    size = path.stat().st_size
    os.truncate(path, size // 2 if cut == "half" else size - 100)
    with pytest.raises(StoreCorrupt, match="truncated"):
        store.check_database()


def test_a_corrupt_page_is_store_corrupt_not_busy(stores: StoreFactory) -> None:
    path = sqlite_factory(stores)
    writer = stores.open()
    writer.enqueue(jobs(500), now=T0)
    writer.close()
    conn = apsw.Connection(str(path))
    size = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
    root = int(conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'jobs'").fetchall()[0][0])
    conn.close()
    store = stores.open()
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xa5" * size)
    with pytest.raises(StoreCorrupt, match="corrupt"):
        store.list_jobs()
    with pytest.raises(StoreCorrupt):
        store.claim("w1", now=T0)


def test_a_file_that_is_not_a_database_is_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not a database\n" * 400)
    with pytest.raises(StoreCorrupt, match="not a SQLite database"):
        SQLiteStore(str(path))


def test_closing_a_store_whose_file_was_deleted_keeps_the_new_files_wal(stores: StoreFactory) -> None:
    """rm db/queue.db* under a running process, and a new process at work on the new
    file: the old process's close must not delete the new file's WAL (its commits)."""
    path = sqlite_factory(stores)
    old = SQLiteStore(str(path))
    old.enqueue(jobs(3), now=T0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()
    new = SQLiteStore(str(path))
    try:
        new.enqueue([NewJob("in-the-new-file", "true", 3, 0, 30.0, T0)], now=T0)
        with pytest.raises(StoreGone):
            old.check_database()
        old.close()  # the last connection on the old file
        later = SQLiteStore(str(path))
        try:
            assert later.get("in-the-new-file") is not None
            assert later.get("j0") is None
        finally:
            later.close()
    finally:
        new.close()


def test_closing_a_store_whose_file_was_replaced_removes_its_own_wal(
    stores: StoreFactory, tmp_path: Path
) -> None:
    """mv other.db db/queue.db under a running process: the old -wal at the path is
    the old file's; the old process's close takes it away, so the new file opens
    clean (not overlaid with the old file's pages)."""
    path = sqlite_factory(stores)
    old = SQLiteStore(str(path))
    old.enqueue(jobs(300), now=T0)
    other = SQLiteStore(str(tmp_path / "other.db"))
    other.enqueue([NewJob("in-the-new-file", "true", 3, 0, 30.0, T0)], now=T0)
    other.close()
    os.replace(tmp_path / "other.db", path)
    old.close()
    assert not Path(f"{path}-wal").exists()
    later = SQLiteStore(str(path))
    try:
        assert later.get("in-the-new-file") is not None
        assert later.get("j0") is None
        assert later.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        later.close()


def test_an_empty_file_beside_a_wal_with_frames_is_store_corrupt_not_busy(stores: StoreFactory) -> None:
    """Cut to 0 bytes while another connection holds it and its WAL: opening it must
    not wait for the lock and call it busy."""
    path = sqlite_factory(stores)
    holder = SQLiteStore(str(path))
    try:
        holder.enqueue(jobs(20), now=T0)
        assert Path(f"{path}-wal").stat().st_size > 0
        os.truncate(path, 0)
        with pytest.raises(StoreCorrupt, match="truncated"):
            SQLiteStore(str(path))
    finally:
        holder.close()
