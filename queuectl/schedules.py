"""Cron schedules: what `queuectl schedule ...` checks, and the firing of due runs
that every recovery pass does (the monitor's, or a worker's covering for it).

Missed runs: a schedule whose next run is due is fired once, and its next run is set
to the first cron time after *now*, not after the missed one.  So a run missed while
nothing ran (no monitor, no worker) is enqueued once when one starts, never once per
missed tick; a resumed schedule's next run is the first after the resume.

Exactly once: a run is fired by Store.fire_schedule, which moves next_run_at from the
value read to the next one in the transaction that inserts the job; of several
monitors (or a monitor and a covering worker) reading the same due run, one changes
the row and enqueues, the others change nothing.

The cron library (cronsim) is imported only here, and only when a schedule is added,
resumed or fired: a worker that never fires one never loads it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from queuectl import rules
from queuectl.errors import InvalidInput
from queuectl.models import NewJob, Schedule

#: The job fields a schedule keeps for its runs (the rest are the run's own: id,
#: run_at; unique keys and parents are refused).
TEMPLATE_FIELDS = ("command", "max_retries", "priority", "timeout", "queue", "cwd", "env")


def check_name(name: str) -> str:
    return rules.check_name("schedule", name)


def zone(tz: str) -> Any:
    """The IANA time zone `tz` (InvalidInput if unknown)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {tz!r} (an IANA name such as UTC or Europe/Paris)") from None


#: The named schedules of crontab(5), as the five fields they stand for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def next_after(cron: str, tz: str, t: float) -> float:
    """The first time after `t` (epoch seconds) that `cron` names in zone `tz`;
    InvalidInput (one line) for an expression that is not five crontab fields (or one
    of ALIASES) or that cronsim refuses.  cronsim would read a sixth field as seconds:
    refused, as schedules fire at most once per recovery pass."""
    from cronsim import CronSim, CronSimError

    expr = ALIASES.get(cron.strip().lower(), cron)
    if expr.startswith("@") or len(expr.split()) != 5:
        raise InvalidInput(
            f"bad cron expression {cron!r}: five fields (minute hour day month weekday)"
            f" or one of {', '.join(ALIASES)}"
        )
    start = datetime.fromtimestamp(t, zone(tz))
    try:
        return next(iter(CronSim(expr, start))).timestamp()
    except CronSimError as exc:
        raise InvalidInput(f"bad cron expression {cron!r}: {str(exc).splitlines()[0]}") from None
    except StopIteration:
        raise InvalidInput(f"cron expression {cron!r} never fires") from None


def template(row: NewJob) -> str:
    """The JSON text a schedule keeps of a checked job."""
    return json.dumps({f: getattr(row, f) for f in TEMPLATE_FIELDS}, sort_keys=True)


def run_job(schedule: Schedule, now: float) -> NewJob:
    """The job one run of `schedule` at `now` enqueues: a new id, due now."""
    from queuectl.rules import new_id

    fields = json.loads(schedule.job)
    return NewJob(id=new_id(now), run_at=now, **{f: fields[f] for f in TEMPLATE_FIELDS})


def fire_due(store: Any, now: float) -> list[tuple[str, str]]:
    """Fire every due schedule once at `now`: (schedule name, job id) of each run this
    process enqueued (a run another process fired first is left out)."""
    fired = []
    for s in store.due_schedules(now):
        try:
            following = next_after(s.cron, s.tz, now)
        except InvalidInput:
            continue  # checked when added: only a zone removed from the system since
        job = run_job(s, now)
        if store.fire_schedule(s.name, s.next_run_at, following, job, now):
            fired.append((s.name, job.id))
    return fired
