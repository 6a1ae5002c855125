"""A database file deleted, replaced, corrupted or truncated under real processes:
every process ends in a clear state (one line, exit 5) instead of working on a file
no one else sees, or retrying forever; a restarted process uses the new file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import apsw
import pytest

from tests.e2e.conftest import Home, wait_until
from tests.e2e.test_fallback import bare_worker, events


def db_files(home: Home) -> list[Path]:
    db = home.path / "db" / "queue.db"
    return [db, db.with_name("queue.db-wal"), db.with_name("queue.db-shm")]


def one_error_line(proc: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    """The single `queuectl: error:` line of a command that exited 5."""
    code, stderr = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    assert code == 5, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("queuectl: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def finished(proc: subprocess.Popen[str], log: Path) -> tuple[int, str]:
    code = proc.wait(timeout=30)
    return code, log.read_text()


def started(home: Home, tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    """A bare `worker run` that has registered and completed one job."""
    log = tmp_path / f"{name}.log"
    worker = bare_worker(home, log)
    job = home.enqueue("true")
    wait_until(lambda: home.job(job)["state"] == "completed", 20, "a first job done")
    return worker, log


# --- deleted or replaced ------------------------------------------------------------


def test_a_deleted_database_stops_the_worker_and_a_restart_uses_the_new_file(
    home: Home, tmp_path: Path
) -> None:
    home.fast()
    worker, log = started(home, tmp_path, "w1")
    for f in db_files(home):  # rm db/queue.db*
        f.unlink(missing_ok=True)
    code, text = finished(worker, log)
    line = one_error_line((code, text))
    assert "deleted" in line and "queue.db" in line, line
    assert events(log, "database_unusable"), text
    # The new file: what a restarted worker (supervisord's restart) works on.
    home.fast()
    job = home.enqueue("true")
    worker2 = bare_worker(home, tmp_path / "w2.log")
    wait_until(lambda: home.job(job)["state"] == "completed", 20, "the job in the new file done")
    assert home.status()["workers"] == 1
    assert worker2.poll() is None


def test_a_replaced_database_stops_the_worker_and_a_restart_uses_the_new_file(
    home: Home, tmp_path: Path
) -> None:
    home.fast()
    worker, log = started(home, tmp_path, "w1")
    # Another queue, made elsewhere (its connections closed, so one self-contained file).
    other = Home(tmp_path / "other")
    other.path.mkdir()
    other.configure(heartbeat_interval="0.2", poll_interval="0.2")
    other.run("enqueue", "--id", "from-the-new-file", "true")
    os.replace(other.path / "db" / "queue.db", db_files(home)[0])
    code, text = finished(worker, log)
    line = one_error_line((code, text))
    assert "replaced" in line, line
    # The old process is gone (its WAL checkpointed into the old file and removed):
    # a new worker opens the new file and runs its job.
    worker2 = bare_worker(home, tmp_path / "w2.log")
    wait_until(lambda: home.job("from-the-new-file")["state"] == "completed", 20, "the new file's job done")
    assert worker2.poll() is None


def test_a_replaced_database_under_supervisord_restarts_every_process_on_the_new_file(
    home: Home, tmp_path: Path
) -> None:
    home.fast()
    home.run("worker", "start", "--count", "2", "--detach")
    wait_until(lambda: home.status()["workers"] == 2, 30, "2 workers under supervisord")
    before = {n: p for n, p in home.sv_processes().items() if p["state"] == "RUNNING"}
    assert len(before) == 3, before  # 2 workers and the monitor
    other = Home(tmp_path / "other")
    other.path.mkdir()
    other.fast()
    other.run("enqueue", "--id", "new-1", "true")
    # Every process holds the old file; the path now names another one.
    tmp = home.path / "db" / "incoming.db"
    shutil.copyfile(other.path / "db" / "queue.db", tmp)
    os.replace(tmp, db_files(home)[0])

    def restarted() -> bool:
        now = home.sv_processes()
        return all(now[n]["pid"] != before[n]["pid"] and now[n]["state"] == "RUNNING" for n in before)

    wait_until(restarted, 60, "supervisord to restart every worker and the monitor")
    wait_until(lambda: home.job("new-1")["state"] == "completed", 30, "the new file's job done")
    job = home.enqueue("true")
    wait_until(lambda: home.job(job)["state"] == "completed", 30, "a job enqueued after the swap")
    logs = "".join(p.read_text() for p in (home.path / "logs").glob("*.log"))
    assert "database_unusable" in logs


# --- corrupt and truncated ----------------------------------------------------------

#: The tables a claim, a list, a recovery pass and the counts read; the rest (config,
#: workers, leases) stays intact, so every process opens the file and starts.
CORRUPT_TABLES = ("jobs", "job_events", "job_counts", "job_counts_upto")


def fill(home: Home, n: int = 300) -> None:
    jobs = "".join(json.dumps({"command": f"echo {i} {'x' * 200}"}) + "\n" for i in range(n))
    home.run("enqueue", "-", input=jobs)


def corrupt_pages(db: Path, tables: tuple[str, ...] = CORRUPT_TABLES) -> None:
    """Overwrite the root pages of `tables` and their indexes (nothing may hold the
    file open: its pages must all be in the main file)."""
    conn = apsw.Connection(str(db))
    try:
        size = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
        marks = ",".join("?" * len(tables))
        rows = conn.execute(
            f"SELECT rootpage FROM sqlite_schema WHERE rootpage > 0 AND tbl_name IN ({marks})", tables
        ).fetchall()
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    for (page,) in rows:
        data[(page - 1) * size : page * size] = b"\xa5" * size
    db.write_bytes(bytes(data))


COMMANDS: list[list[str]] = [
    ["worker", "run", "--burst"],
    ["worker", "run"],
    ["status"],
    ["list"],
    ["recover"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_a_corrupt_page_gives_exit_5_and_one_line(home: Home, command: list[str]) -> None:
    home.fast()
    fill(home)
    corrupt_pages(db_files(home)[0])
    proc = subprocess.run(home.cmd(*command), env=home.env, capture_output=True, text=True, timeout=30)
    line = one_error_line(proc)
    assert "corrupt" in line, line
    assert "busy" not in proc.stderr
    retries = [ln for ln in proc.stderr.splitlines() if "worker_store_error" in ln]
    assert not retries, proc.stderr


@pytest.mark.parametrize("keep", [0.5, 4096 * 3, 4096 * 3 + 1000])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_a_truncated_database_says_corrupt_not_busy(home: Home, command: list[str], keep: float) -> None:
    fill(home)
    db = db_files(home)[0]
    size = db.stat().st_size
    os.truncate(db, int(size * keep) if keep < 1 else int(keep))
    proc = subprocess.run(home.cmd(*command), env=home.env, capture_output=True, text=True, timeout=30)
    line = one_error_line(proc)
    assert "corrupt" in line or "not a database" in line, line
    assert "busy" not in line


def test_a_database_truncated_under_a_running_worker_stops_it(home: Home, tmp_path: Path) -> None:
    home.fast()
    fill(home, 2000)  # pages beyond the first few: the truncation cuts real data
    home.run("worker", "run", "--burst")  # drained, every page checkpointed into the file
    worker, log = started(home, tmp_path, "w1")
    db = db_files(home)[0]
    os.truncate(db, db.stat().st_size // 2)
    code, text = finished(worker, log)
    line = one_error_line((code, text))
    assert "corrupt" in line or "truncated" in line, line
    assert "busy" not in line


def test_the_monitor_stops_on_a_deleted_database(home: Home, tmp_path: Path) -> None:
    home.fast()
    home.run("status")  # the file exists
    log = tmp_path / "monitor.log"
    with open(log, "w") as f:
        monitor = subprocess.Popen(
            home.cmd("monitor", "run"), env=home.env, stdout=subprocess.DEVNULL, stderr=f, text=True
        )
    home.background.append(monitor)
    wait_until(lambda: home.json("status")["recovery"]["last_pass_kind"] == "monitor", 20, "a monitor pass")
    for f in db_files(home):
        f.unlink(missing_ok=True)
    code, text = finished(monitor, log)
    line = one_error_line((code, text))
    assert "deleted" in line, line
    assert events(log, "database_unusable"), text


def test_a_database_truncated_to_nothing_under_a_process_says_corrupt_not_busy(
    home: Home, tmp_path: Path
) -> None:
    """The file cut to 0 bytes while a (stopped) worker holds it and its WAL: a new
    process must not wait for a lock and call it busy."""
    home.fast()
    fill(home)
    worker, log = started(home, tmp_path, "w1")
    db = db_files(home)[0]
    assert db_files(home)[1].stat().st_size > 0  # the worker's WAL
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        os.truncate(db, 0)
        for command in (["status"], ["list"], ["recover"], ["enqueue", "true"]):
            proc = subprocess.run(
                home.cmd(*command), env=home.env, capture_output=True, text=True, timeout=90
            )
            line = one_error_line(proc)
            assert "corrupt" in line or "not a database" in line, (command, line)
            assert "busy" not in line, (command, line)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    code, text = finished(worker, log)
    line = one_error_line((code, text))
    assert "corrupt" in line, line


def test_a_pool_on_a_database_outside_its_home_logs_recoveries_in_its_home(
    home: Home, tmp_path: Path
) -> None:
    """`--home H --db OTHER/db/queue.db worker start`: the workers and the monitor
    under supervisord keep H as their home (a bare --db names its own home only when
    no home is given), so a recovery is logged in H/logs/."""
    other = tmp_path / "other"
    (other / "db").mkdir(parents=True)
    db = str(other / "db" / "queue.db")
    q = ["--db", db]
    home.run(*q, "config", "set", "heartbeat_interval", "0.2")
    home.run(*q, "config", "set", "monitor_interval", "0.3")
    home.run(*q, "worker", "start", "--count", "1", "--detach")
    job = home.run(*q, "enqueue", "sleep 30").stdout.strip()
    inspect = lambda: json.loads(home.run(*q, "inspect", job, "--json").stdout)  # noqa: E731
    wait_until(lambda: inspect()["state"] == "processing", 30, "the job to start")
    worker_pid = int(inspect()["worker_id"].split("-")[-2])
    os.kill(worker_pid, signal.SIGKILL)
    wait_until(lambda: list((home.path / "logs").glob("recovered_jobs_*.json")), 30, "a recovery log in H")
    assert not (other / "logs").exists()
    assert not (other / "run").exists()
    home.run(*q, "shutdown")
