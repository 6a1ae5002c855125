"""`cancel`, `wait`, `logs --json/--follow` and `enqueue --wait` through the CLI:
one error line and the documented exit code on bad input, nothing changed then."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from queuectl.cli import fast_enqueue
from queuectl.cli.follow import follow, new_text
from queuectl.models import Job, JobState, NewJob
from queuectl.store.sqlite import SQLiteStore
from tests.helpers import T0, QHome, one_line_error

USAGE, NOT_FOUND, CONFLICT = 2, 3, 4


@pytest.fixture
def store(qhome: QHome) -> Iterator[SQLiteStore]:
    qhome.invoke("status")  # creates the database
    s = SQLiteStore(str(qhome.db))
    try:
        yield s
    finally:
        s.close()


def new(job_id: str, queue: str = "default") -> NewJob:
    return NewJob(
        id=job_id, command="sleep 1", max_retries=0, priority=0, timeout=30.0, run_at=T0, queue=queue
    )


# --- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("cancel",), "give job ids"),
        (("cancel", "a", "--state", "pending"), "not both"),
        (("cancel", "--state", "completed", "--yes"), "cannot be cancelled"),
        (("cancel", "--state", "bogus", "--yes"), "unknown state"),
        (("cancel", "--state", "pending"), "no answer on stdin"),
    ],
)
def test_cancel_usage_errors_change_nothing(
    qhome: QHome, store: SQLiteStore, args: tuple[str, ...], fragment: str
) -> None:
    store.enqueue([new("a")], now=T0)
    before = qhome.dump()
    proc = qhome.run(*args, input="")
    lines = proc.stderr.splitlines()
    assert proc.returncode == USAGE, proc.stderr
    assert proc.stdout == ""
    assert lines[-1].startswith("queuectl: error: ") and fragment in lines[-1]
    assert qhome.dump() == before


def test_cancel_reports_each_id_and_exits_with_the_worst(qhome: QHome, store: SQLiteStore) -> None:
    store.enqueue([new("a"), new("b")], now=T0)
    assert store.cancel(["b"], "x@y", now=T0 + 1) == ["b"]
    proc = qhome.run("cancel", "a", "nope")
    assert (proc.returncode, proc.stdout) == (NOT_FOUND, "cancelled a\n")
    assert proc.stderr == "queuectl: error: no job with id 'nope'\n"
    assert store.get("a").state is JobState.CANCELLED  # type: ignore[union-attr]
    proc = qhome.run("cancel", "b", "nope", "--json")
    assert proc.returncode == CONFLICT
    data = json.loads(proc.stdout)
    assert data["cancelled"] == []
    assert [(e["id"], e["exit_code"]) for e in data["errors"]] == [("b", CONFLICT), ("nope", NOT_FOUND)]
    before = qhome.dump()
    line = one_line_error(qhome.run("cancel", "b"), CONFLICT)
    assert "cancelled already" in line
    assert qhome.dump() == before


def test_cancel_many_counts_asks_and_cancels_one_queue(qhome: QHome, store: SQLiteStore) -> None:
    store.enqueue([new("a", "q1"), new("b", "q1"), new("c", "q2")], now=T0)
    proc = qhome.run("cancel", "--queue", "q1", input="n\n")
    assert proc.returncode == USAGE
    assert "2 jobs would be cancelled" in proc.stderr and "not confirmed" in proc.stderr
    assert {j.state for j in store.list_jobs()} == {JobState.PENDING}
    proc = qhome.run("cancel", "--queue", "q1", "--state", "pending", input="y\n")
    assert (proc.returncode, proc.stdout) == (0, "cancelled 2 jobs\n"), proc.stderr
    assert {j.id: j.state.value for j in store.list_jobs()} == {
        "a": "cancelled",
        "b": "cancelled",
        "c": "pending",
    }
    proc = qhome.run("cancel", "--state", "pending", "--yes", "--json")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, {"cancelled": ["c"], "ended_meanwhile": 0})


# --- wait, logs, enqueue --wait ------------------------------------------------------------


def test_wait_for_an_unknown_id_is_one_error_line(qhome: QHome, store: SQLiteStore) -> None:
    store.enqueue([new("a")], now=T0)
    before = qhome.dump()
    assert "nope" in one_line_error(qhome.run("wait", "a", "nope", "--timeout", "0"), NOT_FOUND)
    assert qhome.dump() == before


def test_wait_with_a_zero_timeout_on_a_pending_job_is_124(qhome: QHome, store: SQLiteStore) -> None:
    store.enqueue([new("a")], now=T0)
    proc = qhome.run("wait", "a", "--timeout", "0", "--json")
    assert proc.returncode == 124
    assert json.loads(proc.stdout) == [{"id": "a", "state": "pending", "attempts": 0, "exit_code": None}]


def test_logs_of_a_running_job_shows_what_is_saved_so_far(qhome: QHome, store: SQLiteStore) -> None:
    store.enqueue([new("a")], now=T0)
    job = store.claim("w1", now=T0)
    assert job is not None
    assert store.save_output("a", job.lease, "so far \x1b]0;title\x07\n", "warn\n")
    proc = qhome.run("logs", "a")
    assert (proc.stdout, proc.stderr) == ("so far \\x1b]0;title\\x07\n", "warn\n")
    data = json.loads(qhome.run("logs", "a", "--json").stdout)
    assert data == {
        "id": "a",
        "state": "processing",
        "attempts": 1,
        "stdout": "so far \x1b]0;title\x07\n",
        "stderr": "warn\n",
    }
    one_line_error(qhome.run("logs", "nope", "--follow"), NOT_FOUND)


def test_enqueue_wait_is_left_to_click_by_the_fast_path() -> None:
    assert fast_enqueue.parse(["enqueue", "true"]) is not None
    assert fast_enqueue.parse(["enqueue", "--wait", "true"]) is None
    assert fast_enqueue.parse(["enqueue", "true", "--wait"]) is None


# --- following the kept tail ----------------------------------------------------------------


def test_new_text_finds_what_was_added_to_a_sliding_tail() -> None:
    assert new_text("", "abc") == ("abc", False)
    assert new_text("abc", "abcdef") == ("def", False)
    assert new_text("abc", "abc") == ("", False)
    tail = "".join(f"line {i}\n" for i in range(100))
    assert new_text(tail, tail[40:] + "new\n") == ("new\n", False)
    assert new_text(tail, "\ufffd" + tail[41:] + "new\n") == ("new\n", False)  # cut in a character
    assert new_text(tail, "gone\n" * 100) == ("gone\n" * 100, True)


def snapshot(state: JobState, out: str, err: str = "", attempts: int = 1, code: int | None = None) -> Job:
    return replace(
        Job("a", "cmd", state, attempts, 0, 0, 30.0, attempts, T0, T0, T0, None),
        stdout=out,
        stderr=err,
        exit_code=code,
    )


class FakeQueue:
    def __init__(self, *jobs: Job) -> None:
        self.jobs = jobs

    def watch(self, job_ids: list[str]) -> Iterator[list[Job]]:
        for job in self.jobs:
            yield [job]


def test_follow_prints_new_output_escaped_marks_drops_and_exits_as_wait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = JobState.PROCESSING
    queue = FakeQueue(
        snapshot(running, ""),
        snapshot(running, "one\n"),
        snapshot(running, "one\ntwo \x1b[2J\n", "e1\n"),
        snapshot(running, "zzz\n", "e1\n"),
        snapshot(JobState.DEAD, "zzz\nend\n", "e1\n", code=3),
    )
    assert follow(queue, "a", "both", False, False) == 1
    out, err = capsys.readouterr()
    assert out == "one\ntwo \\x1b[2J\nzzz\nend\n"
    assert err == "e1\nqueuectl: [stdout: output dropped from the kept tail before it was shown]\n"
    done = FakeQueue(snapshot(running, "x"), snapshot(JobState.COMPLETED, "xy"))
    assert follow(done, "a", "stdout", False, True) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"id": "a", "stream": "stdout", "text": "x"},
        {"id": "a", "stream": "stdout", "text": "y"},
        {"id": "a", "state": "completed", "attempts": 1, "exit_code": None},
    ]
