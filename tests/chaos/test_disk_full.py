"""A full disk under a SQLite queue (issue 5): the database lives on a 32 MiB tmpfs
(room for the WAL, which grows to wal_autocheckpoint = 4000 pages before it is
folded back) filled up by another file;
once it is full, enqueue fails with one clear line (exit 5), nothing stored is lost
or damaged, and after space is freed the queue carries on.  Needs root (mount); it
skips with the reason elsewhere."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from tests.helpers import QHome, one_line_error


@pytest.fixture
def small_disk_home(tmp_path: Path) -> Iterator[QHome]:
    home = tmp_path / "home"
    db = home / "db"
    db.mkdir(parents=True, mode=0o700)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    h = QHome(home)
    try:
        yield h
    finally:
        h.kill_all()
        if subprocess.run(["umount", str(db)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(db)], capture_output=True, check=False)


def _fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem has no space left."""
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def test_a_full_disk_fails_enqueue_clearly_and_loses_nothing(small_disk_home: QHome) -> None:
    home = small_disk_home
    lines = "".join(f'{{"id": "keep{i:03d}", "command": "echo {i}"}}\n' for i in range(200))
    home.invoke("enqueue", "-", input=lines)
    before = home.dump()
    filler = home.path / "db" / "filler"
    _fill(filler)

    big = "echo " + "x" * 100_000
    failures = []
    for i in range(5):
        proc = home.run("enqueue", big, "--id", f"big{i}")
        if proc.returncode != 0:
            failures.append(proc)
    assert failures, "the full disk took every enqueue"
    line = one_line_error(failures[0], 5)
    assert "full" in line or "disk" in line, line
    # Nothing stored before is lost or damaged (a rejected call stores nothing).
    after = home.dump()
    kept = {row[0] for row in after["jobs"]}
    assert {row[0] for row in before["jobs"]} <= kept
    assert all(k.startswith(("keep", "big")) for k in kept)
    conn = apsw.Connection(str(home.db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    # Reading either works or fails with the same clear kind of error.
    proc = home.run("status", "--json")
    if proc.returncode != 0:
        one_line_error(proc, 5)

    filler.unlink()
    home.enqueue("true", "--id", "after")
    proc = home.run("worker", "run", "--burst", "--poll-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    counts = home.json("status")
    assert counts["completed"] == counts["total"] == len(kept) + 1
    with contextlib.suppress(FileNotFoundError):
        filler.unlink()
