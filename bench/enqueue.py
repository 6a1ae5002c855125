"""Bulk enqueue rate: the CLI from stdin and the library API, next to the database itself,
on SQLite and on PostgreSQL.

Every run inserts N jobs into a fresh, already created queue (SQLite: a new database
file; PostgreSQL: a new schema).  The baseline is what the database does with the
same rows and nothing else, in one transaction: SQLite, one APSW `executemany` into a
table with the jobs table's columns but no index and no history trigger, with the
store's settings (WAL, synchronous=NORMAL); PostgreSQL, one `COPY` into such a table.
`store.enqueue` adds the indexes and the history (PostgreSQL: by COPY too, from 64
jobs on, plus the `pg_notify`); `Queue.enqueue_many` adds validation and id
generation; `queuectl enqueue -` adds the interpreter, JSON parsing and printing the
ids.  Each PostgreSQL path is also reported as a ratio to the same path on SQLite,
paired in each round.

Then one job per process (issue 6): `queuectl enqueue true` (the venv's console
script) on an existing queue, call after call, alternating with `python -c pass`
(the same interpreter), as a ratio; also with the queue held open by another
process, as it is while a worker runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import PYTHON, ROOT, SQLITE, Backend, QueueHome, Results, Sample, interleave, steady, temp_dir
from report import Doc, Target, table

_BARE_TABLE = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, command TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, timeout REAL NOT NULL, lease INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, run_at REAL NOT NULL, next_run_at REAL,
    started_at REAL, finished_at REAL, worker_id TEXT, exit_code INTEGER, error TEXT,
    stdout TEXT, stderr TEXT, reason TEXT
) STRICT
"""

#: The PostgreSQL store's jobs table (queuectl/store/postgres/schema.py) without its indexes
#: (the primary key aside, as in SQLite's bare table) and without the history trigger.
_PG_BARE_TABLE = """
CREATE TABLE jobs (
    id text COLLATE "C" PRIMARY KEY, command text NOT NULL, state text NOT NULL,
    attempts bigint NOT NULL DEFAULT 0, max_retries bigint NOT NULL,
    priority bigint NOT NULL DEFAULT 0, timeout double precision NOT NULL,
    lease bigint NOT NULL DEFAULT 0, created_at double precision NOT NULL,
    updated_at double precision NOT NULL, run_at double precision NOT NULL,
    next_run_at double precision, started_at double precision, finished_at double precision,
    worker_id text, exit_code bigint, error text, stdout text, stderr text, reason text
)
"""


def _specs(n: int) -> list[dict[str, str]]:
    return [{"command": f"echo job {i}"} for i in range(n)]


def _new_jobs(n: int) -> list[Any]:
    from queuectl.models import NewJob, new_id

    now = time.time()
    return [
        NewJob(id=new_id(now), command=f"echo job {i}", max_retries=3, priority=0, timeout=60.0, run_at=now)
        for i in range(n)
    ]


def bare_sqlite(n: int) -> Sample:
    import apsw

    rows = [(j.id, j.command, j.max_retries, j.priority, j.timeout, j.run_at) for j in _new_jobs(n)]
    with temp_dir("e") as d:
        conn = apsw.Connection(str(d / "bare.db"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_BARE_TABLE)
        t0 = time.perf_counter()
        with conn:
            conn.executemany(
                "INSERT INTO jobs (id, command, state, max_retries, priority, timeout,"
                " created_at, updated_at, run_at, next_run_at)"
                " VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?6, ?6)",
                rows,
            )
        elapsed = time.perf_counter() - t0
        conn.close()
    return {"rate": n / elapsed}


def bare_postgres(backend: Backend) -> Callable[[int], Sample]:
    def run(n: int) -> Sample:
        import psycopg

        # created_at, updated_at, run_at, next_run_at: one instant, as the store writes them
        rows = [
            (j.id, j.command, "pending", j.max_retries, j.priority, j.timeout, *[j.run_at] * 4)
            for j in _new_jobs(n)
        ]
        with backend.fresh("e") as qh:
            assert qh.db is not None
            with psycopg.connect(qh.db, autocommit=True) as conn:
                conn.execute(_PG_BARE_TABLE)
                t0 = time.perf_counter()
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(
                        "COPY jobs (id, command, state, max_retries, priority, timeout,"
                        " created_at, updated_at, run_at, next_run_at) FROM STDIN"
                    ) as copy,
                ):
                    for r in rows:
                        copy.write_row(r)
                elapsed = time.perf_counter() - t0
        return {"rate": n / elapsed}

    return run


def _with_queue(fn: Callable[[Any, int, QueueHome], float], backend: Backend) -> Callable[[int], Sample]:
    """Run fn(queue, n, home) on a fresh queue whose database (or schema) already
    exists; fn returns the seconds its timed part took."""

    def run(n: int) -> Sample:
        with backend.fresh("e") as qh:
            q = qh.open()
            try:
                elapsed = fn(q, n, qh)
            finally:
                q.close()
        return {"rate": n / elapsed}

    return run


def _store(q: Any, n: int, qh: QueueHome) -> float:
    jobs = _new_jobs(n)
    t0 = time.perf_counter()
    q.store.enqueue(jobs)
    return time.perf_counter() - t0


def _api(q: Any, n: int, qh: QueueHome) -> float:
    specs = _specs(n)
    t0 = time.perf_counter()
    ids = q.enqueue_many(specs)
    elapsed = time.perf_counter() - t0
    assert len(ids) == n
    return elapsed


def _cli(q: Any, n: int, qh: QueueHome) -> float:
    data = "".join(json.dumps(s) + "\n" for s in _specs(n)).encode()
    q.close()  # the CLI process is the only one with the database open
    argv = [PYTHON, "-m", "queuectl", *qh.cli, "enqueue", "-"]
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, input=data, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or out.stdout.count(b"\n") != n:
        raise RuntimeError(f"queuectl enqueue - failed ({out.returncode}): {out.stderr[-500:]!r}")
    return elapsed


#: The paths measured: key, title, and the run for a backend.
PATHS: tuple[tuple[str, str, Callable[[Backend], Callable[[int], Sample]]], ...] = (
    (
        "bare",
        "The database alone, bare table (baseline)",
        lambda b: bare_postgres(b) if b.pg_url else bare_sqlite,
    ),
    ("store", "`store.enqueue` (indexes + first history events)", lambda b: _with_queue(_store, b)),
    ("api", "`Queue.enqueue_many` (library API: + validation, ids)", lambda b: _with_queue(_api, b)),
    ("cli", "`queuectl enqueue -` from stdin (whole process)", lambda b: _with_queue(_cli, b)),
)


def _key(backend: Backend, path: str) -> str:
    return path if backend.key == "sqlite" else f"{backend.key}-{path}"


def run(
    doc: Doc, *, jobs: int, rounds: int, backends: Sequence[Backend] = (SQLITE,), single_calls: int = 40
) -> dict[str, object]:
    subjects = {}
    for b in backends:
        for path, _, make in PATHS:
            fn = make(b)
            subjects[_key(b, path)] = steady(b, lambda fn=fn: fn(jobs), f"enqueue {_key(b, path)}")
    res = interleave(subjects, rounds, label="enqueue")
    _report(doc, res, jobs, rounds, backends)
    raw: dict[str, object] = {"bulk": res.as_json()}
    raw["single"] = run_single(doc, calls=single_calls, rounds=rounds)
    return raw


# --- one job per process ----------------------------------------------------------------

#: The venv's console script, as a user runs it (its wrapper imports `re` first).
QUEUECTL = str(Path(PYTHON).parent / "queuectl")


def _bytecode_env(cache: Path) -> dict[str, str]:
    """The environment of every timed process: bytecode is cached, as in an installed
    queuectl (PYTHONDONTWRITEBYTECODE, set on some machines, would recompile every
    module of queuectl at every start); the cache lives in a temporary folder, not in
    the checkout.  `python -c pass` runs with the same environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _call_ms(argv: list[str], env: dict[str, str], want_id: bool) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=60, check=False)
    ms = (time.perf_counter() - t0) * 1000
    if out.returncode != 0 or (want_id and len(out.stdout.strip()) != 16):
        raise RuntimeError(f"{argv} failed ({out.returncode}): {out.stderr[-500:]!r}")
    return ms


def run_single(doc: Doc, *, calls: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Each round: `calls` times, `python -c pass`, `queuectl enqueue true`, and the
    same enqueue with the queue held open elsewhere, one after the other; a round's
    figures are the medians over its calls."""
    from queuectl.api import Queue
    from queuectl.config import resolve_paths

    with temp_dir("1") as home, tempfile.TemporaryDirectory(prefix="qb-pyc-") as cache:
        env = _bytecode_env(Path(cache))
        held = home / "held"
        argvs = {
            "pass": [PYTHON, "-c", "pass"],
            "enqueue": [QUEUECTL, "--home", str(home), "enqueue", "true"],
            "held": [QUEUECTL, "--home", str(held), "enqueue", "true"],
        }
        held.mkdir()
        for argv in argvs.values():  # creates both queues, fills the bytecode cache
            _call_ms(argv, env, argv is not argvs["pass"])
        other = Queue.open(resolve_paths(str(held)))  # as a running worker holds it

        def one_round() -> Sample:
            ms: dict[str, list[float]] = {k: [] for k in argvs}
            for _ in range(calls):
                for key, argv in argvs.items():
                    ms[key].append(_call_ms(argv, env, key != "pass"))
            return {f"{k}_ms": statistics.median(v) for k, v in ms.items()}

        try:
            res = interleave({"round": one_round}, rounds, label="enqueue one")
        finally:
            other.close()
    _report_single(doc, res, calls, rounds)
    return res.as_json()


def _report_single(doc: Doc, res: Results, calls: int, rounds: int) -> None:
    sec = doc.section("One `queuectl enqueue` call")
    sec.add(
        f"`{Path(QUEUECTL).name} --home H enqueue true` (the venv's console script) on an existing "
        f"SQLite queue, a fresh process each time, measured from spawn to exit; {rounds} rounds of "
        f"{calls} calls, each call alternating with `python -c pass` (the same interpreter), so "
        "load from elsewhere hits both alike; a round's figure is its median call, the ratio is "
        "taken per round. Bytecode is cached (a temporary PYTHONPYCACHEPREFIX), as in an installed "
        "queuectl. With no other process on the queue, the call's close is the database's last: "
        "SQLite checkpoints the WAL into the database file (two fsyncs) and removes `-wal` and "
        "`-shm`, which the next call creates again (two more fsyncs). While a worker or the monitor "
        "holds the queue open (the second row) none of that happens."
    )
    base = res.stat("round", "pass_ms")
    rows = [("`python -c pass`", base.fmt(".1f"), "1 (baseline)")]
    for key, title in (
        ("enqueue", "`queuectl enqueue true`"),
        ("held", "`queuectl enqueue true`, queue held open by another process"),
    ):
        rows.append(
            (
                title,
                res.stat("round", f"{key}_ms").fmt(".1f"),
                res.ratio("round", "round", f"{key}_ms", "pass_ms").fmt(".2f"),
            )
        )
    sec.add(table(("Command", "ms per call", "÷ `python -c pass`"), rows))
    doc.targets.append(
        Target(
            "One CLI enqueue ÷ `python -c pass`",
            res.ratio("round", "round", "enqueue_ms", "pass_ms"),
            2.0,
            at_least=False,
            spec=".2f",
        )
    )


def _report(doc: Doc, res: Results, jobs: int, rounds: int, backends: Sequence[Backend]) -> None:
    sec = doc.section("Bulk enqueue")
    names = " and ".join(b.title for b in backends)
    schema = " (PostgreSQL: a new schema per run)" if any(b.pg_url for b in backends) else ""
    sec.add(
        f'{jobs:,} jobs (`{{"command": "echo job N"}}`) per run into a fresh queue on {names}'
        f"{schema}, {rounds} rounds, all the paths interleaved. The "
        "API and store rows time the call alone; the CLI row times the whole `queuectl enqueue -` "
        "process (`--db URL` for PostgreSQL; start-up, reading and parsing the JSON lines, one "
        "transaction, printing the ids). The baseline is each database alone, with the same rows "
        "in one transaction: SQLite, APSW `executemany` into a table with the jobs table's columns "
        "but no index and no trigger; PostgreSQL, one `COPY` into such a table. Median (min–max):"
    )
    headers = ["Path"]
    for b in backends:
        headers += [f"{b.title}, jobs/s", f"÷ {b.title} alone"]
    if len(backends) > 1:
        headers += [f"{b.title} ÷ {backends[0].title}" for b in backends[1:]]
    rows = []
    for path, title, _ in PATHS:
        row = [title]
        for b in backends:
            k, base = _key(b, path), _key(b, "bare")
            ratio = "1 (baseline)" if k == base else res.ratio(k, base, "rate").fmt(".2f")
            row += [res.stat(k, "rate").fmt(",.0f"), ratio]
        for b in backends[1:]:
            row.append(res.ratio(_key(b, path), _key(backends[0], path), "rate").fmt(".2f"))
        rows.append(row)
    sec.add(table(headers, rows))
    # Issue 6: "Bulk enqueue: at least 50,000 jobs/s" (an absolute rate, so it moves with
    # the machine's speed; the ratios beside the rates do not).  Judged on SQLite's two
    # bulk paths a user has: the library API and `queuectl enqueue -`.
    sqlite = backends[0]
    for path, what in (("api", "library API"), ("cli", "`queuectl enqueue -`")):
        doc.targets.append(
            Target(
                f"Bulk enqueue, {sqlite.title}, {what} (issue 6)",
                res.stat(_key(sqlite, path), "rate"),
                50_000,
                at_least=True,
                spec=",.0f",
                unit=" jobs/s",
            )
        )
