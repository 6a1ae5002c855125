"""The audit trail in a PostgreSQL database (store/trail.py has the contract).

Identity values are handed out in no commit order here: a transaction that took
seq 10 may commit after one that took seq 11.  So every event and note records its
transaction (`xid`), and sealing takes only the events of transactions older than
every one still running in this database (the bound in PENDING): those are final,
and nothing can commit among them later.  A transaction left open in this database
(an idle-in-transaction session) holds sealing back until it ends: its events wait,
none is lost or passed over.  The head covers everything below the mark (xid, kind,
id); an event of a running transaction waits for the next sealing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg

from queuectl.store.postgres.connection import Conn, Connection
from queuectl.store.trail import Mark
from queuectl.trail import Sealed, Source

_SOURCE = "at, actor, job_id, from_state, to_state, attempt, worker_id, exit_code, error, reason"
#: The head and up to %(n)s events and notes past its mark and below the bound, in
#: the order (xid, kind, id), in one statement (one snapshot).  The bound (named
#: xmin below) is the oldest transaction still running in this database (one of
#: another database's sessions never writes here: left out), or, with none, the
#: snapshot's xmax: everything below it has committed or never will.
PENDING = f"""
WITH snap AS (SELECT pg_current_snapshot() AS s),
h AS (SELECT seq, hash, mark_xid, mark_src, mark_id, coalesce(
          (SELECT min(x) FROM snap, pg_snapshot_xip(snap.s) x WHERE x::xid NOT IN (
               SELECT backend_xid FROM pg_stat_activity
               WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database())),
          (SELECT pg_snapshot_xmax(s) FROM snap)) AS xmin
      FROM audit_head)
SELECT h.seq, h.hash, h.mark_xid::text, h.mark_src, h.mark_id, h.xmin::text, s.*
FROM h LEFT JOIN LATERAL (
    (SELECT e.xid::text AS x, e.xid, 0 AS src, e.seq AS id, {_SOURCE},
            NULL::text AS kind, NULL::text AS detail
     FROM job_events e
     WHERE e.xid >= h.mark_xid AND e.xid < h.xmin AND (e.xid, 0, e.seq) > (h.mark_xid, h.mark_src, h.mark_id)
     ORDER BY e.xid, e.seq LIMIT %(n)s)
    UNION ALL
    (SELECT n.xid::text, n.xid, 1, n.id, at, actor, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            kind, detail
     FROM audit_notes n
     WHERE n.xid >= h.mark_xid AND n.xid < h.xmin AND (n.xid, 1, n.id) > (h.mark_xid, h.mark_src, h.mark_id)
     ORDER BY n.xid, n.id LIMIT %(n)s)
) s ON true
ORDER BY s.xid, s.src, s.id
"""
_NOW = "coalesce(%(at)s, extract(epoch FROM now()))"
NOTE = f"INSERT INTO audit_notes (at, kind, actor, detail) VALUES ({_NOW}, %(kind)s, %(actor)s, %(detail)s)"
#: A job event covered by the head: one a purge may delete.
SEALED_EVENT = "(xid, 0, seq) <= (SELECT mark_xid, mark_src, mark_id FROM audit_head)"


#: A job (the row `jobs`) none of whose events waits to be sealed: one a purge may
#: delete with its whole history (a job with an unsealed event waits for a later
#: purge, so no event is ever left without its job).
ALL_SEALED = (
    "NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.id"
    " AND (e.xid, 0, e.seq) > (SELECT mark_xid, mark_src, mark_id FROM audit_head))"
)


def add_note(conn: Conn, kind: str, actor: str, detail: dict[str, Any], at: float | None = None) -> None:
    """Write a note inside the caller's transaction (at None: the database clock)."""
    params = {"at": at, "kind": kind, "actor": actor, "detail": json.dumps(detail, sort_keys=True)}
    conn.execute(NOTE, params)


def stamp(conn: Conn, actor: str) -> None:
    """Name `actor` on the job events this transaction wrote that name none."""
    conn.execute(
        "UPDATE job_events SET actor = %s WHERE xid = pg_current_xact_id() AND actor IS NULL", (actor,)
    )


def set_actor(conn: Conn, actor: str) -> None:
    """The actor the insert trigger names on a new job's first event, for the rest of
    this transaction."""
    conn.execute("SELECT set_config('queuectl.actor', %s, true)", (actor,))


def _source(row: Sequence[Any], ident: int) -> Source:
    at, actor, job_id, frm, to, attempt, worker, code, error, reason, kind, detail = row
    return Source(
        id=ident, at=float(at), actor=actor, job_id=job_id, from_state=frm, to_state=to,
        attempt=None if attempt is None else int(attempt), worker_id=worker,
        exit_code=None if code is None else int(code), error=error, reason=reason,
        note=kind, detail=detail,
    )  # fmt: skip


class PostgresTrail:
    """Store.trail for PostgresStore: same connection."""

    def __init__(self, db: Connection, actor: Callable[[], str]) -> None:
        self._db, self._actor = db, actor

    def head(self) -> tuple[int, str]:
        seq, digest = self._db.read("SELECT seq, hash FROM audit_head")[0]
        return int(seq), str(digest)

    def pending(self, limit: int) -> tuple[tuple[int, str], tuple[object, object], list[Source]]:
        rows = self._db.read(PENDING, {"n": limit})
        seq, digest, mark_xid, mark_src, mark_id, xmin = rows[0][:6]
        found = [(row[6], int(row[8]), int(row[9]), _source(row[10:], int(row[9]))) for row in rows if row[6]]
        taken = found[:limit]
        old = (str(mark_xid), int(mark_src), int(mark_id))
        # All that waited below the bound taken: the mark moves to the bound itself
        # (never back: a bound below the mark only means nothing new is final).
        new = (str(xmin), -1, 0) if len(found) < limit else taken[-1][:3]
        if not taken and int(str(xmin)) <= int(str(mark_xid)):
            new = old
        return (int(seq), str(digest)), (old, new), [t[3] for t in taken]

    def commit(self, head: tuple[int, str], token: tuple[object, object], lines: Sequence[Sealed]) -> bool:
        old, new = cast("tuple[tuple[str, int, int], tuple[str, int, int]]", token)

        def run(conn: Conn) -> bool:
            try:
                return seal(conn)
            except psycopg.errors.LockNotAvailable:
                # Another sealer is committing (or stopped while it did: SIGSTOP keeps
                # its lock): lost, as a failed compare-and-set; nobody waits for it.
                return False

        def seal(conn: Conn) -> bool:
            with conn.transaction():
                current = conn.execute(
                    "SELECT seq, mark_xid::text, mark_src, mark_id, extract(epoch FROM now())::float8"
                    " FROM audit_head FOR UPDATE NOWAIT"
                ).fetchall()[0]
                if (int(current[0]), (str(current[1]), int(current[2]), int(current[3]))) != (head[0], old):
                    return False
                if lines:
                    # COPY: one row per line with executemany costs a round trip each.
                    now = float(current[4])
                    sql = "COPY audit_lines (seq, sealed_at, hash, line) FROM STDIN"
                    with conn.cursor() as cur, cur.copy(sql) as copy:
                        for ln in lines:
                            copy.write_row((ln.seq, now, ln.hash, ln.line))
                seq, digest = (lines[-1].seq, lines[-1].hash) if lines else head
                conn.execute(
                    "UPDATE audit_head SET seq = %s, hash = %s,"
                    " mark_xid = %s::xid8, mark_src = %s, mark_id = %s",
                    (seq, digest, *new),
                )
            return True

        return bool(self._db.run(run))

    def lines(self, after: int, limit: int) -> list[tuple[int, str]]:
        rows = self._db.read(
            "SELECT seq, line FROM audit_lines WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit)
        )
        return [(int(s), str(t)) for s, t in rows]

    def first_kept(self) -> int | None:
        value = self._db.read("SELECT min(seq) FROM audit_lines")[0][0]
        return None if value is None else int(value)

    def home(self, home: str) -> Mark | None:
        rows = self._db.read("SELECT home, seq, hash, at FROM audit_homes WHERE home = %s", (home,))
        return Mark(str(rows[0][0]), int(rows[0][1]), str(rows[0][2]), float(rows[0][3])) if rows else None

    def homes(self) -> list[Mark]:
        rows = self._db.read("SELECT home, seq, hash, at FROM audit_homes ORDER BY home")
        return [Mark(str(h), int(s), str(d), float(a)) for h, s, d, a in rows]

    def set_home(self, home: str, seq: int, hash: str, now: float | None = None) -> None:
        self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO audit_homes (home, seq, hash, at)"
                " VALUES (%(home)s, %(seq)s, %(hash)s, coalesce(%(at)s, extract(epoch FROM now())))"
                " ON CONFLICT (home) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,"
                " at = excluded.at WHERE excluded.seq >= audit_homes.seq",
                {"home": home, "seq": seq, "hash": hash, "at": now},
            )
        )

    def note(self, kind: str, detail: dict[str, object], now: float | None = None) -> None:
        self._db.run(lambda conn: add_note(conn, kind, self._actor(), detail, now))

    def checkpoints(self) -> list[tuple[int, str, float, str]]:
        rows = self._db.read("SELECT seq, hash, at, actor FROM audit_checkpoints ORDER BY seq")
        return [(int(s), str(h), float(a), str(w)) for s, h, a, w in rows]

    def add_checkpoint(self, seq: int, hash: str, now: float | None = None) -> None:
        def run(conn: Conn) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO audit_checkpoints (seq, hash, at, actor)"
                    " VALUES (%s, %s, coalesce(%s, extract(epoch FROM now())), %s)"
                    " ON CONFLICT (seq) DO NOTHING",
                    (seq, hash, now, self._actor()),
                )
                add_note(conn, "audit_checkpoint", self._actor(), {"seq": seq, "hash": hash}, now)

        self._db.run(run)

    def history(self, after: int, limit: int) -> list[tuple[Source, bool]]:
        rows = self._db.read(
            f"SELECT seq, {_SOURCE}, NULL, NULL, {SEALED_EVENT}"
            " FROM job_events WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, limit),
        )
        return [(_source(r[1:13], int(r[0])), bool(r[13])) for r in rows]

    def prune(self, before: float, limit: int) -> int:
        return int(
            self._db.run(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM audit_lines WHERE seq IN (SELECT seq FROM audit_lines"
                        " WHERE sealed_at < %s AND seq < (SELECT seq FROM audit_head)"
                        " AND seq <= (SELECT coalesce(min(seq), 0) FROM audit_homes) ORDER BY seq LIMIT %s)",
                        (before, limit),
                    ).rowcount
                )
            )
        )
