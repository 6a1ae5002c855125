"""The PostgreSQL store's statements about named queues: their settings (pause,
concurrency: one guarded upsert each), their counts, and an idle worker's wake-up
time over the queues it serves.
"""

from __future__ import annotations

from queuectl.store.postgres.queries import T

#: The queues a worker may claim from now (%(served)s, NULL: every queue): not
#: paused, and below their concurrency by a plain count (no lock: a hint for the
#: wake-up, never a claim's decision, which queuectl_room makes under its lock).
ELIGIBLE = (
    "SELECT q.name FROM queues q WHERE NOT q.paused"
    " AND (%(served)s::text[] IS NULL OR q.name = ANY(%(served)s::text[]))"
    " AND (q.concurrency IS NULL OR q.concurrency >"
    "      (SELECT count(*) FROM jobs p WHERE p.state = 'processing' AND p.queue = q.name))"
)

#: The earliest next_run_at among the eligible queues' runnable jobs, in two flat
#: parts: a job due now (each eligible queue's head in jobs_due, as the claim reads
#: it: a queue with room whose claim lost the race for its lock shows up here, and
#: the worker claims again at once), else the first later one from jobs_next, walked
#: from now (a paused queue's backlog, due already, is never walked; the later jobs of
#: queues left out that fall due first are passed over one by one).
NEXT_DUE = (
    f"WITH e AS ({ELIGIBLE})"
    " SELECT least("
    "  (SELECT min(h.next_run_at) FROM e CROSS JOIN LATERAL"
    "   (SELECT next_run_at FROM jobs WHERE queue = e.name AND state IN ('pending', 'failed')"
    f"    AND next_run_at <= {T} ORDER BY priority DESC, next_run_at, id LIMIT 1) h),"
    "  (SELECT next_run_at FROM jobs WHERE state IN ('pending', 'failed')"
    f"   AND next_run_at > {T} AND queue IN (SELECT name FROM e) ORDER BY next_run_at LIMIT 1))"
)

#: Per queue and state: (name, paused, concurrency, state or NULL, n).  Every job's
#: queue has a row (the enqueue that names a new queue inserts it).  A GROUP BY over
#: the whole jobs table, as counts() is here: one pass over every job.
STATS = (
    "SELECT q.name, q.paused, q.concurrency, c.state, c.n FROM queues q"
    " LEFT JOIN (SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state) c"
    " ON c.queue = q.name ORDER BY q.name"
)

# Each setting: one statement that creates the queue's row if missing (so a queue
# can be set up before its first job) and changes it only if the value differs: its
# row count says whether anything changed.
SET_PAUSED = (
    "INSERT INTO queues (name, paused) VALUES (%(name)s, %(value)s)"
    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
    " WHERE queues.paused IS DISTINCT FROM excluded.paused"
)
SET_CONCURRENCY = (
    "INSERT INTO queues (name, concurrency) VALUES (%(name)s, %(value)s)"
    " ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency"
    " WHERE queues.concurrency IS DISTINCT FROM excluded.concurrency"
)
