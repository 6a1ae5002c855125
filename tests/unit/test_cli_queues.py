"""The `queue` commands, `list`'s filters and `status --by-queue`, through click's
CliRunner (and `python -m queuectl` where stdout must hold nothing but the answer)."""

from __future__ import annotations

import json
import re

import apsw
import pytest

from queuectl.models import NewJob, iso
from queuectl.store.sqlite import SQLiteStore
from tests.helpers import T0, QHome, one_line_error


def put(qhome: QHome, *jobs: tuple[str, str, str, float]) -> None:
    """Jobs (id, queue, command, created_at) straight into the home's database."""
    qhome.invoke("status")  # creates the database
    store = SQLiteStore(str(qhome.db))
    try:
        for job_id, queue, command, created in jobs:
            store.enqueue([NewJob(job_id, command, 0, 0, 30.0, created, queue=queue)], now=created)
    finally:
        store.close()


def queues_table(qhome: QHome) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(qhome.db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT * FROM queues ORDER BY name").fetchall()
    finally:
        conn.close()


# --- queue list / pause / resume / set ----------------------------------------------------


def test_queue_list_pause_resume_and_set(qhome: QHome) -> None:
    put(qhome, ("a1", "a", "true", T0), ("a2", "a", "true", T0), ("d1", "default", "true", T0))
    assert qhome.invoke("queue", "pause", "a").stdout == "queue a paused\n"
    assert qhome.invoke("queue", "pause", "a").stdout == "queue a was already paused\n"
    assert qhome.invoke("queue", "set", "a", "--concurrency", "2").stdout == "queue a: concurrency 2\n"
    data = qhome.json("queue", "list")
    assert [(q["name"], q["paused"], q["concurrency"], q["counts"]["pending"], q["total"]) for q in data] == [
        ("a", True, 2, 2, 2),
        ("default", False, None, 1, 1),
    ]
    table = qhome.invoke("queue", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["QUEUE", "PAUSED", "CONCURRENCY", "PENDING"]
    assert table[1].split()[:4] == ["a", "yes", "2", "2"]
    assert qhome.invoke("queue", "resume", "a").stdout == "queue a resumed\n"
    assert qhome.invoke("queue", "resume", "a").stdout == "queue a was not paused\n"
    assert qhome.invoke("queue", "set", "a", "--no-limit").stdout == "queue a: no limit\n"
    assert qhome.json("queue", "list")[0]["concurrency"] is None


def test_pause_creates_a_queue_that_has_no_jobs_yet(qhome: QHome) -> None:
    qhome.invoke("queue", "pause", "nightly")
    assert [q["name"] for q in qhome.json("queue", "list")] == ["default", "nightly"]
    qhome.invoke("queue", "set", "reports", "--concurrency", "1")
    assert ("reports", 0, 1) in queues_table(qhome)


def test_queue_list_json_prints_only_a_json_array(qhome: QHome) -> None:
    proc = qhome.run("queue", "list", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    assert [q["name"] for q in json.loads(proc.stdout)] == ["default"]


@pytest.mark.parametrize(
    "args",
    [
        ["queue", "pause", "bad name"],
        ["queue", "resume", "-x"],
        ["queue", "pause", ""],
        ["queue", "set", "a" * 65, "--concurrency", "1"],
        ["queue", "set", "a", "--concurrency", "0"],
        ["queue", "set", "a", "--concurrency", "-3"],
        ["queue", "set", "a"],
        ["queue", "set", "a", "--concurrency", "2", "--no-limit"],
        ["list", "--queue", "no/slash"],
        ["list", "--since", "yesterday"],
        ["list", "--until", "5x"],
        ["list", "--limit", "5", "--all"],
        ["list", "--state", "bogus"],
        ["worker", "run", "--queue", "bad name"],
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(qhome: QHome, args: list[str]) -> None:
    qhome.invoke("status")
    before = (qhome.dump(), queues_table(qhome))
    line = one_line_error(qhome.run(*args), 2)
    assert "Traceback" not in line
    assert (qhome.dump(), queues_table(qhome)) == before


# --- list filters ---------------------------------------------------------------------------


def test_list_filters(qhome: QHome) -> None:
    put(
        qhome,
        ("p1", "a", "echo 100%", T0),
        ("p2", "b", "echo 100x", T0 + 1),
        ("p3", "a", "rm a_b", T0 + 2),
        ("new", "b", "echo new", T0 + 3600),
    )

    def ids(*args: str) -> list[str]:
        return [j["id"] for j in qhome.json("list", *args)]

    assert ids() == ["p1", "p2", "p3", "new"]
    assert ids("--queue", "a") == ["p1", "p3"]
    assert ids("--queue", "a", "--queue", "b", "--limit", "2") == ["p1", "p2"]
    assert ids("--state", "pending", "--state", "dead") == ["p1", "p2", "p3", "new"]
    assert ids("--state", "dead") == []
    assert ids("--command-contains", "100%") == ["p1"]
    assert ids("--command-contains", "a_b") == ["p3"]
    assert ids("--since", iso(T0 + 1) or "") == ["p2", "p3", "new"]
    assert ids("--until", iso(T0 + 2) or "") == ["p1", "p2"]
    assert ids("--since", "3650000d") == ["p1", "p2", "p3", "new"]  # a duration ago
    assert ids("--until", "1s") == ["p1", "p2", "p3", "new"]
    assert ids("--newest-first", "--limit", "1") == ["new"]
    table = qhome.invoke("list", "--queue", "b").stdout.splitlines()
    assert table[0].split() == ["ID", "STATE", "ATTEMPTS", "PRIORITY", "QUEUE", "UPDATED", "COMMAND"]
    assert len(table) == 3


def test_list_shows_100_jobs_unless_told(qhome: QHome) -> None:
    put(qhome, *((f"j{i:03d}", "default", "true", T0 + i) for i in range(105)))
    assert len(qhome.json("list")) == 100
    assert len(qhome.json("list", "--all")) == 105
    assert len(qhome.json("list", "--limit", "3")) == 3


def test_list_state_queue_json_prints_only_a_json_array(qhome: QHome) -> None:
    put(qhome, ("a1", "a", "true", T0))
    proc = qhome.run("list", "--state", "pending", "--queue", "a", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    assert [j["id"] for j in json.loads(proc.stdout)] == ["a1"]


# --- status --by-queue -------------------------------------------------------------------


def test_status_by_queue(qhome: QHome) -> None:
    put(qhome, ("a1", "a", "true", T0), ("b1", "b", "true", T0), ("b2", "b", "true", T0))
    qhome.invoke("queue", "pause", "b")
    data = qhome.json("status", "--by-queue")
    assert data["total"] == 3
    assert {q["name"]: (q["paused"], q["counts"]["pending"]) for q in data["queues"]} == {
        "a": (False, 1),
        "b": (True, 2),
        "default": (False, 0),
    }
    assert "queues" not in qhome.json("status")
    text = qhome.invoke("status", "--by-queue").stdout
    assert re.search(r"^total\s+3$", text, re.M)
    assert re.search(r"^b\s+yes\s+-\s+2\s", text, re.M)
