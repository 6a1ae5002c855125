"""Named periodic duties and the one small scheduler that runs them.

A duty has a name, an interval and a callable.  The scheduler says when the next
duty is due and runs the due ones, in the order they were given.  Time is a
parameter: `now`, or else the scheduler's clock (time.monotonic unless given), read
afresh before each duty, since one duty (a recovery pass) may take a while.  A duty
that is off is not in the scheduler at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Duty:
    """`action()` runs once `every()` seconds have passed since it last ran (at once
    if it never ran).  The interval is read each time, so a duty follows a setting
    that changes.  A non-None answer of `action()` is a reason to stop the work the
    duty looks after (the scheduler runs no further duty then)."""

    name: str
    every: Callable[[], float]
    action: Callable[[], str | None]
    #: When it last ran (None: never, so it is due at once).
    last: float | None = None

    def due_at(self, now: float) -> float:
        return now if self.last is None else self.last + self.every()

    def done(self, now: float) -> None:
        """Count the duty as run at `now` (also when its work was done elsewhere)."""
        self.last = now


class Scheduler:
    """Runs the due ones of its duties.  One Duty may be in several schedulers
    (e.g. between jobs and while a job runs): it then keeps one rhythm in both."""

    def __init__(self, *duties: Duty, clock: Callable[[], float] = time.monotonic) -> None:
        self.duties = duties
        self.clock = clock

    def next_due(self, now: float) -> float | None:
        """When the next duty is due (`now` if one is due already); None: no duty."""
        return min((d.due_at(now) for d in self.duties), default=None)

    def run_due(self, now: float | None = None) -> str | None:
        """Run every duty due (at `now`, or by the clock as each comes up); stop at
        the first one that answers a reason, and return it (None: every due duty
        ran).  A duty counts as run from the time it started; one that raised did
        not run, and stays due."""
        for duty in self.duties:
            t = self.clock() if now is None else now
            if t < duty.due_at(t):
                continue
            before, duty.last = duty.last, t
            try:
                why = duty.action()
            except BaseException:
                duty.last = before
                raise
            if why is not None:
                return why
        return None
