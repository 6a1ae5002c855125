"""Retention: the recovery pass deletes finished jobs older than their state's
retention setting (retention_completed, retention_dead, retention_cancelled; 0 keeps
them), through the store's purge (the path `queuectl purge` takes), so what a purge
records, a retention records too.

A pass deletes in batches of BATCH jobs per state, the earliest created first, each
batch one short transaction, so no delete holds the database for long.  It goes on
while batches come back full, up to MAX_BATCHES per state: 10,000 jobs a state a
pass, 2,000 a second at the default monitor_interval of 5 s, above what a queue
finishes (docs/benchmarks.md: about 1,000 a second), so retention keeps up with a
busy queue, and a larger backlog (retention just set) is worked off over a few
passes.
"""

from __future__ import annotations

from queuectl.config import Config
from queuectl.models import JobState
from queuectl.store import Store
from queuectl.trail_files import BATCH as LINES_BATCH
from queuectl.trail_files import LINES_KEPT_FOR, seal_pending

#: The most jobs of one state one transaction deletes.
BATCH = 500
#: The most batches of one state one pass deletes.
MAX_BATCHES = 20

#: Each state a retention setting covers, with the setting's name.
SETTINGS = (
    (JobState.COMPLETED, "retention_completed"),
    (JobState.DEAD, "retention_dead"),
    (JobState.CANCELLED, "retention_cancelled"),
)


def due(cfg: Config, now: float) -> list[tuple[JobState, float, float]]:
    """(state, retention seconds, cutoff) for each state with a retention set."""
    out = []
    for state, name in SETTINGS:
        keep = float(getattr(cfg, name))
        if keep > 0:
            out.append((state, keep, now - keep))
    return out


def apply(
    store: Store, cfg: Config, now: float, *, dry_run: bool = False
) -> list[tuple[JobState, float, int]]:
    """Delete the jobs of each state past its retention at `now`, in batches, up to
    MAX_BATCHES of them; (state, cutoff, jobs deleted) for each state that had any
    (a dry run: how many this pass would delete)."""
    done = []
    jobs_due = due(cfg, now)
    if not dry_run:
        # The audit lines every home has appended, a day after sealing: the files
        # hold them (store/trail.py).
        store.trail.prune(now - LINES_KEPT_FOR, LINES_BATCH)
    if jobs_due:
        # A purge deletes only jobs whose history is sealed: a dry run seals too (it
        # changes no job), so that it counts what the pass would delete.
        seal_pending(store)
    for state, _keep, cutoff in jobs_due:
        if dry_run:
            n = min(store.purgeable([state], before=cutoff), BATCH * MAX_BATCHES)
        else:
            n = 0
            for _ in range(MAX_BATCHES):
                deleted = store.purge([state], before=cutoff, limit=BATCH)
                n += deleted
                if deleted < BATCH:
                    break
        if n:
            done.append((state, cutoff, n))
    return done
