"""A corrupted database file: one clear line, exit 5, and the file left as it was."""

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
