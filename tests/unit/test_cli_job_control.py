"""`queuectl enqueue`'s job-control options through the real command (main(), exit
codes): what is stored, what is printed, and that bad input is one line, changes
nothing and shows no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import QHome


def test_enqueue_stores_queue_cwd_env_key_and_parents(qhome: QHome) -> None:
    parent = qhome.enqueue("true")
    env = {**qhome.env, "FROM_CALLER": "copied", "NOT_COPIED": "secret"}
    proc = subprocess.run(
        [
            *qhome.cmd("enqueue", "echo hi", "--queue", "reports", "--cwd", "/tmp", "--env", "MODE=a=b"),
            "--env",
            "FROM_CALLER",
            "--unique-key",
            "nightly",
            "--after",
            parent,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    job = qhome.job(proc.stdout.strip())
    assert (job["queue"], job["cwd"], job["unique_key"], job["after"], job["state"]) == (
        "reports",
        "/tmp",
        "nightly",
        [parent],
        "waiting",
    )
    assert job["env"] == {"MODE": "a=b", "FROM_CALLER": "copied"}  # nothing else captured
    listed = {j["id"]: j for j in qhome.json("list", "--json")}
    assert listed[job["id"]]["env"] == job["env"] and listed[job["id"]]["queue"] == "reports"


def test_a_job_defaults_to_the_callers_directory(qhome: QHome, tmp_path: object) -> None:
    proc = subprocess.run(
        [*qhome.cmd("enqueue", "true")], env=qhome.env, cwd="/", capture_output=True, text=True, check=False
    )
    assert qhome.job(proc.stdout.strip())["cwd"] == "/"


def test_on_conflict_ignore_prints_the_holder(qhome: QHome) -> None:
    first = qhome.enqueue("true", "--unique-key", "k")
    held = qhome.run("enqueue", "true", "--unique-key", "k")
    assert held.returncode == 4 and held.stdout == ""
    assert (
        held.stderr == f"queuectl: error: unique key 'k' is held by job {first}"
        " (pending, failed, waiting or processing)\n"
    )
    ignored = qhome.run("enqueue", "true", "--unique-key", "k", "--on-conflict", "ignore")
    assert (ignored.returncode, ignored.stdout) == (0, f"{first}\n")
    lines = '{"command": "a", "unique_key": "k"}\n{"command": "b", "unique_key": "j"}\n'
    bulk = qhome.run("enqueue", "-", "--on-conflict", "ignore", input=lines)
    ids = bulk.stdout.split()
    assert bulk.returncode == 0 and ids[0] == first and len(ids) == 2
    assert len(qhome.json("list", "--json")) == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--queue", "no spaces"], 2, "bad queue name 'no spaces': 1 to 64 letters"),
        (["--env", "A-B=1"], 2, "is not a variable name"),
        (["--env", "QUEUECTL_LEASE=1"], 2, "set by the worker"),
        (["--env", "SURELY_UNSET_QCTL"], 2, "SURELY_UNSET_QCTL is not set here"),
        (["--after", "ghost"], 3, "no job with id 'ghost'"),
        (["--id", "me", "--after", "me"], 2, "cannot run after itself"),
        (["--on-conflict", "maybe"], 2, "'maybe' is not one of"),
    ],
)
def test_bad_job_control_input_is_one_line_and_changes_nothing(
    qhome: QHome, args: list[str], code: int, message: str
) -> None:
    qhome.enqueue("true", "--id", "seed")
    before = qhome.dump()
    proc = qhome.run("enqueue", "true", *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert qhome.dump() == before


def test_a_deleted_current_directory_is_one_clear_error(qhome: QHome, tmp_path: object) -> None:
    code = (
        "import os, sys, tempfile; d = tempfile.mkdtemp(); os.chdir(d); os.rmdir(d);"
        "sys.argv = ['queuectl', *sys.argv[1:]]; from queuectl.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--home", str(qhome.path), "enqueue", "true"],
        env=qhome.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == "queuectl: error: the current directory no longer exists: give --cwd DIR\n"
    ok = subprocess.run(
        [sys.executable, "-c", code, "--home", str(qhome.path), "enqueue", "true", "--cwd", "/"],
        env=qhome.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(qhome.run("inspect", "--json", ok.stdout.strip()).stdout)["cwd"] == "/"
