"""Schedules on both stores, at fixed instants: add/list/pause/resume/remove, each
due run fired exactly once however many firers race, one run after downtime, time
zones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queuectl.api import Queue
from queuectl.errors import Conflict, InvalidInput, ScheduleNotFound
from queuectl.models import iso
from queuectl.monitor import Monitor
from queuectl.schedules import run_job
from tests.conftest import StoreFactory
from tests.helpers import T0, QHome

#: T0 is 2023-11-14T22:13:20Z; the next whole minute is T0 + 40.
MINUTE = T0 + 40


def test_add_list_pause_resume_remove(stores: StoreFactory) -> None:
    q = Queue(stores.open())
    s = q.schedule_add("tick", "* * * * *", {"command": "echo hi", "queue": "q1", "timeout": 30}, now=T0)
    assert s.next_run_at == MINUTE and not s.paused
    with pytest.raises(Conflict, match="a schedule named 'tick' exists already"):
        q.schedule_add("tick", "0 * * * *", {"command": "true"}, now=T0)
    (listed,) = q.schedules()
    assert listed == s
    assert json.loads(listed.job)["queue"] == "q1" and json.loads(listed.job)["timeout"] == 30
    assert q.schedule_pause("tick") and not q.schedule_pause("tick")
    assert q.store.due_schedules(MINUTE + 600) == []  # paused: never due
    assert q.schedule_resume("tick", now=MINUTE + 610) and not q.schedule_resume("tick", now=MINUTE + 610)
    assert q.schedules()[0].next_run_at == MINUTE + 660  # the first minute after the resume
    q.schedule_remove("tick")
    assert q.schedules() == []
    for call in (lambda: q.schedule_remove("tick"), lambda: q.schedule_pause("tick")):
        with pytest.raises(ScheduleNotFound):
            call()


@pytest.mark.parametrize(
    ("cron", "tz", "spec", "message"),
    [
        ("61 * * * *", "UTC", {"command": "true"}, r"bad cron expression '61 \* \* \* \*': Bad minute"),
        ("* * *", "UTC", {"command": "true"}, "bad cron expression"),
        ("* * * * *", "Mars/Olympus", {"command": "true"}, "unknown time zone 'Mars/Olympus'"),
        ("* * * * *", "UTC", {"command": ""}, "command must not be empty"),
        ("* * * * *", "UTC", {"command": "true", "unique_key": "k"}, "cannot have unique-key"),
    ],
)
def test_bad_schedules_are_refused_and_change_nothing(
    stores: StoreFactory, cron: str, tz: str, spec: dict[str, str], message: str
) -> None:
    q = Queue(stores.open())
    with pytest.raises(InvalidInput, match=message):
        q.schedule_add("s", cron, spec, tz, now=T0)
    assert q.schedules() == []


def test_a_due_run_is_enqueued_once_however_many_firers_race(stores: StoreFactory) -> None:
    a, b = stores.open(), stores.open()
    Queue(a).schedule_add("tick", "* * * * *", {"command": "true"}, now=T0)
    (seen_a,) = a.due_schedules(MINUTE)
    (seen_b,) = b.due_schedules(MINUTE)  # both read the same due run
    job_a, job_b = run_job(seen_a, MINUTE), run_job(seen_b, MINUTE)
    assert a.fire_schedule("tick", seen_a.next_run_at, MINUTE + 60, job_a, MINUTE)
    assert not b.fire_schedule("tick", seen_b.next_run_at, MINUTE + 60, job_b, MINUTE)
    assert [j.id for j in a.list_jobs(None, None)] == [job_a.id]
    s = a.schedule("tick")
    assert s is not None and (s.next_run_at, s.last_run_at, s.last_job_id) == (MINUTE + 60, MINUTE, job_a.id)


def test_runs_missed_while_nothing_ran_are_enqueued_once(stores: StoreFactory, tmp_path: Path) -> None:
    store = stores.open()
    Queue(store).schedule_add("tick", "* * * * *", {"command": "true"}, now=T0)
    mon = Monitor(store, queue="k", logs_dir=tmp_path / "logs")
    mon.run_once(now=T0 + 30)  # not due yet
    assert store.list_jobs(None, None) == []
    later = MINUTE + 3600 + 5  # an hour of missed minutes
    mon.run_once(now=later)
    mon.run_once(now=later)  # the same instant again: nothing more
    (job,) = store.list_jobs(None, None)
    assert job.state.value == "pending" and job.run_at == later and job.command == "true"
    s = store.schedule("tick")
    assert s is not None and s.next_run_at == MINUTE + 3660  # the first minute after now


def test_the_cron_is_read_in_its_time_zone(stores: StoreFactory) -> None:
    q = Queue(stores.open())
    paris = q.schedule_add("p", "0 3 * * *", {"command": "true"}, "Europe/Paris", now=T0)
    utc = q.schedule_add("u", "0 3 * * *", {"command": "true"}, now=T0)
    assert iso(paris.next_run_at) == "2023-11-15T02:00:00.000Z"  # 03:00 CET
    assert iso(utc.next_run_at) == "2023-11-15T03:00:00.000Z"


def test_the_schedule_commands(qhome: QHome) -> None:
    add = ("schedule", "add", "nightly", "0 3 * * *", "backup.sh")
    r = qhome.run(*add, "--tz", "Europe/Paris", "--queue", "ops")
    assert r.returncode == 0 and r.stdout.startswith("nightly: next run at "), r.stderr
    (listed,) = qhome.json("schedule", "list")
    assert (listed["name"], listed["tz"], listed["job"]["queue"]) == ("nightly", "Europe/Paris", "ops")
    for args, code in (
        (["schedule", "add", "nightly", "0 4 * * *", "x"], 4),
        (["schedule", "add", "bad", "0 25 * * *", "x"], 2),
        (["schedule", "add", "secs", "* * * * * *", "x"], 2),  # a sixth field (seconds)
        (["schedule", "add", "alias", "@sometimes", "x"], 2),
        (["schedule", "add", "bad name", "* * * * *", "x"], 2),
        (["schedule", "add", "tz", "* * * * *", "x", "--tz", "Nowhere/Else"], 2),
        (["schedule", "remove", "nope"], 3),
        (["schedule", "pause", "nope"], 3),
    ):
        r = qhome.run(*args)
        assert r.returncode == code and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r)
    assert len(qhome.json("schedule", "list")) == 1
    r = qhome.run("schedule", "add", "daily", "@daily", "x")  # the usual aliases
    assert r.returncode == 0 and r.stdout.startswith("daily: next run at "), r.stderr
    assert qhome.run("schedule", "remove", "daily").returncode == 0
    assert qhome.run("schedule", "pause", "nightly").stdout == "paused schedule nightly\n"
    assert qhome.json("schedule", "list")[0]["paused"] is True
    assert qhome.run("schedule", "resume", "nightly").stdout == "resumed schedule nightly\n"
    assert qhome.run("schedule", "remove", "nightly").stdout == "removed schedule nightly\n"
    assert qhome.run("schedule", "list").stdout == "no schedules\n"
