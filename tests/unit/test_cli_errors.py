"""Bad input: each case ends in one line on stderr, a non-zero exit (2 for
usage errors, see queuectl/errors.py), no traceback, and the stored data unchanged.
Run through `python -m queuectl`, so main()'s exit codes are the real ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from queuectl.errors import EXIT_CODES
from tests.helpers import QHome, clean_env, one_line_error

USAGE, NOT_FOUND, CONFLICT, STORE = 2, 3, 4, 5


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> QHome:
    """A home holding a pending, a completed and a dead job, and a config value."""
    path = tmp_path_factory.mktemp("bad-input") / "home"
    path.mkdir()
    home = QHome(path)
    home.enqueue('{"id": "done", "command": "echo ok"}')
    home.enqueue('{"id": "dead", "command": "false", "max_retries": 0}')
    proc = home.run("worker", "run", "--burst", "--poll-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    home.enqueue('{"id": "waiting", "command": "true", "delay": 3600}')
    home.configure(max_retries=4)
    assert {j["id"]: j["state"] for j in home.json("list")} == {
        "done": "completed",
        "dead": "dead",
        "waiting": "pending",
    }
    return home


GOOD = '{"command": "true"}'

CASES = [
    # invalid JSON
    (["enqueue", '{"command": "true"'], None, USAGE, "invalid JSON"),
    (["enqueue", '{"command": "true", "priority": NaN}'], None, USAGE, "invalid JSON"),
    (["enqueue", "-"], f"{GOOD}\nnot json\n", USAGE, "line 2"),
    (["enqueue", "-"], '["echo hi"]\n', USAGE, "JSON object"),
    # missing or empty command
    (["enqueue", '{"id": "x"}'], None, USAGE, "command"),
    (["enqueue", ""], None, USAGE, "command must not be empty"),
    (["enqueue", '{"command": "   "}'], None, USAGE, "command must not be empty"),
    (["enqueue", '{"command": null}'], None, USAGE, "command"),
    (["enqueue", "-"], "", USAGE, "no jobs"),
    # unknown fields
    (["enqueue", '{"command": "true", "retries": 3}'], None, USAGE, "unknown field"),
    (["enqueue", '{"command": "true", "state": "completed"}'], None, USAGE, "state"),
    # wrong types
    (["enqueue", '{"command": 5}'], None, USAGE, "command"),
    (["enqueue", '{"command": ["true"]}'], None, USAGE, "command"),
    (["enqueue", '{"command": "true", "max_retries": "3"}'], None, USAGE, "max_retries"),
    (["enqueue", '{"command": "true", "max_retries": true}'], None, USAGE, "max_retries"),
    (["enqueue", '{"command": "true", "priority": 1.5}'], None, USAGE, "priority"),
    (["enqueue", '{"command": "true", "timeout": "10 minutes"}'], None, USAGE, "timeout"),
    (["enqueue", '{"command": "true", "timeout": 0}'], None, USAGE, "timeout"),
    (["enqueue", '{"command": "true", "delay": "soon"}'], None, USAGE, "delay"),
    (["enqueue", '{"command": "true", "run_at": 5}'], None, USAGE, "run_at"),
    (["enqueue", '{"command": "true", "run_at": "tomorrow"}'], None, USAGE, "run_at"),
    (["enqueue", '{"command": "true", "id": 5}'], None, USAGE, "id"),
    (["enqueue", '{"command": "true", "id": ""}'], None, USAGE, "id"),
    (["enqueue", '{"command": "true", "id": "a\\u0001b"}'], None, USAGE, "control characters"),
    (["enqueue", '{"command": "echo \\u0000"}'], None, USAGE, "NUL"),
    (["enqueue", '{"command": "echo \\ud800"}'], None, USAGE, "UTF-8"),
    (["enqueue", "-"], json.dumps({"command": "x" * 200_000}) + "\n", USAGE, "longer than"),
    (["enqueue", '{"command": "true", "priority": 1e400}'], None, USAGE, "priority"),
    (["enqueue", "true", "--priority", "high"], None, USAGE, "--priority"),
    (["enqueue", "true", "--timeout", "abc"], None, USAGE, "--timeout"),
    (["enqueue", "true", "--delay", "1", "--run-at", "2030-01-01T00:00:00Z"], None, USAGE, "not both"),
    (["enqueue", "-"], b'{"command": "echo \xff"}\n', USAGE, "UTF-8"),
    (["enqueue", "-", "--id", "x"], f"{GOOD}\n{GOOD}\n", USAGE, "--id"),
    # negative retries
    (["enqueue", '{"command": "true", "max_retries": -1}'], None, USAGE, "max_retries"),
    (["enqueue", "true", "--max-retries", "-1"], None, USAGE, "max_retries"),
    (["enqueue", "true", "--delay", "-5"], None, USAGE, "delay"),
    (["enqueue", "-"], f'{GOOD}\n{{"command": "true", "max_retries": -2}}\n', USAGE, "max_retries"),
    # duplicate id
    (["enqueue", '{"id": "done", "command": "true"}'], None, CONFLICT, "already exists"),
    (["enqueue", "true", "--id", "waiting"], None, CONFLICT, "already exists"),
    (["enqueue", "-"], f'{GOOD}\n{{"id": "dead", "command": "true"}}\n', CONFLICT, "dead"),
    (["enqueue", "-"], '{"id": "n1", "command": "true"}\n{"id": "n1", "command": "true"}\n', CONFLICT, "n1"),
    # unknown state
    (["list", "--state", "bogus"], None, USAGE, "unknown state"),
    (["list", "--state", "bogus", "--json"], None, USAGE, "unknown state"),
    (["list", "--limit", "-1"], None, USAGE, "--limit"),
    (["purge", "--state", "pending", "--yes"], None, USAGE, "--state"),
    # unknown job id
    (["inspect", "nope"], None, NOT_FOUND, "nope"),
    (["inspect", "nope", "--json"], None, NOT_FOUND, "nope"),
    (["logs", "nope"], None, NOT_FOUND, "nope"),
    (["dlq", "retry", "nope"], None, NOT_FOUND, "nope"),
    (["dlq", "retry", "dead", "nope"], None, NOT_FOUND, "nope"),
    (["dlq", "retry", "waiting"], None, CONFLICT, "not dead"),
    (["dlq", "retry", "dead", "done"], None, CONFLICT, "not dead"),
    (["dlq", "retry"], None, USAGE, "--all"),
    (["dlq", "retry", "dead", "--all"], None, USAGE, "--all"),
    # unknown config key or bad value
    (["config", "get", "nope"], None, USAGE, "unknown config key"),
    (["config", "get", "nope", "--json"], None, USAGE, "unknown config key"),
    (["config", "set", "nope", "1"], None, USAGE, "unknown config key"),
    (["config", "set", "max-retries", "abc"], None, USAGE, "max_retries"),
    (["config", "set", "max_retries", "-1"], None, USAGE, "max_retries"),
    (["config", "set", "max_retries", "1.5"], None, USAGE, "max_retries"),
    (["config", "set", "max_retries", "100000"], None, USAGE, "max_retries"),
    (["config", "set", "backoff_base", "0"], None, USAGE, "backoff_base"),
    (["config", "set", "job_timeout", "nan"], None, USAGE, "job_timeout"),
    (["config", "set", "backoff_max", "inf"], None, USAGE, "backoff_max"),
    (["config", "set", "heartbeat_interval", "10"], None, USAGE, "heartbeat_timeout"),
    (["config", "set", "heartbeat_timeout", "5"], None, USAGE, "heartbeat_interval"),
    (["config", "set", "synchronous", "sometimes"], None, USAGE, "synchronous"),
    (["config", "set", "max_retries"], None, USAGE, "VALUE"),
    # usage
    (["frobnicate"], None, USAGE, "frobnicate"),
    (["list", "--bogus"], None, USAGE, "--bogus"),
    (["worker", "run", "--poll-interval", "0"], None, USAGE, "--poll-interval"),
]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "fragment"),
    CASES,
    ids=[f"{i:02d}-{' '.join(c[0])[:40]}" for i, c in enumerate(CASES)],
)
def test_bad_input_is_one_line_and_changes_nothing(
    populated: QHome, args: list[str], stdin: str | bytes | None, code: int, fragment: str
) -> None:
    before = populated.dump()
    if isinstance(stdin, bytes):
        proc = subprocess.run(
            populated.cmd(*args), input=stdin, env=populated.env, capture_output=True, timeout=60, check=False
        )
        result = subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
        )
    else:
        result = populated.run(*args, input=stdin)
    line = one_line_error(result, code)
    assert fragment in line
    assert populated.dump() == before


def test_exit_codes_are_documented_in_help(qhome: QHome) -> None:
    text = qhome.run("--help").stdout
    for code in EXIT_CODES:
        assert f"{code} " in text
    assert "usage error" in text


# --- databases that cannot be used -------------------------------------------------------


def test_a_missing_home_folder(tmp_path: Path) -> None:
    home = QHome(tmp_path / "no-such-home")
    line = one_line_error(home.run("enqueue", "true"), USAGE)
    assert "does not exist" in line
    assert not home.path.exists()


def test_a_database_file_that_is_not_sqlite(qhome: QHome) -> None:
    (qhome.path / "db").mkdir()
    junk = os.urandom(8192)
    qhome.db.write_bytes(junk)
    for args in (["enqueue", "true"], ["status"], ["list", "--json"], ["worker", "run", "--burst"]):
        line = one_line_error(qhome.run(*args), STORE)
        assert "not a SQLite database" in line
    assert qhome.db.read_bytes() == junk
    assert sorted(p.name for p in (qhome.path / "db").iterdir()) == ["queue.db"]


def test_a_sqlite_database_of_another_program(qhome: QHome) -> None:
    (qhome.path / "db").mkdir()
    conn = apsw.Connection(str(qhome.db))
    conn.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);"
        " INSERT INTO accounts VALUES (1, 100)"
    )
    conn.close()
    line = one_line_error(qhome.run("enqueue", "true"), STORE)
    assert "not a queuectl" in line
    conn = apsw.Connection(str(qhome.db))
    try:
        assert conn.execute("SELECT * FROM accounts").fetchall() == [(1, 100)]
        assert conn.execute("SELECT name FROM sqlite_schema").fetchall() == [("accounts",)]
    finally:
        conn.close()


def test_a_database_from_a_newer_queuectl(qhome: QHome) -> None:
    qhome.enqueue("true", "--id", "kept")
    conn = apsw.Connection(str(qhome.db))
    conn.execute("PRAGMA user_version=999")
    conn.close()
    before = qhome.dump()
    line = one_line_error(qhome.run("list"), STORE)
    assert "newer" in line
    assert qhome.dump() == before


def test_a_db_path_under_a_regular_file(qhome: QHome) -> None:
    blocker = qhome.path / "plain-file"
    blocker.write_text("not a folder\n")
    line = one_line_error(qhome.run("--db", str(blocker / "queue.db"), "enqueue", "true"), STORE)
    assert str(blocker) in line
    assert blocker.read_text() == "not a folder\n"


def test_a_db_folder_that_is_a_file(qhome: QHome) -> None:
    (qhome.path / "db").write_text("in the way\n")
    line = one_line_error(qhome.run("enqueue", "true"), STORE)
    assert "db" in line
    assert (qhome.path / "db").read_text() == "in the way\n"


NOBODY = 65534


@pytest.fixture
def unprivileged_home() -> Iterator[tuple[QHome, list[str]]]:
    """A home in /tmp owned by the user that will run queuectl: ourselves, or, when
    the tests run as root (whom file modes do not stop), `nobody` through setpriv."""
    if os.geteuid() != 0:
        path = Path(tempfile.mkdtemp(prefix="qro"))
        prefix: list[str] = []
    else:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop privileges")
        path = Path(tempfile.mkdtemp(prefix="qro", dir="/tmp"))
        os.chmod(path, 0o755)
        os.chown(path, NOBODY, NOBODY)
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    try:
        yield QHome(path), prefix
    finally:
        for p in (path, path / "db", path / "fresh" / "db"):
            if p.exists():
                os.chmod(p, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _run_as(home: QHome, prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *home.cmd(*args)], env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


def test_a_db_folder_that_cannot_be_written(unprivileged_home: tuple[QHome, list[str]]) -> None:
    home, as_user = unprivileged_home
    proc = _run_as(home, as_user, "enqueue", "true", "--id", "first")
    if as_user and proc.returncode != 0 and "queuectl: error" not in proc.stderr:
        pytest.skip(f"the interpreter cannot run as nobody here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr

    def stored() -> tuple[str, str]:
        # Read as the same user: a root reader would leave root-owned -shm files.
        listed = _run_as(home, as_user, "list", "--json")
        inspected = _run_as(home, as_user, "inspect", "first", "--json")
        assert listed.returncode == inspected.returncode == 0, listed.stderr + inspected.stderr
        return listed.stdout, inspected.stdout

    before = stored()
    assert sorted(os.listdir(home.path / "db")) == ["queue.db"]  # -wal/-shm gone with the last close
    os.chmod(home.path / "db", 0o500)  # no -wal/-shm can be made there now
    line = one_line_error(_run_as(home, as_user, "enqueue", "true", "--id", "second"), STORE)
    assert str(home.path / "db") in line
    os.chmod(home.path / "db", 0o700)
    assert stored() == before
    # A fresh home whose db/ folder exists but is read-only: no database can be created.
    fresh = home.path / "fresh"
    (fresh / "db").mkdir(parents=True)
    if as_user:
        os.chown(fresh, NOBODY, NOBODY)  # fresh/db is nobody's too
        os.chown(fresh / "db", NOBODY, NOBODY)
    os.chmod(fresh / "db", 0o500)
    line = one_line_error(_run_as(QHome(fresh), as_user, "enqueue", "true"), STORE)
    assert "queue.db" in line
    assert os.listdir(fresh / "db") == []
    os.chmod(fresh / "db", 0o700)
