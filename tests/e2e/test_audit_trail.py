"""The audit trail through the command line: `audit verify` finds every kind of
tampering in a copy of a home's files at the right line, `--against-db` holds the
files to the history, checkpoints let old files go, `export` filters, and the files
are the owner's alone."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from queuectl import trail_files
from queuectl.store.sqlite import SQLiteStore
from queuectl.trail import line_text
from tests.helpers import QHome

DAY = 86400.0


def build(qhome: QHome, jobs: int = 4) -> list[str]:
    """A trail of enqueues, claims, finishes (one dead), config and queue changes,
    all written to the home's files; its lines."""
    for i in range(jobs):
        qhome.invoke("enqueue", "true", "--id", f"j{i}")
    qhome.invoke("enqueue", "exit 3", "--id", "bad", "--max-retries", "0")
    assert qhome.run("worker", "run", "--burst").returncode == 0
    qhome.invoke("config", "set", "backoff_base", "3")
    qhome.invoke("queue", "pause", "reports")
    return lines(qhome.path / "logs")


def lines(logs: Path) -> list[str]:
    return [ln for f in trail_files.files(logs) for ln in f.read_text().splitlines()]


def verify(qhome: QHome, *args: str, code: int = 0) -> dict[str, Any]:
    result = qhome.invoke("audit", "verify", "--json", *args, code=code)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def copy_of(qhome: QHome, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(qhome.path / "logs", copy)
    return copy


def the_file(copy: Path) -> Path:
    (path,) = trail_files.files(copy)
    return path


def edit(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(line + "\n" for line in change(path.read_text().splitlines())))


def test_a_fresh_trail_verifies_and_names_every_actor(qhome: QHome) -> None:
    written = build(qhome)
    events = [json.loads(line) for line in written]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = {e["event"] for e in events}
    assert {"job_enqueued", "job_claimed", "job_completed", "job_dead", "config_set", "queue_paused"} <= kinds
    me = {e["actor"] for e in events if e["event"] in ("job_enqueued", "config_set", "queue_paused")}
    assert len(me) == 1 and "@" in me.pop()  # user@host
    workers = {e["actor"] for e in events if e["event"] in ("job_claimed", "job_completed")}
    assert workers == {e["worker_id"] for e in events if e["event"] == "job_claimed"}
    report = verify(qhome, "--against-db")
    assert report["ok"] and report["first_broken"] is None
    assert report["lines"] == len(events) and report["head"]["seq"] == len(events)
    assert report["history_compared"] == sum(1 for e in events if "job_id" in e)
    text = qhome.invoke("audit", "verify").stdout
    assert text.startswith(f"audit trail intact: {len(events)} lines in 1 file(s)")
    for path in trail_files.files(qhome.path / "logs"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _insert(ls: list[str]) -> list[str]:
    forged = json.loads(ls[3]) | {"job_id": "forged"}
    return [*ls[:4], line_text(forged), *ls[4:]]


def _bad_json(ls: list[str]) -> list[str]:
    return [*ls[:4], ls[4][:-3], *ls[5:]]


def _edit(ls: list[str]) -> list[str]:
    event = json.loads(ls[4]) | {"actor": "mallory@elsewhere"}
    return [*ls[:4], line_text(event), *ls[5:]]


def _rehashed_edit(ls: list[str]) -> list[str]:
    # An editor who recomputes the edited line's hash breaks the next line's link,
    # and while the database keeps the line (a day), differs from it at once.
    from queuectl.trail import link

    event = json.loads(ls[4]) | {"exit_code": 0, "error": None}
    event["hash"] = link(event["prev_hash"], event)
    return [*ls[:4], line_text(event), *ls[5:]]


#: (tampering, the broken link's kind, its 1-based line in the file)
TAMPERING: list[tuple[str, Callable[[list[str]], list[str]], str, int]] = [
    ("edit", _edit, "edited", 5),
    ("edit_and_rehash", _rehashed_edit, "differs", 5),
    ("bad_json", _bad_json, "unreadable", 5),
    ("delete", lambda ls: ls[:4] + ls[5:], "gap", 5),
    ("swap", lambda ls: [*ls[:4], ls[5], ls[4], *ls[6:]], "gap", 5),
    ("duplicate", lambda ls: [*ls[:5], ls[4], *ls[5:]], "out_of_order", 6),
    ("insert", _insert, "edited", 5),
    ("delete_first", lambda ls: ls[1:], "missing_start", 1),
]


@pytest.mark.parametrize(("name", "change", "kind", "line"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_finds_each_tampering_at_its_line(
    qhome: QHome, tmp_path: Path, name: str, change: Callable[[list[str]], list[str]], kind: str, line: int
) -> None:
    build(qhome)
    copy = copy_of(qhome, tmp_path)
    path = the_file(copy)
    edit(path, change)
    report = verify(qhome, "--dir", str(copy), code=1)
    first = report["first_broken"]
    assert (first["kind"], first["file"], first["line"]) == (kind, str(path), line), report["problems"]
    if name == "edit_and_rehash":
        assert report["problems"][1]["kind"] == "broken_link" and report["problems"][1]["line"] == 6
    text = qhome.invoke("audit", "verify", "--dir", str(copy), code=1).stdout
    assert text.startswith(f"audit trail BROKEN: {path} line {line}: ")
    assert verify(qhome)["ok"]  # the home's own files are untouched


def test_verify_finds_a_cut_tail_and_a_missing_newest_file(qhome: QHome, tmp_path: Path) -> None:
    written = build(qhome)
    copy = copy_of(qhome, tmp_path)
    path = the_file(copy)
    edit(path, lambda ls: ls[:-2])
    first = verify(qhome, "--dir", str(copy), code=1)["first_broken"]
    assert (first["kind"], first["file"], first["line"]) == ("truncated", str(path), len(written) - 1)
    assert f"up to seq {len(written)}" in first["message"]
    path.unlink()
    first = verify(qhome, "--dir", str(copy), code=1)["first_broken"]
    assert first["kind"] == "truncated"


def test_a_torn_last_line_is_mended_by_the_next_writer(qhome: QHome) -> None:
    written = build(qhome)
    path = the_file(qhome.path / "logs")
    with path.open("a") as fh:
        fh.write(written[-1][:40])  # a writer killed mid-line, its line not recorded
    assert verify(qhome, "--dir", str(qhome.path / "logs"), code=1)["first_broken"]["kind"] == "torn"
    qhome.invoke("config", "set", "backoff_base", "4")  # flushes
    assert verify(qhome, "--against-db")["ok"]
    assert lines(qhome.path / "logs")[: len(written)] == written


def test_a_cut_tail_is_never_refilled_silently(qhome: QHome) -> None:
    written = build(qhome)
    path = the_file(qhome.path / "logs")
    edit(path, lambda ls: ls[:-3])
    qhome.invoke("config", "set", "backoff_base", "4")  # a writer appends after what it wrote
    first = verify(qhome, code=1)["first_broken"]
    assert (first["kind"], first["line"]) == ("gap", len(written) - 2)


def test_against_db_finds_history_and_lines_that_differ(qhome: QHome) -> None:
    build(qhome)
    conn = apsw.Connection(str(qhome.db))
    conn.execute(
        "UPDATE job_events SET exit_code = 0, error = NULL WHERE job_id = 'bad' AND to_state = 'dead'"
    )
    conn.close()
    report = verify(qhome, "--against-db", code=1)
    assert report["first_broken"]["kind"] == "history_differs"
    assert "exit_code" in report["first_broken"]["message"]
    conn = apsw.Connection(str(qhome.db))
    conn.execute("DELETE FROM job_events WHERE job_id = 'j0' AND to_state = 'completed'")
    conn.close()
    kinds = [p["kind"] for p in verify(qhome, "--against-db", code=1)["problems"]]
    assert "missing_history" in kinds
    assert verify(qhome)["ok"]  # the files themselves are whole


def test_a_purge_is_an_event_and_keeps_the_chain_verifiable(qhome: QHome) -> None:
    build(qhome)
    qhome.invoke("purge", "--state", "completed", "--yes")
    events = [json.loads(line) for line in lines(qhome.path / "logs")]
    assert events[-1]["event"] == "jobs_purged" and events[-1]["detail"]["changed"] == 4
    assert verify(qhome, "--against-db")["ok"]


def test_archived_files_go_after_a_checkpoint(qhome: QHome, tmp_path: Path) -> None:
    logs = qhome.path / "logs"
    qhome.invoke("enqueue", "true", "--id", "old")
    store = SQLiteStore(str(qhome.db))
    try:
        trail_files.seal_pending(store)
        trail_files.write(store, logs, now=time.time() - DAY)  # yesterday's file
    finally:
        store.close()
    build(qhome)
    old, _today = trail_files.files(logs)
    assert verify(qhome)["ok"]
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.move(str(old), archive)  # moved away before any checkpoint: a break
    assert verify(qhome, code=1)["first_broken"]["kind"] == "missing_start"
    shutil.move(str(archive / old.name), logs)
    out = qhome.invoke("audit", "checkpoint").stdout
    assert f"({old.name})" in out
    shutil.move(str(old), archive)
    report = verify(qhome, "--against-db")
    assert report["ok"], report["problems"]
    assert report["start"].startswith("checkpoint at seq 1 by ")
    assert any("archived" in n for n in report["notes"])
    # The checkpoint is itself an event of the chain.
    assert json.loads(lines(logs)[-1])["event"] == "audit_checkpoint"


def test_checkpoint_refuses_a_broken_trail_and_a_foreign_file(qhome: QHome, tmp_path: Path) -> None:
    build(qhome)
    foreign = tmp_path / "audit-2000-01-01.jsonl"
    foreign.write_text("{}\n")
    err = qhome.run("audit", "checkpoint", "--through", str(foreign))
    assert err.returncode == 2 and "not one of this home's trail files" in err.stderr
    assert qhome.run("audit", "checkpoint").returncode == 2  # nothing older than today
    current = the_file(qhome.path / "logs")
    err = qhome.run("audit", "checkpoint", "--through", str(current))
    assert err.returncode == 2 and "not archivable yet" in err.stderr  # still written to
    path = the_file(qhome.path / "logs")
    edit(path, _edit)
    proc = qhome.run("audit", "checkpoint", "--through", str(path))
    assert proc.returncode == 1 and "no checkpoint recorded" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_filters_in_chain_order(qhome: QHome) -> None:
    written = build(qhome)
    out = qhome.invoke("audit", "export", "--job", "bad").stdout.splitlines()
    assert [json.loads(x)["event"] for x in out] == ["job_enqueued", "job_claimed", "job_dead"]
    assert all(x in written for x in out)  # exactly as written
    me = json.loads(written[0])["actor"]
    mine = qhome.invoke("audit", "export", "--actor", me).stdout.splitlines()
    assert mine and all(json.loads(x)["actor"] == me for x in mine)
    assert qhome.invoke("audit", "export", "--since", "1h").stdout.splitlines() == written
    assert qhome.invoke("audit", "export", "--until", "2000-01-01T00:00:00").stdout == ""
    err = qhome.run("audit", "export", "--since", "yesterday-ish")
    assert err.returncode == 2 and err.stderr.count("\n") == 1


def test_a_symlink_planted_for_todays_file_is_not_followed(qhome: QHome, tmp_path: Path) -> None:
    logs = qhome.path / "logs"
    logs.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    today = logs / f"audit-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"
    os.symlink(victim, today)
    qhome.invoke("config", "set", "backoff_base", "3")  # its flush refuses the link
    assert victim.read_text() == "precious\n"
    proc = qhome.run("audit", "flush")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_a_recovery_names_who_recovered_and_whose_attempt_it_was(qhome: QHome) -> None:
    import subprocess

    qhome.invoke("enqueue", "sleep 0.1", "--id", "held")
    env = {**qhome.env, "QUEUECTL_FAILPOINT": "after_claim_commit"}
    proc = subprocess.run(qhome.cmd("worker", "run"), env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 137
    assert qhome.run("recover", "--job", "held").returncode == 0
    events = [json.loads(x) for x in qhome.invoke("audit", "export", "--job", "held").stdout.splitlines()]
    assert [e["event"] for e in events] == ["job_enqueued", "job_claimed", "job_recovered"]
    claimed, recovered = events[1], events[2]
    assert recovered["worker_id"] == claimed["actor"] == claimed["worker_id"]  # the dead worker's attempt
    assert recovered["actor"] == events[0]["actor"] and "@" in recovered["actor"]  # the operator
    assert recovered["reason"] == "manual"
    assert verify(qhome, "--against-db")["ok"]


def test_unreadable_and_damaged_files_are_reported_not_crashed_on(qhome: QHome, tmp_path: Path) -> None:
    written = build(qhome)
    logs = qhome.path / "logs"
    os.symlink(tmp_path / "elsewhere", logs / "audit-2000-01-01.jsonl")
    first = verify(qhome, code=1)["first_broken"]
    assert first["kind"] == "unreadable_file" and "symlink" in first["message"]
    assert qhome.invoke("audit", "export").stdout.splitlines() == written
    (logs / "audit-2000-01-01.jsonl").unlink()
    path = the_file(logs)
    with path.open("a") as fh:
        fh.write('{"seq": ' + "9" * 30 + "}\n")  # a damaged last line
    qhome.invoke("config", "set", "backoff_base", "5")  # goes on after it, never stalls
    report = verify(qhome, code=1)
    assert (report["first_broken"]["kind"], report["first_broken"]["line"]) == (
        "unreadable",
        len(written) + 1,
    )
    assert json.loads(path.read_text().splitlines()[-1])["event"] == "config_set"


def test_a_home_joining_after_old_lines_were_dropped_starts_at_a_checkpoint(
    qhome: QHome, tmp_path: Path
) -> None:
    build(qhome)
    store = SQLiteStore(str(qhome.db))
    try:
        assert store.trail.prune(time.time() + 10 * DAY, 1000) > 0  # the first home has them all
    finally:
        store.close()
    other = QHome(tmp_path / "other")
    other.path.mkdir()
    result = other.invoke("--db", str(qhome.db), "audit", "verify", "--json")  # flushes: joins
    report = json.loads(result.stdout)
    assert report["ok"], report["problems"]
    assert report["first_seq"] > 1 and report["start"].startswith("checkpoint at seq ")


def test_export_prints_a_line_as_its_bytes_whatever_the_terminals_encoding(qhome: QHome) -> None:
    # Lines are UTF-8 as written: an ASCII or Latin-1 stdout neither refuses nor
    # re-encodes them.
    import subprocess

    qhome.invoke("enqueue", "true", "--id", "café✓")
    qhome.invoke("audit", "flush")
    (path,) = trail_files.files(qhome.path / "logs")
    for encoding in ("ascii", "latin-1", "utf-8"):
        env = {**qhome.env, "PYTHONIOENCODING": encoding}
        proc = subprocess.run(qhome.cmd("audit", "export"), env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == path.read_bytes(), (encoding, proc.stderr)


def test_a_process_stopped_holding_the_trails_lock_stops_no_recovery_and_no_drain(qhome: QHome) -> None:
    # A worker SIGSTOPped in the middle of its flush keeps logs/audit.lock: the
    # monitor's passes, the other workers and the CLI must go on without the files
    # (the events wait in the database), and catch up once the lock is free.
    import fcntl
    import subprocess

    qhome.invoke("enqueue", "sleep 0.1", "--id", "held")
    env = {**qhome.env, "QUEUECTL_FAILPOINT": "after_claim_commit"}
    proc = subprocess.run(qhome.cmd("worker", "run"), env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 137
    for i in range(3):
        qhome.invoke("enqueue", "true", "--id", f"j{i}")
    logs = qhome.path / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(logs / trail_files.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the stopped holder
        started = time.monotonic()
        assert qhome.run("recover", "--job", "held").returncode == 0
        assert qhome.run("worker", "run", "--burst").returncode == 0
        assert qhome.run("config", "set", "backoff_base", "3").returncode == 0
        assert time.monotonic() - started < 30  # each waits a bounded time, never for ever
        assert {j["id"]: j["state"] for j in qhome.json("list")} == {
            "held": "failed", "j0": "completed", "j1": "completed", "j2": "completed",
        }  # fmt: skip
        busy = qhome.run("audit", "verify")
        assert busy.returncode == 5 and busy.stderr.count("\n") == 1 and "audit.lock" in busy.stderr
    finally:
        os.close(fd)
    report = verify(qhome, "--against-db")
    assert report["ok"], report


def test_a_worker_skips_a_held_lock_quietly_and_says_so_once_when_it_lasts(
    qhome: QHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import io

    from queuectl.logs import json_logger

    qhome.invoke("enqueue", "true", "--id", "a")
    logs = qhome.path / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    store = SQLiteStore(str(qhome.path / "db" / "queue.db"))
    out = io.StringIO()
    flusher = trail_files.Flusher(store, logs, json_logger(out))
    fd = os.open(logs / trail_files.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert flusher() == 0 and flusher() == 0 and out.getvalue() == ""  # another writer, for now
        monkeypatch.setattr(trail_files, "BUSY_WARNING", 0.0)
        assert flusher() == 0 and flusher() == 0
        (warning,) = [json.loads(x) for x in out.getvalue().splitlines()]
        assert warning["event"] == "audit_trail_not_written" and "audit.lock" in warning["error"]
    finally:
        os.close(fd)
    assert flusher() == 1
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "audit_trail_written_again"
    store.close()
