"""Retention: the recovery pass deletes finished jobs older than their state's
retention setting (retention_completed, retention_dead, retention_cancelled; 0 keeps
them), through the store's purge (the path `queuectl purge` takes), so what a purge
records, a retention records too.

Each pass deletes at most BATCH jobs per state, the earliest created first, each
batch one short transaction: a backlog (retention just set on a large queue) is
worked off over several passes instead of holding the database for one long delete.
"""

from __future__ import annotations

from queuectl.config import Config
from queuectl.models import JobState
from queuectl.store import Store

#: The most jobs of one state one pass deletes.
BATCH = 500

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
    """Delete one batch of each state past its retention at `now`; (state, cutoff,
    jobs deleted) for each state that had any (a dry run: how many are past it)."""
    done = []
    for state, _keep, cutoff in due(cfg, now):
        if dry_run:
            n = store.purgeable([state], before=cutoff)
        else:
            n = store.purge([state], before=cutoff, limit=BATCH)
        if n:
            done.append((state, cutoff, n))
    return done
