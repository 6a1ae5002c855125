"""The CLI through click's CliRunner (and `python -m queuectl` where stdout must hold
nothing but the answer): every command and its stable --json shapes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from queuectl.config import ALL_KEYS
from queuectl.models import parse_time
from tests.helpers import QHome

#: The status --json keys every version carries.
STATUS_KEYS = {
    "pending",
    "processing",
    "completed",
    "failed",
    "dead",
    "waiting",
    "cancelled",
    "total",
    "workers",
}
#: Keys status --json may carry besides (documented in the README).
STATUS_EXTRA = {"recovery"}
#: Every field of a job in the JSON form.
JOB_KEYS = {
    "id",
    "command",
    "state",
    "attempts",
    "max_retries",
    "created_at",
    "updated_at",
    "priority",
    "run_at",
    "next_run_at",
    "timeout",
    "exit_code",
    "error",
    "started_at",
    "finished_at",
    "worker_id",
}
OUTPUT_KEYS = {"stdout", "stderr"}
EVENT_KEYS = {"at", "from", "to", "attempt", "worker_id", "exit_code", "error"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ID = re.compile(r"^[0-9a-z]{16}$")


def drain(qhome: QHome) -> None:
    """Run one real burst worker until nothing is due."""
    proc = qhome.run("worker", "run", "--burst", "--poll-interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def check_times(job: dict[str, Any]) -> None:
    for key in ("created_at", "updated_at", "run_at", "next_run_at", "started_at", "finished_at"):
        assert job[key] is None or ISO_UTC.match(job[key]), (key, job[key])


# --- enqueue ------------------------------------------------------------------------------


def test_enqueue_prints_the_id_alone(qhome: QHome) -> None:
    proc = qhome.run("enqueue", "echo hi")
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert ID.match(proc.stdout.removesuffix("\n"))
    assert proc.stdout.count("\n") == 1
    job_id = proc.stdout.strip()
    assert qhome.job(job_id)["command"] == "echo hi"


def test_enqueue_json_and_options(qhome: QHome) -> None:
    assert qhome.invoke("enqueue", '{"id":"job1","command":"sleep 2","max_retries":3}').stdout == "job1\n"
    out = qhome.invoke(
        "enqueue",
        "echo hi",
        "--max-retries",
        "3",
        "--priority",
        "5",
        "--delay",
        "10",
        "--timeout",
        "30",
        "--id",
        "job2",
    )
    assert out.stdout == "job2\n"
    job1, job2 = qhome.job("job1"), qhome.job("job2")
    assert (job1["command"], job1["state"], job1["attempts"], job1["max_retries"]) == (
        "sleep 2",
        "pending",
        0,
        3,
    )
    assert (job2["command"], job2["max_retries"], job2["priority"], job2["timeout"]) == (
        "echo hi",
        3,
        5,
        30.0,
    )
    assert parse_time(job2["run_at"]) - parse_time(job2["created_at"]) == pytest.approx(10, abs=0.002)
    assert job2["next_run_at"] == job2["run_at"]
    # Unquoted words make one command; --run-at takes an ISO-8601 time.
    qhome.invoke("enqueue", "echo", "two", "words", "--id", "job3", "--run-at", "2030-01-02T03:04:05Z")
    job3 = qhome.job("job3")
    assert (job3["command"], job3["run_at"]) == ("echo two words", "2030-01-02T03:04:05.000Z")


def test_a_job_printed_by_inspect_can_be_enqueued_again(qhome: QHome) -> None:
    qhome.enqueue('{"id": "orig", "command": "true", "priority": 2}')
    data = {k: v for k, v in qhome.job("orig").items() if k in ("command", "priority", "state", "attempts")}
    data["id"] = "copy"
    qhome.enqueue(json.dumps(data))
    assert qhome.job("copy")["priority"] == 2


def test_bulk_enqueue_from_stdin(qhome: QHome) -> None:
    lines = "\n".join(
        [
            '{"id": "b1", "command": "true"}',
            "",
            '{"command": "echo two", "priority": 3}',
            '{"id": "b3", "command": "false", "max_retries": 0}',
        ]
    )
    proc = qhome.run("enqueue", "-", input=lines + "\n")
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.splitlines()
    assert len(ids) == 3
    assert ids[0] == "b1" and ids[2] == "b3" and ID.match(ids[1])
    assert sorted(j["id"] for j in qhome.json("list")) == sorted(ids)
    assert qhome.job(ids[1])["priority"] == 3
    # Generated ids keep the order of the lines (they are sortable).
    proc = qhome.run("enqueue", "-", input='{"command": "true"}\n' * 50)
    assert proc.returncode == 0
    generated = proc.stdout.splitlines()
    assert len(set(generated)) == 50
    assert [j["id"] for j in qhome.json("list", "--state", "pending")][-50:] == generated


def test_bulk_enqueue_splits_only_on_newlines(qhome: QHome) -> None:
    """JSON allows U+2028, U+0085 and friends raw inside strings: they are not line ends.
    CRLF line ends are accepted."""
    commands = ["echo a\u2028b", "echo c\x85d", "echo e\x1cf"]
    lines = [json.dumps({"id": f"s{i}", "command": c}, ensure_ascii=False) for i, c in enumerate(commands)]
    proc = qhome.run("enqueue", "-", input="\r\n".join(lines) + "\r\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["s0", "s1", "s2"]
    assert [qhome.job(f"s{i}")["command"] for i in range(3)] == commands


def test_bulk_enqueue_is_all_or_nothing(qhome: QHome) -> None:
    qhome.enqueue("true", "--id", "exists")
    before = qhome.dump()
    good = '{"command": "true"}'
    bad_line = qhome.run("enqueue", "-", input=f'{good}\n{good}\n{{"command": ""}}\n{good}\n')
    assert bad_line.returncode == 2
    assert "line 3" in bad_line.stderr or "job 3" in bad_line.stderr
    duplicate = qhome.run("enqueue", "-", input=f'{good}\n{{"id": "exists", "command": "true"}}\n')
    assert duplicate.returncode == 4
    assert "exists" in duplicate.stderr
    assert qhome.dump() == before


# --- reading ------------------------------------------------------------------------------


def test_status_json(qhome: QHome) -> None:
    empty = qhome.json("status")
    assert set(empty) - STATUS_EXTRA == STATUS_KEYS
    assert {k: empty[k] for k in STATUS_KEYS} == dict.fromkeys(STATUS_KEYS, 0)
    qhome.enqueue("true", "--id", "ok")
    qhome.enqueue("false", "--id", "bad", "--max-retries", "0")
    qhome.enqueue("true", "--id", "later", "--delay", "3600")
    drain(qhome)
    data = qhome.json("status")
    assert {k: data[k] for k in STATUS_KEYS} == {
        "pending": 1,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "dead": 1,
        "waiting": 0,
        "cancelled": 0,
        "total": 3,
        "workers": 0,
    }
    assert all(type(data[k]) is int for k in STATUS_KEYS)
    human = qhome.invoke("status").stdout
    assert re.search(r"^pending\s+1$", human, re.M)
    assert re.search(r"^total\s+3$", human, re.M)


def test_list_json_is_an_array_of_jobs(qhome: QHome) -> None:
    assert qhome.json("list") == []
    for i in range(3):
        qhome.enqueue("true", "--id", f"j{i}")
    jobs = qhome.json("list")
    assert [j["id"] for j in jobs] == ["j0", "j1", "j2"]
    for job in jobs:
        assert set(job) >= JOB_KEYS
        check_times(job)
    assert [j["id"] for j in qhome.json("list", "--limit", "2")] == ["j0", "j1"]
    table = qhome.invoke("list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "ATTEMPTS"]
    assert len(table) == 4


def test_list_state_json_prints_only_a_json_array(qhome: QHome) -> None:
    qhome.enqueue("true", "--id", "done")
    drain(qhome)
    qhome.enqueue("true", "--id", "waiting")
    for state, ids in (("pending", ["waiting"]), ("completed", ["done"]), ("dead", []), ("FAILED", [])):
        proc = qhome.run("list", "--state", state, "--json")
        assert proc.returncode == 0
        data = json.loads(proc.stdout)  # the whole of stdout is one JSON value
        assert isinstance(data, list)
        assert [j["id"] for j in data] == ids
        assert proc.stderr == ""


def test_inspect_json_has_every_field_and_the_history(qhome: QHome) -> None:
    qhome.enqueue('{"id": "x", "command": "echo out; echo err >&2; exit 4", "max_retries": 1}')
    drain(qhome)
    job = qhome.job("x")
    assert JOB_KEYS | OUTPUT_KEYS | {"history"} <= set(job)
    check_times(job)
    assert (job["state"], job["attempts"], job["exit_code"]) == ("failed", 1, 4)
    assert (job["stdout"], job["stderr"]) == ("out\n", "err\n")
    assert parse_time(job["next_run_at"]) - parse_time(job["finished_at"]) == pytest.approx(2, abs=0.002)
    history = job["history"]
    for event in history:
        assert set(event) >= EVENT_KEYS
        assert ISO_UTC.match(event["at"])
    assert [(e["from"], e["to"], e["attempt"]) for e in history] == [
        (None, "pending", 0),
        ("pending", "processing", 1),
        ("processing", "failed", 1),
    ]
    assert history[-1]["exit_code"] == 4
    assert history[-1]["error"] == "exited with code 4"
    assert history[-1]["worker_id"] == job["worker_id"]
    text = qhome.invoke("inspect", "x").stdout
    assert "--- history ---" in text and "out" in text and "err" in text


def test_logs_shows_the_last_attempts_output(qhome: QHome) -> None:
    qhome.enqueue("echo to-out; echo to-err >&2", "--id", "l")
    drain(qhome)
    assert qhome.invoke("logs", "l", "--stream", "stdout").stdout == "to-out\n"
    assert qhome.invoke("logs", "l", "--stream", "stderr").stdout == "to-err\n"
    both = qhome.invoke("logs", "l")
    assert both.stdout == "to-out\n"
    assert both.stderr == "to-err\n"


# --- the dead-letter queue ---------------------------------------------------------------


def test_dlq_list_and_retry(qhome: QHome) -> None:
    qhome.enqueue('{"id": "d1", "command": "false", "max_retries": 1}')
    qhome.enqueue('{"id": "d2", "command": "false", "max_retries": 0}')
    qhome.enqueue('{"id": "ok", "command": "true"}')
    qhome.configure(backoff_base=1, backoff_max=0)  # retry at once, so the burst drains it
    drain(qhome)
    dead = qhome.json("dlq", "list")
    assert [j["id"] for j in dead] == ["d1", "d2"]
    assert all(set(j) >= JOB_KEYS and j["state"] == "dead" for j in dead)
    assert qhome.job("d1")["attempts"] == 2
    assert qhome.invoke("dlq", "retry", "d1").stdout == "d1\n"
    d1 = qhome.job("d1")
    assert (d1["state"], d1["attempts"]) == ("pending", 0)
    assert (d1["history"][-1]["from"], d1["history"][-1]["to"]) == ("dead", "pending")
    assert [j["id"] for j in qhome.json("dlq", "list")] == ["d2"]
    assert qhome.invoke("dlq", "retry", "--all").stdout == "d2\n"
    assert qhome.json("dlq", "list") == []
    assert qhome.invoke("dlq", "retry", "--all").stderr == "no dead jobs\n"
    drain(qhome)
    assert [j["id"] for j in qhome.json("dlq", "list")] == ["d1", "d2"]
    assert qhome.job("d1")["attempts"] == 2
    assert qhome.invoke("dlq", "retry", "d1", "d2").stdout == "d1\nd2\n"
    assert qhome.json("status")["pending"] == 2


def test_dlq_retry_of_several_ids_changes_nothing_if_one_is_bad(qhome: QHome) -> None:
    qhome.enqueue('{"id": "d1", "command": "false", "max_retries": 0}')
    qhome.enqueue('{"id": "alive", "command": "true", "delay": 3600}')
    drain(qhome)
    before = qhome.dump()
    assert qhome.run("dlq", "retry", "d1", "nope").returncode == 3
    assert qhome.run("dlq", "retry", "d1", "alive").returncode == 4
    assert qhome.dump() == before


# --- config ----------------------------------------------------------------------------------


def test_config_get_json_has_every_key_in_underscore_form(qhome: QHome) -> None:
    values = qhome.json("config", "get")
    assert set(values) == set(ALL_KEYS)
    assert all("-" not in k for k in values)
    assert values["max_retries"] == 3
    assert values["backoff_base"] == 2
    assert values["backoff_max"] == 3600
    assert values["job_timeout"] == 60
    assert values["heartbeat_timeout"] == 15
    assert values["monitor_interval"] == 5
    assert qhome.json("config", "get", "max-retries") == {"max_retries": 3}


def test_config_set_accepts_both_spellings(qhome: QHome) -> None:
    assert qhome.invoke("config", "set", "max-retries", "5").stdout == "max_retries = 5\n"
    assert qhome.invoke("config", "get", "max_retries").stdout == "5\n"
    qhome.invoke("config", "set", "max_retries", "6")
    assert qhome.json("config", "get", "max-retries") == {"max_retries": 6}
    qhome.invoke("config", "set", "BACKOFF-BASE", "1.5")
    assert qhome.json("config", "get")["backoff_base"] == 1.5


def test_config_applies_to_jobs_enqueued_afterwards(qhome: QHome) -> None:
    qhome.enqueue("true", "--id", "before")
    qhome.configure(max_retries=7, job_timeout=12)
    qhome.enqueue("true", "--id", "after")
    assert (qhome.job("before")["max_retries"], qhome.job("before")["timeout"]) == (3, 60)
    assert (qhome.job("after")["max_retries"], qhome.job("after")["timeout"]) == (7, 12)


def test_heartbeat_interval_must_stay_well_below_the_timeout(qhome: QHome) -> None:
    qhome.configure(heartbeat_timeout=30, heartbeat_interval=7.5)  # in this order: allowed (a quarter)
    assert qhome.json("config", "get", "heartbeat_interval") == {"heartbeat_interval": 7.5}
    before = qhome.dump()
    too_slow = qhome.run("config", "set", "heartbeat-interval", "8")
    assert too_slow.returncode == 2
    assert "at most a quarter of heartbeat_timeout" in too_slow.stderr
    too_short = qhome.run("config", "set", "heartbeat_timeout", "29")
    assert too_short.returncode == 2
    assert qhome.dump() == before


# --- help and the environment ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["enqueue"],
        ["worker"],
        ["worker", "run"],
        ["status"],
        ["list"],
        ["inspect"],
        ["logs"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "retry"],
        ["config"],
        ["config", "get"],
        ["config", "set"],
        ["queue"],
        ["queue", "list"],
        ["queue", "pause"],
        ["queue", "resume"],
        ["queue", "set"],
    ],
)
def test_every_command_has_help(qhome: QHome, command: list[str]) -> None:
    out = qhome.invoke(*command, "--help").stdout
    assert out.startswith("Usage: ")
    assert "--help" in out


def test_the_home_comes_from_the_environment(qhome: QHome) -> None:
    import subprocess
    import sys

    env = {**qhome.env, "QUEUECTL_HOME": str(qhome.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "queuectl", "enqueue", "true", "--id", "envjob"],
        env=env,
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert qhome.db.exists()
    assert qhome.job("envjob")["state"] == "pending"
    # Owner-only, from the first use.
    assert qhome.db.stat().st_mode & 0o777 == 0o600
    assert (qhome.path / "db").stat().st_mode & 0o777 == 0o700
