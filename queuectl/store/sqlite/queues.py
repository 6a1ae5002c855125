"""The SQLite store's statements about named queues: their settings (pause,
concurrency: one guarded upsert each), their counts, and an idle worker's wake-up
time over the queues it serves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from queuectl.store.sqlite.schema import WAKE_FOR

#: The queues a worker may claim from now (:served, a JSON array, NULL: every
#: queue): not paused, and below their concurrency.  A queue's processing jobs are
#: counted through jobs_state: as many rows as jobs are running, never the backlog.
ELIGIBLE = (
    "SELECT q.name FROM queues q WHERE q.paused = 0"
    " AND (:served IS NULL OR q.name IN (SELECT value FROM json_each(:served)))"
    " AND (q.concurrency IS NULL OR q.concurrency >"
    "      (SELECT count(*) FROM jobs p WHERE p.state = 'processing' AND p.queue = q.name))"
)

#: The earliest wake-up time (see SQLiteStore.next_due) among the eligible queues'
#: jobs.  Walks jobs_next in time order and stops at the first job of an eligible
#: queue: the wake-for jobs of the queues left out that fall due earlier are passed
#: over one by one (an idle worker's poll, not the claim).
NEXT_DUE = (
    f"SELECT min(next_run_at) FROM jobs INDEXED BY jobs_next WHERE ({WAKE_FOR}) AND queue IN ({ELIGIBLE})"
)

#: Per queue and state: (name, paused, concurrency, state or NULL, n).  Every job's
#: queue has a row (the enqueue that names a new queue inserts it).  A GROUP BY over
#: the whole jobs table: one pass over every job, unlike counts(), which reads a
#: snapshot (no index leads with the queue for every state).
STATS = (
    "SELECT q.name, q.paused, q.concurrency, c.state, c.n FROM queues q"
    " LEFT JOIN (SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state) c"
    " ON c.queue = q.name ORDER BY q.name"
)

# Each setting: one statement that creates the queue's row if missing (so a queue
# can be set up before its first job) and changes it only if the value differs: its
# change count says whether anything changed.
SET_PAUSED = (
    "INSERT INTO queues (name, paused) VALUES (:name, :value)"
    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
    " WHERE queues.paused IS NOT excluded.paused"
)
SET_CONCURRENCY = (
    "INSERT INTO queues (name, concurrency) VALUES (:name, :value)"
    " ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency"
    " WHERE queues.concurrency IS NOT excluded.concurrency"
)


def served(queues: Sequence[str] | None) -> str | None:
    """The :served parameter of the claim and of NEXT_DUE: a JSON array, or NULL."""
    return None if queues is None else json.dumps(list(queues))


def single(queues: Sequence[str] | None) -> str | None:
    """The one queue a worker serves, if it serves exactly one (the claim's `one`)."""
    return queues[0] if queues is not None and len(set(queues)) == 1 else None
