"""Input that is accepted stays usable: a time that cannot be printed is refused, every
read path is total over what is stored, numbers out of range and foreign database
URLs are usage errors, terminal control characters never reach a terminal raw, and
`purge` says what it would delete and treats a closed stdin as a usage error.

Real `python -m queuectl` processes with stdout a pipe (what a user's `| less` sees),
on real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest

from queuectl.store import Store
from queuectl.store.outcome import finished
from queuectl.trail_files import seal_pending
from tests.helpers import T0, QHome, one_line_error

FAR_FUTURE = "9999-12-31T23:59:59-14:00"
FAR_PAST = "0001-01-01T00:00:00+14:00"
OSC_TITLE = "\x1b]0;pwned\x07"
RLO = "\u202e"


@pytest.mark.parametrize("when", [FAR_FUTURE, FAR_PAST, "+10000-01-01T00:00:00"])
def test_a_time_that_cannot_be_printed_is_refused(qhome: QHome, when: str) -> None:
    line = one_line_error(qhome.run("enqueue", "true", "--run-at", when), 2)
    assert "run_at" in line
    proc = qhome.run("enqueue", json.dumps({"command": "true", "run_at": when}))
    assert "run_at" in one_line_error(proc, 2)
    assert qhome.run("list", "--json").stdout.strip() in ("", "[]")


def test_the_edges_of_the_printable_range_are_accepted(qhome: QHome) -> None:
    late = qhome.run("enqueue", "true", "--run-at", "9999-12-31T23:59:59Z")
    early = qhome.run("enqueue", "true", "--run-at", "0001-01-01T00:00:00Z")
    assert late.returncode == 0 and early.returncode == 0, (late.stderr, early.stderr)
    jobs = {j["id"]: j for j in json.loads(qhome.run("list", "--json").stdout)}
    assert jobs[late.stdout.strip()]["run_at"] == "9999-12-31T23:59:59.000Z"
    assert jobs[early.stdout.strip()]["run_at"] == "0001-01-01T00:00:00.000Z"


def _store_times(db: Path, job_id: str, ts: float) -> None:
    """Write times the CLI would refuse now straight into the row (as an older
    version accepted them)."""
    conn = apsw.Connection(str(db))
    try:
        conn.execute(
            "UPDATE jobs SET run_at = ?, next_run_at = ?, updated_at = ? WHERE id = ?", (ts, ts, ts, job_id)
        )
    finally:
        conn.close()


@pytest.mark.parametrize("ts", [253402300799.0 + 50_400, -62135596800.0 - 50_400, 1e18, -1e18])
def test_every_read_path_is_total_over_what_is_stored(qhome: QHome, ts: float) -> None:
    job_id = qhome.enqueue("true")
    _store_times(qhome.db, job_id, ts)
    for args in (
        ("list", "--json"),
        ("list", "--state", "pending", "--json"),
        ("list",),
        ("inspect", job_id),
        ("inspect", job_id, "--json"),
        ("status",),
        ("status", "--json"),
        ("dlq", "list"),
    ):
        proc = qhome.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stderr == "", (args, proc.stderr)
    shown = json.loads(qhome.run("inspect", job_id, "--json").stdout)["run_at"]
    assert isinstance(shown, str) and shown.endswith("Z")
    # Outside years 1-9999 the year is expanded and signed (year 0 is 1 BC: "+0000").
    assert shown.startswith("+") if ts > 0 else shown.startswith(("-", "+0000")), shown


@pytest.mark.parametrize("command", ["list", "dlq list"])
def test_limit_out_of_range_names_the_range(qhome: QHome, command: str) -> None:
    for bad in ("99999999999999999999999", "1000000001", "-1"):
        line = one_line_error(qhome.run(*command.split(), "--limit", bad), 2)
        assert "1000000000" in line, line
    assert qhome.run(*command.split(), "--limit", "1000000000").returncode == 0


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///tmp/x.db", "HTTP://example/q"])
def test_a_database_url_of_another_scheme_is_a_usage_error(qhome: QHome, url: str) -> None:
    before = sorted(p.name for p in qhome.path.rglob("*"))
    line = one_line_error(qhome.run("--db", url, "status"), 2)
    assert url.split(":", 1)[0] in line
    line = one_line_error(qhome.run("--db", url, "enqueue", "true"), 2)
    assert url.split(":", 1)[0] in line
    assert sorted(p.name for p in qhome.path.rglob("*")) == before  # nothing created


def test_a_database_path_that_is_a_folder_says_so(qhome: QHome, tmp_path: Path) -> None:
    folder = tmp_path / "afolder"
    folder.mkdir()
    for args in (("status",), ("enqueue", "true"), ("list",)):
        line = one_line_error(qhome.run("--db", str(folder), *args), 2)
        assert "folder" in line and str(folder) in line, line


def test_control_characters_are_escaped_in_text_output_and_kept_in_json(qhome: QHome) -> None:
    command = f"printf '{OSC_TITLE}out{RLO}put\\n'"
    job_id = qhome.enqueue(command)
    assert qhome.run("worker", "run", "--burst", "--poll-interval", "0.05").returncode == 0
    for args in (("list",), ("inspect", job_id), ("logs", job_id), ("dlq", "list")):
        proc = qhome.run(*args)
        assert proc.returncode == 0, proc.stderr
        for raw in ("\x1b", "\x07", RLO):
            assert raw not in proc.stdout, (args, proc.stdout)
    assert "\\x1b]0;pwned\\x07" in qhome.run("list").stdout
    assert "\\x1b]0;pwned\\x07out\\u202eput\n" in qhome.run("logs", job_id).stdout
    # JSON carries the text as stored (json escapes control characters itself).
    stored = json.loads(qhome.run("inspect", job_id, "--json").stdout)
    assert stored["command"] == command
    assert stored["stdout"] == f"{OSC_TITLE}out{RLO}put\n"
    # --raw is for a user who wants the bytes the job wrote.
    assert qhome.run("logs", job_id, "--raw").stdout == f"{OSC_TITLE}out{RLO}put\n"


@pytest.mark.parametrize("bad", ["a\x1bb", "a\x07", f"x{RLO}y", "a\u2066b", "a\u200fb", "a\u061cb"])
def test_ids_refuse_control_and_bidi_characters(qhome: QHome, bad: str) -> None:
    assert "id" in one_line_error(qhome.run("enqueue", "true", "--id", bad), 2)
    assert "id" in one_line_error(qhome.run("enqueue", json.dumps({"id": bad, "command": "true"})), 2)
    assert "id" in one_line_error(qhome.run("enqueue", "-", input=json.dumps({"id": bad, "command": "t"})), 2)


def test_purge_says_how_many_and_eof_is_a_usage_error(qhome: QHome) -> None:
    for n in range(3):
        qhome.enqueue(f"exit {n % 2}", "--max-retries", "0")
    assert qhome.run("worker", "run", "--burst", "--poll-interval", "0.05").returncode == 0
    proc = qhome.run("purge", "--state", "dead", "--state", "completed", input="")
    assert proc.returncode == 2, proc.stderr
    assert "Delete 3 dead/completed jobs" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(json.loads(qhome.run("list", "--json").stdout)) == 3
    proc = qhome.run("purge", "--state", "dead", input="n\n")
    assert proc.returncode == 2 and "Delete 1 dead job and" in proc.stderr, proc.stderr
    proc = qhome.run("purge", "--state", "completed", input="y\n")
    assert proc.returncode == 0, proc.stderr
    assert "Delete 2 completed jobs" in proc.stderr and proc.stdout == "purged 2 jobs\n"
    assert [j["state"] for j in json.loads(qhome.run("list", "--json").stdout)] == ["dead"]


def test_purgeable_counts_what_purge_deletes(store: Store) -> None:
    from queuectl.models import JobState, NewJob, Outcome, Transition

    store.enqueue([NewJob(f"j{i}", "true", 0, 0, 60.0, T0) for i in range(4)], T0)
    for i in range(3):
        job = store.claim("w", now=T0 + i)
        assert job is not None
        state = JobState.COMPLETED if i < 2 else JobState.DEAD
        assert store.finish(
            job.id, job.lease, finished(Transition(state, None), Outcome(0)), now=T0 + 10 * (i + 1)
        )
    both = [JobState.COMPLETED, JobState.DEAD]
    # A job whose history is not yet sealed into the audit trail is neither counted
    # nor purged; once sealed, the counts agree.
    assert store.purgeable(both) == 0
    assert store.purge(both) == 0
    seal_pending(store)
    assert store.purgeable(both) == 3
    assert store.purgeable([JobState.DEAD]) == 1
    assert store.purgeable(both, before=T0 + 25) == 2
    assert store.purge(both, before=T0 + 25) == 2
    assert store.purgeable(both) == 1
