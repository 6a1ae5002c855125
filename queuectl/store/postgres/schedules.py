"""The PostgreSQL store's schedules (Store's schedule methods; the statements are
store/sql_schedules.py's, shared with SQLite)."""

from __future__ import annotations

from typing import Any

from queuectl.errors import Conflict, DuplicateJob
from queuectl.models import NewJob, Schedule
from queuectl.store.postgres import queries
from queuectl.store.postgres.connection import Conn, Connection
from queuectl.store.postgres.trail import add_note, set_actor
from queuectl.store.sql_schedules import schedule_detail, statements

_SCHED = statements(lambda name: f"%({name})s")


class Schedules:
    """Mixed into PostgresStore: uses its connection (`_db`), clock and channel."""

    _db: Connection
    _channel: str
    actor: str

    def now(self) -> float:
        raise NotImplementedError

    def schedule_add(self, schedule: Schedule) -> None:
        params = {k: v for k, v in schedule.__dict__.items() if k not in ("last_run_at", "last_job_id")}
        try:
            self._sched_change("add", params, "schedule_added", schedule_detail(schedule))
        except DuplicateJob:
            raise Conflict(f"a schedule named {schedule.name!r} exists already") from None

    def schedules(self) -> list[Schedule]:
        return [Schedule.from_tuple(r) for r in self._db.read(_SCHED["list"])]

    def schedule(self, name: str) -> Schedule | None:
        rows = self._db.read(_SCHED["get"], {"name": name})
        return Schedule.from_tuple(rows[0]) if rows else None

    def _sched_change(self, key: str, params: dict[str, Any], note: str, detail: dict[str, Any]) -> bool:
        """One guarded statement and, when it changed the schedule, its note."""

        def run(conn: Conn) -> bool:
            with conn.transaction():
                changed = conn.execute(_SCHED[key], params).rowcount > 0
                if changed:
                    add_note(conn, note, self.actor, detail)
            return changed

        return bool(self._db.run(run))

    def schedule_remove(self, name: str) -> bool:
        return self._sched_change("remove", {"name": name}, "schedule_removed", {"schedule": name})

    def schedule_pause(self, name: str) -> bool:
        params = {"name": name, "paused": True}
        return self._sched_change("pause", params, "schedule_paused", {"schedule": name})

    def schedule_resume(self, name: str, next_run_at: float) -> bool:
        params = {"name": name, "paused": False, "next_run_at": next_run_at}
        return self._sched_change("resume", params, "schedule_resumed", {"schedule": name})

    def due_schedules(self, now: float | None = None) -> list[Schedule]:
        at = self.now() if now is None else now
        return [Schedule.from_tuple(r) for r in self._db.read(_SCHED["due"], {"now": at})]

    def fire_schedule(self, name: str, expected: float, next_run_at: float, job: NewJob, now: float) -> bool:
        params = {"name": name, "expected": expected, "next_run_at": next_run_at, "now": now}
        params["job_id"] = job.id

        def fire(conn: Conn) -> bool:
            with conn.transaction():
                if conn.execute(_SCHED["fire"], params).rowcount == 0:
                    return False
                set_actor(conn, self.actor)
                queries.insert_few(conn, [job], now, frozenset())
                add_note(conn, "schedule_fired", self.actor, {"schedule": name, "job_id": job.id}, now)
                queries.link(conn, [job])
                conn.execute("SELECT pg_notify(%s, 'enqueue')", (self._channel,))
            return True

        return bool(self._db.run(fire))
