"""The SQLite store's schedules (Store's schedule methods; the statements are
store/sql_schedules.py's, shared with PostgreSQL).  Every change is audited: a note
in its own transaction, and a fired run's job events name the firing process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from queuectl.errors import Conflict, DuplicateJob
from queuectl.models import NewJob, Schedule
from queuectl.store.sql_schedules import schedule_detail, statements
from queuectl.store.sqlite.insert import inserter

T = TypeVar("T")
_SCHED = statements(lambda name: f":{name}")


class Schedules:
    """Mixed into SQLiteStore: uses its reads, audited writes, clock and actor."""

    actor: str

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _acted(self, fn: Callable[[apsw.Connection], T], note: str | None = None, **detail: Any) -> T:
        raise NotImplementedError

    def _noted(self, sql: str, params: Any, note: str, **detail: Any) -> int:
        raise NotImplementedError

    def _now(self, now: float | None) -> float:
        raise NotImplementedError

    def schedule_add(self, schedule: Schedule) -> None:
        params = {k: v for k, v in schedule.__dict__.items() if k not in ("last_run_at", "last_job_id")}
        try:
            self._noted(_SCHED["add"], params, "schedule_added", **schedule_detail(schedule))
        except DuplicateJob:
            raise Conflict(f"a schedule named {schedule.name!r} exists already") from None

    def schedules(self) -> list[Schedule]:
        return [Schedule.from_tuple(r) for r in self._read(_SCHED["list"])]

    def schedule(self, name: str) -> Schedule | None:
        rows = self._read(_SCHED["get"], {"name": name})
        return Schedule.from_tuple(rows[0]) if rows else None

    def schedule_remove(self, name: str) -> bool:
        return self._noted(_SCHED["remove"], {"name": name}, "schedule_removed", schedule=name) > 0

    def schedule_pause(self, name: str) -> bool:
        params = {"name": name, "paused": True}
        return self._noted(_SCHED["pause"], params, "schedule_paused", schedule=name) > 0

    def schedule_resume(self, name: str, next_run_at: float) -> bool:
        params = {"name": name, "paused": False, "next_run_at": next_run_at}
        return self._noted(_SCHED["resume"], params, "schedule_resumed", schedule=name) > 0

    def due_schedules(self, now: float | None = None) -> list[Schedule]:
        return [Schedule.from_tuple(r) for r in self._read(_SCHED["due"], {"now": self._now(now)})]

    def fire_schedule(self, name: str, expected: float, next_run_at: float, job: NewJob, now: float) -> bool:
        row = (job.id, job.command, job.max_retries, job.priority, job.timeout, job.run_at)
        insert = inserter(
            [(*row, job.queue, job.cwd, job.env, job.unique_key, tuple(job.after))], now, self.actor
        )
        params = {"name": name, "expected": expected, "next_run_at": next_run_at}
        params.update(now=now, job_id=job.id)

        def fire(c: apsw.Connection) -> bool:
            c.execute(_SCHED["fire"], params)
            if not c.changes():
                return False
            insert(c)
            return True

        return self._acted(fire, "schedule_fired", schedule=name, job_id=job.id)
