"""Security (issue 5): owner-only files whatever the umask, SQL-injection-looking
ids that round-trip on both stores, and a PostgreSQL password that appears in no
output, log or run file of a working queue."""

from __future__ import annotations

import getpass
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from queuectl.models import JobState, NewJob
from queuectl.store import Store
from tests.chaos.harness import PG_SERVER, Cluster, pg_available, pg_schema, wait_until
from tests.helpers import T0

NASTY_IDS = [
    "x'); DROP TABLE jobs;--",
    "'; DELETE FROM jobs WHERE ''='",
    '"; UPDATE jobs SET state="completed"; --',
    "%s%s%(now)s{}",
    "1 OR 1=1",
    "\\x27 ; SELECT pg_sleep(5); --",
    "ジョブ-🚀",
]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_are_owner_only_even_under_umask_000() -> None:
    """db/, logs/, run/, conf/ 0700; the database, supervisord.conf, its -wal/-shm, every log (queuectl's,
    supervisord's, the recovery audit log) 0600; the socket not reachable by others;
    with the caller's umask 000, so queuectl sets every mode itself."""
    c = Cluster()
    old = os.umask(0)
    try:
        c.fast()
        c.run("enqueue", "sleep 0.1", "--id", "held")
        # A worker dies right after its claim; `recover --job` writes an audit log.
        assert c.spawn("worker", "run", failpoint="after_claim_commit").wait(timeout=60) == 137
        c.run("recover", "--job", "held")
        c.start(1)
        c.run("enqueue", "true")
        wait_until(lambda: c.counts()["completed"] >= 1, 30, "a job done under supervisord")
        home = c.path
        for d in ("db", "logs", "run", "conf"):
            assert _mode(home / d) & 0o077 == 0, d
        for d in ("db", "logs", "run", "conf"):
            assert _mode(home / d) == 0o700, d
        db = home / "db"
        files = [
            db / "queue.db",
            db / "queue.db-wal",
            db / "queue.db-shm",
            *sorted((home / "logs").iterdir()),
        ]
        assert any(f.name.startswith("recovered_jobs_") for f in files)
        assert any(f.name.startswith("workers_") for f in files)
        for f in files:
            assert f.exists(), f
            assert _mode(f) & 0o077 == 0, f"{f}: {oct(_mode(f))}"
        for f in (home / "logs").glob("recovered_jobs_*.json"):
            assert _mode(f) == 0o600
        sock = home / "run" / "sv.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and _mode(sock) & 0o077 == 0
    finally:
        os.umask(old)
        c.cleanup()


def test_sql_looking_ids_round_trip(store: Store) -> None:
    """Every statement binds its values: these ids are stored, found, claimed,
    finished and retried as plain text, and the tables are all still there."""
    jobs = [NewJob(i, f"echo {i!r}", 0, 0, 60.0, T0) for i in NASTY_IDS]
    assert store.enqueue(jobs, T0) == NASTY_IDS
    for i in NASTY_IDS:
        job = store.get(i)
        assert job is not None and job.id == i and job.command == f"echo {i!r}"
        assert [e.to_state for e in store.history(i)] == ["pending"]
    done = []
    while (job := store.claim("w'; --", T0 + 1)) is not None:
        assert store.finish(job.id, job.lease, JobState.DEAD, None, 1, "err'); --", "", "", T0 + 2)
        done.append(job.id)
    assert sorted(done) == sorted(NASTY_IDS)
    assert sorted(store.dlq_retry([NASTY_IDS[0], NASTY_IDS[3]], T0 + 3)) == sorted(
        [NASTY_IDS[0], NASTY_IDS[3]]
    )
    assert store.get(NASTY_IDS[0]).state is JobState.PENDING  # type: ignore[union-attr]
    assert store.counts()["dead"] == len(NASTY_IDS) - 2
    assert sorted(j.id for j in store.list_jobs()) == sorted(NASTY_IDS)
    assert store.get("x") is None and store.get("' OR '1'='1") is None
    store.config_set({"max_retries": "1'); DROP TABLE config;--"})
    assert store.config_items()["max_retries"] == "1'); DROP TABLE config;--"


def test_sql_looking_ids_through_the_cli(tmp_path: Path) -> None:
    c = Cluster(path=tmp_path / "home")
    c.path.mkdir()
    try:
        for i in NASTY_IDS:
            assert c.run("enqueue", "true", "--id", i).stdout.strip() == i
            assert c.run("inspect", i, "--json").returncode == 0
        proc = c.run("inspect", "' OR '1'='1", check=False)
        assert proc.returncode == 3
        assert c.run("status", "--json").returncode == 0
        assert c.counts()["pending"] == len(NASTY_IDS)
    finally:
        c.cleanup()


@pytest.mark.postgres
def test_a_postgres_password_is_in_no_output_log_or_file() -> None:
    """A working queue whose URL carries a password (the test server trusts local
    connections, so any password is accepted): after supervisord ran workers and
    the monitor, their connections were cut, and every reading command ran, the
    password appears in no output, no log and no file of the home."""
    reason = pg_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    secret = "Pa55-w0rd-not-to-leak"
    user = getpass.getuser()
    with pg_schema() as url:
        url = url.replace("postgresql://", f"postgresql://{user}:{secret}@", 1)
        assert PG_SERVER.startswith("postgresql://127.0.0.1")
        c = Cluster(url)
        try:
            c.fast()
            outputs = []
            ok = c.run("enqueue", "echo hi", "--id", "a")
            outputs.append(ok)
            c.start(2)
            wait_until(lambda: c.counts()["completed"] == 1, 30, "the job done")
            import psycopg

            with psycopg.connect(PG_SERVER, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'queuectl' AND pid <> pg_backend_pid()"
                )
            c.run("enqueue", "echo again", "--id", "b")
            wait_until(lambda: c.counts()["completed"] == 2, 30, "the second job done")
            for args in (["status"], ["status", "--json"], ["worker", "status"], ["inspect", "a", "--json"],
                         ["list"], ["config", "get"], ["recover", "--dry-run"], ["inspect", "nope"],
                         ["enqueue", "true", "--id", "a"]):  # fmt: skip
                outputs.append(c.run(*args, check=False))
            for p in outputs:
                assert secret not in p.stdout + p.stderr, p.args
            sv = c.supervisord_pid()
            assert sv
            os.kill(sv, signal.SIGTERM)
            wait_until(lambda: c.supervisord_pid() is None or not _alive(sv), 60, "supervisord to stop")
            leaks = subprocess.run(
                ["grep", "-rl", "--", secret, str(c.path)], capture_output=True, text=True, check=False
            ).stdout.split()
            assert leaks == [], leaks
        finally:
            c.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
