"""Security: owner-only files whatever the umask (also in a clone made under umask
000, and in a home an older clone left open), folders and a conf owned by another
user refused, planted symlinks never followed, a second local user kept out,
SQL-injection-looking ids that round-trip on both stores, and a PostgreSQL password
that appears in no output, log or run file of a working queue."""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl.models import JobState, NewJob
from queuectl.store import Store
from queuectl.store.outcome import Dead
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
        assert store.finish(job.id, job.lease, Dead(1, "err'); --", "", ""), T0 + 2)
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


# --- a home made by someone else's umask --------------------------------------------

REPO = Path(__file__).resolve().parents[2]
#: A second local user for the tests that need one (made with useradd when root).
OTHER_USER = "queuectl-other"
#: An unprivileged owner for files that must belong to "another user".
NOBODY = 65534


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner to another user needs root")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A short folder under /tmp that every user may enter (so only the home's own
    modes keep other users out), removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="qs", dir="/tmp"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _old_clone(home: Path) -> None:
    """A home as a clone of an older repository made it under umask 000: conf/,
    db/ and logs/ tracked (a conf and two .gitkeep files), everything open to all."""
    from queuectl.supervisor import default_conf_dir

    old = os.umask(0)
    try:
        home.mkdir(mode=0o777)
        for name in ("conf", "db", "logs"):
            (home / name).mkdir(mode=0o777)
        conf = home / "conf" / "supervisord.conf"
        conf.write_bytes((default_conf_dir() / "supervisord.conf").read_bytes())
        conf.chmod(0o666)
        for name in ("db", "logs"):
            (home / name / ".gitkeep").touch(mode=0o666)
    finally:
        os.umask(old)


def _queue_files(home: Path) -> list[Path]:
    return [p for d in ("conf", "db", "logs", "run") if (home / d).is_dir() for p in (home / d).iterdir()]


def _assert_owner_only(home: Path) -> None:
    assert _mode(home) & 0o022 == 0, oct(_mode(home))
    for d in ("conf", "db", "logs", "run"):
        assert _mode(home / d) == 0o700, (d, oct(_mode(home / d)))
    files = _queue_files(home)
    names = {p.name for p in files}
    assert {"supervisord.conf", "queue.db", "supervisord.err", "workers.count", "monitor.log"} <= names, names
    for f in files:
        st = f.lstat()
        if stat.S_ISSOCK(st.st_mode):
            assert _mode(f) & 0o077 == 0, f
        else:
            assert stat.S_ISREG(st.st_mode), f
            assert stat.S_IMODE(st.st_mode) == 0o600, f"{f}: {oct(stat.S_IMODE(st.st_mode))}"


def _start_and_run_a_job(c: Cluster) -> None:
    c.fast()
    c.start(1)
    c.run("enqueue", "true")
    wait_until(lambda: c.counts()["completed"] >= 1, 30, "a job done under supervisord")


def test_a_clone_made_under_umask_000_is_owner_only_after_the_first_start(open_parent: Path) -> None:
    """`git clone` of this repository under umask 000, used as a home the way the
    README's first command does: after the first start every folder queuectl uses
    is 0700, every file in them 0600, and the clone's root is not writable by others."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and this repository's own checkout to clone")
    home = open_parent / "q"
    old = os.umask(0)
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(home)], check=True, timeout=120)
        assert _mode(home) == 0o777  # the umask took
        for tracked in ("conf", "db", "logs"):
            assert not (home / tracked).exists(), f"the repository tracks {tracked}/"
        c = Cluster(path=home)
        try:
            _start_and_run_a_job(c)
            _assert_owner_only(home)
        finally:
            c.cleanup()
    finally:
        os.umask(old)


def test_a_home_an_old_clone_left_open_is_made_owner_only(open_parent: Path) -> None:
    """The files are ours, so every start tightens them (and says so for the conf,
    which anyone could have edited before)."""
    home = open_parent / "h"
    _old_clone(home)
    c = Cluster(path=home)
    old = os.umask(0)
    try:
        proc = c.run("status")
        assert "supervisord.conf" in proc.stderr and "warning" in proc.stderr, proc.stderr
        assert _mode(home / "conf" / "supervisord.conf") == 0o600
        _start_and_run_a_job(c)
        _assert_owner_only(home)
        assert c.run("status").stderr == ""  # said once, when it was fixed
    finally:
        os.umask(old)
        c.cleanup()


def _refused(c: Cluster, path: Path, *args: str) -> str:
    proc = c.run(*args, check=False)
    # One error line; a warning may come first (the old clone's conf was open to all).
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("queuectl: warning: ")]
    assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), proc.stderr
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_a_conf_or_folder_owned_by_another_user_is_refused(open_parent: Path) -> None:
    _needs_root()
    home = open_parent / "h"
    _old_clone(home)
    conf = home / "conf" / "supervisord.conf"
    c = Cluster(path=home)
    try:
        os.chown(conf, NOBODY, NOBODY)
        for mode in (0o600, 0o666):
            conf.chmod(mode)
            for args in (
                ("status",),
                ("enqueue", "true"),
                ("worker", "start", "--detach", "--count", "1"),
                ("shutdown",),
                ("worker", "stop"),
            ):
                assert "another user" in _refused(c, conf, *args)
            assert c.supervisord_pid() is None
            assert _mode(conf) == mode  # not ours to change
        os.chown(conf, 0, 0)
        for name in ("conf", "db", "logs"):
            os.chown(home / name, NOBODY, NOBODY)
            assert "another user" in _refused(c, home / name, "status")
            os.chown(home / name, 0, 0)
        os.chown(home, NOBODY, NOBODY)
        assert "another user" in _refused(c, home, "status")
        os.chown(home, 0, 0)
        assert c.run("status").returncode == 0
    finally:
        c.cleanup()


def test_a_home_others_may_write_and_that_cannot_be_fixed_is_refused(open_parent: Path) -> None:
    """A shared folder like /tmp (sticky, writable by all): queuectl does not change
    its mode, it refuses to keep a queue there."""
    home = open_parent / "shared"
    home.mkdir()
    home.chmod(0o1777)
    c = Cluster(path=home)
    try:
        assert "writable by other users" in _refused(c, home, "enqueue", "true")
        assert _mode(home) == 0o1777
        assert not (home / "db").exists()
    finally:
        c.cleanup()


@pytest.mark.parametrize(
    ("planted", "args"),
    [
        ("logs/monitor.log", ("worker", "start", "--detach", "--count", "1")),
        ("logs/supervisord.log", ("worker", "start", "--detach", "--count", "1")),
        ("run/supervisord.err", ("worker", "start", "--detach", "--count", "1")),
        ("run/workers.count", ("worker", "start", "--detach", "--count", "1")),
        ("logs/recovered_jobs_20260101T000000.000000Z.json", ("recover",)),
        ("logs/workers_00.log", ("worker", "run", "--burst")),
    ],
)
def test_planted_symlinks_are_not_followed(open_parent: Path, planted: str, args: tuple[str, ...]) -> None:
    """A symlink another user planted while the folder was open, pointing at a file
    only the queue's user may write: nothing queuectl starts writes through it."""
    home = open_parent / "h"
    _old_clone(home)
    (home / "run").mkdir(mode=0o777)
    (home / "run").chmod(0o777)
    victim = open_parent / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    link = home / planted
    link.symlink_to(victim)
    c = Cluster(path=home)
    try:
        assert "symbolic link" in _refused(c, link, *args)
        assert c.supervisord_pid() is None
        assert victim.read_text() == "secret\n" and _mode(victim) == 0o600
        link.unlink()
        if args[0] == "worker" and args[1] == "start":
            _start_and_run_a_job(c)
            assert victim.read_text() == "secret\n"
    finally:
        c.cleanup()


def _other_user() -> str:
    """A second local user: made with useradd when this runs as root."""
    try:
        pwd.getpwnam(OTHER_USER)
        return OTHER_USER
    except KeyError:
        pass
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("no second local user can be made (needs root and useradd)")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
        check=True,
        capture_output=True,
    )
    return OTHER_USER


def _as(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", script], user=user, capture_output=True, text=True, timeout=30, check=False
    )


def test_a_second_local_user_cannot_edit_the_conf(open_parent: Path) -> None:
    """Before the first start the old clone's conf is open to all (the attack of the
    issue: another user edits command= and it runs as the queue's user); after it,
    the other user can change nothing in the home and read nothing of the queue."""
    user = _other_user()
    home = open_parent / "h"
    _old_clone(home)
    conf = home / "conf" / "supervisord.conf"
    assert _as(user, f"echo '; probe' >> {conf}").returncode == 0  # the hostile setting is real
    c = Cluster(path=home)
    try:
        _start_and_run_a_job(c)
        for script in (
            f"echo '[program:evil]' >> {conf}",
            f"cat {conf}",
            f"mv {home}/conf {home}/conf.old",
            f"echo x > {home}/conf/new.conf",
            f"ln -s /etc/shadow {home}/logs/planted.log",
            f"cat {home}/db/queue.db",
            f"echo x > {home}/run/workers.count",
            f"mkdir {home}/logs2",
        ):
            proc = _as(user, script)
            assert proc.returncode != 0, (script, proc.stdout, proc.stderr)
        assert "evil" not in conf.read_text()
    finally:
        c.cleanup()
