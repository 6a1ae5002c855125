"""Shared machinery: interleaved runs, statistics, temporary queues, the machine.

A *subject* is anything measured: a zero-argument callable that does one run and
returns its metrics (a dict of floats).  `interleave()` runs a set of subjects in
rounds (A B C, A B C, ...), so a noisy neighbour or a slow drift of the machine hits
all of them alike; a ratio between two subjects is taken inside each round (paired)
before its median and range are reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
#: The interpreter that runs the benchmark also runs every queuectl process.
PYTHON = sys.executable

Sample = dict[str, float]
Subject = Callable[[], Sample]

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress on stderr (the document is the only output that matters)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --- statistics ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, spec: str) -> str:
        if self.n == 1:  # one run: no range to show
            return f"{self.median:{spec}}"
        return f"{self.median:{spec}} ({self.lo:{spec}}–{self.hi:{spec}})"


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value with at least p% of the values
    at or below it (p99 of 200 values is the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Results:
    """Samples per subject; sample i of every subject was taken in round i."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def values(self, subject: str, metric: str) -> list[float]:
        return [s[metric] for s in self.samples[subject]]

    def stat(self, subject: str, metric: str) -> Stat:
        return Stat.of(self.values(subject, metric))

    def ratio(self, num: str, den: str, metric: str, den_metric: str | None = None) -> Stat:
        """num/den per round (paired), then median and range over the rounds both ran
        (a subject with fewer rounds ran in the first ones: see `interleave`)."""
        a = self.values(num, metric)
        b = self.values(den, den_metric or metric)
        return Stat.of([x / y for x, y in zip(a, b, strict=False)])

    def as_json(self) -> dict[str, list[Sample]]:
        return self.samples


def interleave(
    subjects: Mapping[str, Subject],
    rounds: int,
    *,
    label: str,
    warmup: bool = True,
    rounds_of: Mapping[str, int] | None = None,
) -> Results:
    """Run every subject once per round, in the same order each round.

    With `warmup`, each subject first runs once untimed (cold caches, first imports,
    lazily built files), and that run is discarded.  `rounds_of` gives some subjects
    fewer rounds: such a subject runs in the first ones only, so sample i is still
    round i and subjects with the same number of rounds stay paired.
    """
    limit = {name: (rounds_of or {}).get(name, rounds) for name in subjects}
    if warmup:
        for name, fn in subjects.items():
            say(f"{label}: warm-up {name}")
            fn()
    res = Results({name: [] for name in subjects})
    for r in range(max(limit.values(), default=0)):
        for name, fn in subjects.items():
            if r >= limit[name]:
                continue
            sample = fn()
            res.samples[name].append(sample)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sample.items())
            say(f"{label}: round {r + 1}/{limit[name]} {name}: {shown}")
    return res


# --- temporary homes and processes -------------------------------------------------


@contextlib.contextmanager
def temp_dir(tag: str = "") -> Iterator[Path]:
    """A short path under /tmp (supervisord sockets must stay short), removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"qb{tag}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Procs:
    """Processes this benchmark started: waited for, or killed by pid on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        return codes

    def stop_all(self, timeout: float) -> list[int]:
        """SIGTERM every process still running (a worker's warm stop), then wait."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        return self.wait_all(timeout)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()


# --- fresh queues: SQLite or PostgreSQL -------------------------------------------------


@dataclass(frozen=True)
class QueueHome:
    """One fresh queue: a temporary home, and for PostgreSQL the URL of its schema."""

    home: Path
    db: str | None = None  # a postgresql:// URL; None: the home's db/queue.db

    @property
    def cli(self) -> list[str]:
        """The global options that point a `queuectl` process at this queue."""
        return ["--home", str(self.home), *(["--db", self.db] if self.db else [])]

    def open(self) -> Any:
        """A `queuectl.api.Queue` on this queue (its schema is created on first open)."""
        from queuectl.api import Queue
        from queuectl.config import resolve_paths

        return Queue.open(resolve_paths(str(self.home), self.db))


#: The benchmark's PostgreSQL connections (its own and its workers') call themselves
#: this instead of `queuectl`, so a test elsewhere that terminates every `queuectl`
#: backend on the shared server (tests/chaos: pg_terminate) leaves them alone.
PG_APPLICATION = "queuectl-bench"


def schema_url(base: str, schema: str) -> str:
    """`base` with its search_path set to `schema` (as the README tells users to)."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    if not any(k == "application_name" for k, _ in query):
        query.append(("application_name", PG_APPLICATION))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_admin(base: str, sql: str, tries: int = 30) -> Any:
    """One statement on a new connection, and its first row; waits out a server
    restart (about 30 s)."""
    import psycopg

    for attempt in range(tries):
        try:
            with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
                cur = conn.execute(sql)
                return cur.fetchone() if cur.description else None
        except psycopg.OperationalError:
            if attempt + 1 == tries:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A new, empty schema on the server at `base`; yields its URL; dropped after."""
    name = f"qb_{os.getpid()}_{secrets.token_hex(4)}"
    _pg_admin(base, f"CREATE SCHEMA {name}")
    try:
        yield schema_url(base, name)
    finally:
        _pg_admin(base, f"DROP SCHEMA IF EXISTS {name} CASCADE")


def pg_started_at(base: str) -> float:
    """When the server (re)started."""
    return float(_pg_admin(base, "SELECT extract(epoch FROM pg_postmaster_start_time())::float8")[0])


#: PostgreSQL runs done again, and why (reported in the document).
REDONE: list[str] = []


def steady(backend: Backend, fn: Subject, what: str, tries: int = 3) -> Subject:
    """For PostgreSQL, redo a run that failed or during which the server restarted
    (the server is shared: other engineers' tests restart it), up to `tries` times."""
    if backend.pg_url is None:
        return fn
    url = backend.pg_url

    def run() -> Sample:
        for attempt in range(1, tries + 1):
            before = pg_started_at(url)
            try:
                sample = fn()
            except Exception as exc:
                if attempt == tries:
                    raise
                why = " ".join(str(exc).split())[:200]
            else:
                if pg_started_at(url) == before:
                    return sample
                why = "the server restarted during the run"
            REDONE.append(f"{what}: {why}")
            say(f"{what}: run redone ({why})")
        raise RuntimeError(f"{what}: the server restarted during {tries} runs in a row")

    return run


def home_pids(home: Path) -> list[int]:
    """Processes (but this one) working in `home` or under it, or whose command line
    names it: what a queuectl home started (supervisord, workers, monitor, jobs)."""
    mark = str(home)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace")
            if cwd == mark or cwd.startswith(mark + "/") or mark in cmd:
                found.append(int(entry.name))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a live process and its live children, each with
    the children it has reaped (cutime + cstime): e.g. supervisord, its workers with
    their finished jobs, and its monitor."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                st = _stat(int(entry.name))
                if root in (st[0], st[1]):
                    ticks += sum(st[2:6])
    return ticks / os.sysconf("SC_CLK_TCK")


class ServerCPU:
    """CPU seconds used by a local PostgreSQL server: its postmaster and every process
    under it, live (utime + stime) or exited and reaped (the postmaster's cutime +
    cstime), from /proc.  The whole server: other users' queries count too."""

    def __init__(self, base: str) -> None:
        import psycopg

        # A backend's parent is the postmaster; read it while the backend still exists.
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            self.postmaster = _stat(int(row[0]))[1] if row else 0
        self.tick = os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float:
        ticks = sum(_stat(self.postmaster)[2:6])
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    st = _stat(int(entry.name))
                    if st[1] == self.postmaster:
                        ticks += st[2] + st[3]
        return ticks / self.tick


def _stat(pid: int) -> tuple[int, ...]:
    """(pid, ppid, utime, stime, cutime, cstime) of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2 :].split()  # f[0] is field 3 (state)
    return (pid, int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14]))


@dataclass(frozen=True)
class Backend:
    """A store to measure: `key` names it in the raw samples, `title` in the tables."""

    key: str
    title: str
    pg_url: str | None = None  # the server's base URL, for PostgreSQL

    @contextlib.contextmanager
    def fresh(self, tag: str = "") -> Iterator[QueueHome]:
        with temp_dir(tag) as home:
            if self.pg_url is None:
                yield QueueHome(home)
            else:
                with pg_schema(self.pg_url) as url:
                    yield QueueHome(home, url)


SQLITE = Backend("sqlite", "SQLite")
PG_DEFAULT_URL = "postgresql://127.0.0.1:5432/test"


def postgres(url: str) -> Backend:
    return Backend("pg", "PostgreSQL", url)


def postgres_info(url: str) -> str:
    """The server's version and durability settings, for the machine table; raises
    if the server does not answer."""
    import psycopg

    keys = ("server_version", "synchronous_commit", "fsync")
    show = {k: str(_pg_admin(url, f"SHOW {k}", tries=1)[0]) for k in keys}
    parts = urlsplit(url)  # host and port only: never print a password
    where = f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else "the local socket"
    return (
        f"{show['server_version'].split()[0]} at {where} (synchronous_commit={show['synchronous_commit']}, "
        f"fsync={show['fsync']}); psycopg {psycopg.__version__}"
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `predicate` until it holds; RuntimeError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def use_this_checkout() -> None:
    """Measure the queuectl next to this bench/, in this process and in every process it
    starts (PYTHONPATH comes before the venv's editable install), so a benchmark run
    from a clean checkout (`git worktree add`) measures exactly that commit."""
    sys.path.insert(0, str(ROOT))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    try:
        import queuectl
    except ImportError:
        sys.exit("bench: queuectl's dependencies are missing: run with the project's venv, .venv/bin/python")
    if Path(queuectl.__file__).resolve().parent != ROOT / "queuectl":
        sys.exit(f"bench: imported queuectl from {queuectl.__file__}, not from {ROOT}")


# --- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def code_version() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "queuectl")
    return f"{commit}" + (" + uncommitted changes in queuectl/" if dirty else "")


def machine() -> dict[str, str]:
    import apsw

    import queuectl

    load = os.getloadavg()
    return {
        "CPU": _cpu_model(),
        "Cores": f"{os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()} ({PYTHON})",
        "SQLite": apsw.sqlite_lib_version(),
        "APSW": apsw.apsw_version(),
        "queuectl": f"{queuectl.__version__}, commit {code_version()}, from {ROOT}",
        "Date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def load_now() -> str:
    load = os.getloadavg()
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
