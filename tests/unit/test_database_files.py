"""Unusable database files (corrupted, on a read-only filesystem): one clear line, exit 5,
and the stored data left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import clean_env


def q(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuectl", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        input=input,
    )


@pytest.mark.parametrize("command", [["status"], ["list"], ["enqueue", "true"], ["worker", "run", "--burst"]])
def test_a_corrupted_database_gives_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    jobs = "".join(f'{{"command": "echo {i}"}}\n' for i in range(200))
    assert q(tmp_path, "enqueue", "-", input=jobs).returncode == 0
    db = tmp_path / "db" / "queue.db"
    data = bytearray(db.read_bytes())
    # Scribble over the schema page's b-tree (after the 100-byte file header).
    data[100:1000] = b"\xa5" * 900
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    proc = q(tmp_path, *command)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "corrupt" in lines[0] or "not a SQLite database" in lines[0], lines[0]
    assert db.read_bytes() == before


def test_a_read_only_filesystem_gives_one_clear_line(tmp_path: Path) -> None:
    """A real read-only mount (root ignores file modes, so chmod cannot test this)."""
    db_dir = tmp_path / "db"
    db_dir.mkdir(mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(db_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        jobs = "".join(f'{{"command": "echo {i}", "id": "j{i}"}}\n' for i in range(20))
        assert q(tmp_path, "enqueue", "-", input=jobs).returncode == 0
        before = q(tmp_path, "list", "--json").stdout
        remount = ["mount", "-o", "remount,ro", str(db_dir)]
        subprocess.run(remount, check=True, capture_output=True)
        for command in (["enqueue", "true"], ["status"], ["worker", "run", "--burst"]):
            proc = q(tmp_path, *command)
            assert proc.returncode == 5, (command, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "read-only" in lines[0] or "cannot open" in lines[0], lines[0]
        subprocess.run(["mount", "-o", "remount,rw", str(db_dir)], check=True, capture_output=True)
        assert q(tmp_path, "list", "--json").stdout == before
    finally:
        if subprocess.run(["umount", str(db_dir)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(db_dir)], capture_output=True, check=False)
