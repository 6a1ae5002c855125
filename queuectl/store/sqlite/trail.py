"""The audit trail in a SQLite database (store/trail.py has the contract).

Commits are serial here, and a job event's seq is the largest plus one at its
insert, so events commit in seq order: the head covers every event up to
`events_upto` and every note up to `notes_upto`.  A purge that deletes the newest
events would let SQLite hand their seqs out again: it deletes only sealed events
and lowers `events_upto` to the newest event left (note_change below).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import apsw

from queuectl.store.sqlite.connection import read, write
from queuectl.store.trail import Mark
from queuectl.trail import Sealed, Source

_SOURCE = "at, actor, job_id, from_state, to_state, attempt, worker_id, exit_code, error, reason"
#: The head and up to :n events and :n notes after it, in one snapshot (one
#: statement), merged in commit order: (pos, kind, id).
PENDING = f"""
WITH h AS (SELECT seq, hash, events_upto, notes_upto FROM audit_head)
SELECT h.seq, h.hash, h.events_upto, h.notes_upto, s.* FROM h LEFT JOIN (
    SELECT * FROM (SELECT seq AS pos, 0 AS src, seq AS id, {_SOURCE}, NULL AS kind, NULL AS detail
                   FROM job_events WHERE seq > (SELECT events_upto FROM audit_head)
                   ORDER BY seq LIMIT :n)
    UNION ALL
    SELECT * FROM (SELECT pos, 1, id, at, actor, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                          NULL, kind, detail
                   FROM audit_notes WHERE id > (SELECT notes_upto FROM audit_head)
                   ORDER BY id LIMIT :n)
) s ON 1
ORDER BY s.pos, s.src, s.id
"""
#: A note by :actor, ordered after the newest job event.
NOTE = (
    "INSERT INTO audit_notes (pos, at, kind, actor, detail)"
    " VALUES ((SELECT coalesce(max(seq), 0) FROM job_events), :at, :kind, :actor, :detail)"
)
#: Before deleting job events: only sealed ones may go (an unsealed event of a
#: purged job stays until a later purge finds it sealed).
SEALED_EVENT = "seq <= (SELECT events_upto FROM audit_head)"
#: A job (the row `jobs`) none of whose events waits to be sealed: one a purge may
#: delete with its whole history (a job with an unsealed event waits for a later
#: purge, so no event is ever left without its job).
ALL_SEALED = (
    "NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.id"
    " AND e.seq > (SELECT events_upto FROM audit_head))"
)
#: After deleting job events: the newest left is what new seqs follow.
LOWER_MARK = (
    "UPDATE audit_head SET events_upto = min(events_upto, (SELECT coalesce(max(seq), 0) FROM job_events))"
)


def add_note(c: apsw.Connection, kind: str, actor: str, detail: dict[str, Any], at: float) -> None:
    """Write a note inside the caller's write transaction."""
    c.execute(NOTE, {"at": at, "kind": kind, "actor": actor, "detail": json.dumps(detail, sort_keys=True)})


def stamp(c: apsw.Connection, actor: str, after: int) -> None:
    """Name `actor` on the job events this transaction wrote (seq after `after`, read
    at its start) that name none."""
    c.execute("UPDATE job_events SET actor = ? WHERE seq > ? AND actor IS NULL", (actor, after))


def newest_event(c: apsw.Connection) -> int:
    return int(str(c.execute("SELECT coalesce(max(seq), 0) FROM job_events").fetchall()[0][0]))


def _source(row: Sequence[Any], ident: int) -> Source:
    at, actor, job_id, frm, to, attempt, worker, code, error, reason, kind, detail = row
    return Source(
        id=ident, at=float(at), actor=actor, job_id=job_id, from_state=frm, to_state=to,
        attempt=attempt, worker_id=worker, exit_code=code, error=error, reason=reason,
        note=kind, detail=detail,
    )  # fmt: skip


class SQLiteTrail:
    """Store.trail for SQLiteStore: same connection, same transactions."""

    def __init__(
        self, conn: apsw.Connection, path: str, actor: Callable[[], str], clock: Callable[[], float]
    ):
        self._conn, self._path, self._actor, self._clock = conn, path, actor, clock

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return read(self._conn, self._path, sql, params)

    def _write(self, fn: Callable[[apsw.Connection], Any]) -> Any:
        return write(self._conn, self._path, fn)

    def head(self) -> tuple[int, str]:
        seq, digest = self._read("SELECT seq, hash FROM audit_head")[0]
        return int(seq), str(digest)

    def pending(self, limit: int) -> tuple[tuple[int, str], tuple[object, object], list[Source]]:
        rows = self._read(PENDING, {"n": limit})
        seq, digest, events_upto, notes_upto = rows[0][:4]
        taken = [_source(row[7:], int(row[6])) for row in rows if row[4] is not None][:limit]
        old = (int(events_upto), int(notes_upto))
        new = (
            max((s.id for s in taken if s.note is None), default=old[0]),
            max((s.id for s in taken if s.note is not None), default=old[1]),
        )
        return (int(seq), str(digest)), (old, new), taken

    def commit(self, head: tuple[int, str], token: tuple[object, object], lines: Sequence[Sealed]) -> bool:
        old, new = cast("tuple[tuple[int, int], tuple[int, int]]", token)
        now = self._clock()

        def run(c: apsw.Connection) -> bool:
            current = c.execute("SELECT seq, events_upto, notes_upto FROM audit_head").fetchall()[0]
            if (current[0], (current[1], current[2])) != (head[0], old):
                return False
            c.executemany(
                "INSERT INTO audit_lines (seq, sealed_at, hash, line) VALUES (?, ?, ?, ?)",
                [(ln.seq, now, ln.hash, ln.line) for ln in lines],
            )
            seq, digest = (lines[-1].seq, lines[-1].hash) if lines else head
            c.execute(
                "UPDATE audit_head SET seq = ?, hash = ?, events_upto = ?, notes_upto = ?",
                (seq, digest, new[0], new[1]),
            )
            return True

        return bool(self._write(run))

    def lines(self, after: int, limit: int) -> list[tuple[int, str]]:
        rows = self._read(
            "SELECT seq, line FROM audit_lines WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [(int(s), str(t)) for s, t in rows]

    def first_kept(self) -> int | None:
        value = self._read("SELECT min(seq) FROM audit_lines")[0][0]
        return None if value is None else int(value)

    def home(self, home: str) -> Mark | None:
        rows = self._read("SELECT home, seq, hash, at FROM audit_homes WHERE home = ?", (home,))
        return Mark(str(rows[0][0]), int(rows[0][1]), str(rows[0][2]), float(rows[0][3])) if rows else None

    def homes(self) -> list[Mark]:
        rows = self._read("SELECT home, seq, hash, at FROM audit_homes ORDER BY home")
        return [Mark(str(h), int(s), str(d), float(a)) for h, s, d, a in rows]

    def set_home(self, home: str, seq: int, hash: str, now: float | None = None) -> None:
        at = self._clock() if now is None else now
        self._write(
            lambda c: c.execute(
                "INSERT INTO audit_homes (home, seq, hash, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (home) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,"
                " at = excluded.at WHERE excluded.seq >= audit_homes.seq",
                (home, seq, hash, at),
            )
        )

    def note(self, kind: str, detail: dict[str, object], now: float | None = None) -> None:
        at = self._clock() if now is None else now
        self._write(lambda c: add_note(c, kind, self._actor(), detail, at))

    def checkpoints(self) -> list[tuple[int, str, float, str]]:
        rows = self._read("SELECT seq, hash, at, actor FROM audit_checkpoints ORDER BY seq")
        return [(int(s), str(h), float(a), str(w)) for s, h, a, w in rows]

    def add_checkpoint(self, seq: int, hash: str, now: float | None = None) -> None:
        at = self._clock() if now is None else now

        def run(c: apsw.Connection) -> None:
            c.execute(
                "INSERT INTO audit_checkpoints (seq, hash, at, actor) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (seq) DO NOTHING",
                (seq, hash, at, self._actor()),
            )
            add_note(c, "audit_checkpoint", self._actor(), {"seq": seq, "hash": hash}, at)

        self._write(run)

    def history(self, after: int, limit: int) -> list[tuple[Source, bool]]:
        rows = self._read(
            f"SELECT seq, {_SOURCE}, NULL, NULL, seq <= (SELECT events_upto FROM audit_head)"
            " FROM job_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [(_source(r[1:13], int(r[0])), bool(r[13])) for r in rows]

    def prune(self, before: float, limit: int) -> int:
        def run(c: apsw.Connection) -> int:
            c.execute(
                "DELETE FROM audit_lines WHERE seq IN (SELECT seq FROM audit_lines"
                " WHERE sealed_at < ? AND seq < (SELECT seq FROM audit_head)"
                " AND seq <= (SELECT coalesce(min(seq), 0) FROM audit_homes) ORDER BY seq LIMIT ?)",
                (before, limit),
            )
            return int(c.changes())

        return int(self._write(run))
