"""Bulk enqueue rate: the CLI from stdin and the library API, next to SQLite itself.

Every run inserts N jobs into a fresh, already created database.  The baseline is
what SQLite does with the same rows and nothing else: one APSW `executemany` into a
table with the jobs table's columns but no index and no history trigger, with the
store's settings (WAL, synchronous=NORMAL, one transaction).  `store.enqueue` adds
the indexes and the history; `Queue.enqueue_many` adds validation and id generation;
`queuectl enqueue -` adds the interpreter, JSON parsing and printing the ids.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from harness import PYTHON, ROOT, Results, Sample, interleave, temp_dir
from report import Doc, table

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


def _with_queue(fn: Callable[[Any, int, Any], float]) -> Callable[[int], Sample]:
    """Run fn(queue, n, paths) on a fresh home whose database already exists; fn
    returns the seconds its timed part took."""

    def run(n: int) -> Sample:
        from queuectl.api import Queue
        from queuectl.config import resolve_paths

        with temp_dir("e") as home:
            paths = resolve_paths(str(home))
            q = Queue.open(paths)
            try:
                elapsed = fn(q, n, paths)
            finally:
                q.close()
        return {"rate": n / elapsed}

    return run


def _store(q: Any, n: int, paths: Any) -> float:
    jobs = _new_jobs(n)
    t0 = time.perf_counter()
    q.store.enqueue(jobs)
    return time.perf_counter() - t0


def _api(q: Any, n: int, paths: Any) -> float:
    specs = _specs(n)
    t0 = time.perf_counter()
    ids = q.enqueue_many(specs)
    elapsed = time.perf_counter() - t0
    assert len(ids) == n
    return elapsed


def _cli(q: Any, n: int, paths: Any) -> float:
    data = "".join(json.dumps(s) + "\n" for s in _specs(n)).encode()
    q.close()  # the CLI process is the only one with the database open
    argv = [PYTHON, "-m", "queuectl", "--home", str(paths.home), "enqueue", "-"]
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, input=data, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or out.stdout.count(b"\n") != n:
        raise RuntimeError(f"queuectl enqueue - failed ({out.returncode}): {out.stderr[-500:]!r}")
    return elapsed


SUBJECTS: dict[str, tuple[str, Callable[[int], Sample]]] = {
    "bare": ("SQLite alone: `executemany` into a bare table (baseline)", bare_sqlite),
    "store": ("`SQLiteStore.enqueue` (indexes + history trigger)", _with_queue(_store)),
    "api": ("`Queue.enqueue_many` (library API: + validation, ids)", _with_queue(_api)),
    "cli": ("`queuectl enqueue -` from stdin (whole process)", _with_queue(_cli)),
}


def run(doc: Doc, *, jobs: int, rounds: int) -> dict[str, object]:
    subjects = {k: (lambda fn=fn: fn(jobs)) for k, (_, fn) in SUBJECTS.items()}
    res = interleave(subjects, rounds, label="enqueue")
    _report(doc, res, jobs, rounds)
    return res.as_json()


def _report(doc: Doc, res: Results, jobs: int, rounds: int) -> None:
    sec = doc.section("Bulk enqueue")
    sec.add(
        f'{jobs:,} jobs (`{{"command": "echo job N"}}`) per run into a fresh database, '
        f"{rounds} rounds, the four paths interleaved. The API and store rows time the call "
        "alone; the CLI row times the whole `queuectl enqueue -` process (start-up, reading "
        "and parsing the JSON lines, one transaction, printing the ids). Median (min–max):"
    )
    rows = []
    for key, (title, _) in SUBJECTS.items():
        ratio = "1 (baseline)" if key == "bare" else res.ratio(key, "bare", "rate").fmt(".2f")
        rows.append((title, res.stat(key, "rate").fmt(",.0f"), ratio))
    sec.add(table(("Path", "Jobs/s", "÷ SQLite alone"), rows))
