"""The job counts: a snapshot plus the events since.

job_counts holds every state's count as of event job_counts_upto.seq; the events
after it are what changed since, so the counts are the snapshot plus those events,
read in one statement (one read transaction).  A worker's claim and finish never
touch the snapshot: fold_counts() moves the events into it, on every recovery pass
and with every bulk insert, so few are left to read.
"""

from __future__ import annotations

import apsw

# A constant of this name means to mypy what typing.TYPE_CHECKING means, without
# importing typing on the `queuectl enqueue` path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

#: Rows (from_state, to_state, n) of the events since the snapshot.
COUNTS_DELTA = (
    "SELECT from_state, to_state, count(*) FROM job_events"
    " WHERE seq > (SELECT seq FROM job_counts_upto) GROUP BY from_state, to_state"
)
#: The snapshot as rows of the same shape (NULL, state, n), then the events since.
COUNTS = f"SELECT NULL, state, n FROM job_counts UNION ALL {COUNTS_DELTA}"
#: The newest event's seq: what the snapshot is up to after a fold.
COUNTS_UPTO = "UPDATE job_counts_upto SET seq = (SELECT coalesce(max(seq), 0) FROM job_events)"


def net_counts(rows: Iterable[tuple[Any, ...]]) -> dict[str, int]:
    """Net change per state of rows (from_state, to_state, n): n jobs left from_state
    (None for new jobs) and entered to_state."""
    net: dict[str, int] = {}
    for src, dst, n in rows:
        net[dst] = net.get(dst, 0) + n
        if src is not None:
            net[src] = net.get(src, 0) - n
    return net


def fold_counts(c: apsw.Connection) -> None:
    """Add the events since the counts snapshot to it (inside a write transaction);
    with none since, nothing is written."""
    rows = c.execute(COUNTS_DELTA).fetchall()
    if not rows:
        return
    net = net_counts(rows)
    c.executemany("UPDATE job_counts SET n = n + ? WHERE state = ?", [(n, s) for s, n in net.items() if n])
    c.execute(COUNTS_UPTO)
