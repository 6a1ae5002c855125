"""The schedules table's statements, written once for both backends (`mark`: name ->
placeholder, as store/sql.py).  Every change is one guarded statement; a run is fired
by the update of next_run_at from the value the firer read (FIRE), in the
transaction that inserts its job: of two monitors, one changes the row, and the other
changes nothing and inserts nothing."""

from __future__ import annotations

from collections.abc import Callable

from queuectl.models import SCHEDULE_COLUMNS, Schedule


def statements(mark: Callable[[str], str]) -> dict[str, str]:
    m = mark
    return {
        "add": f"INSERT INTO schedules ({SCHEDULE_COLUMNS})"
        f" VALUES ({m('name')}, {m('cron')}, {m('tz')}, {m('job')}, {m('paused')}, {m('next_run_at')},"
        f" {m('created_at')}, NULL, NULL)",
        "list": f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name",
        "get": f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = {m('name')}",
        "due": f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE NOT paused AND next_run_at <= {m('now')}"
        " ORDER BY next_run_at, name",
        "remove": f"DELETE FROM schedules WHERE name = {m('name')}",
        # A pause keeps next_run_at; a resume sets the next run after now (a run
        # missed while paused is not made up).
        "pause": f"UPDATE schedules SET paused = {m('paused')}"
        f" WHERE name = {m('name')} AND paused <> {m('paused')}",
        "resume": f"UPDATE schedules SET paused = {m('paused')}, next_run_at = {m('next_run_at')}"
        f" WHERE name = {m('name')} AND paused <> {m('paused')}",
        "fire": f"UPDATE schedules SET next_run_at = {m('next_run_at')}, last_run_at = {m('now')},"
        f" last_job_id = {m('job_id')}"
        f" WHERE name = {m('name')} AND NOT paused AND next_run_at = {m('expected')}",
    }


def schedule_detail(s: Schedule) -> dict[str, object]:
    """What a `schedule_added` note records of the schedule."""
    return {"schedule": s.name, "cron": s.cron, "tz": s.tz, "job": s.job, "paused": bool(s.paused)}
