"""A worker's self-fencing, on its own clock.

When the store cannot be reached (a cut or hung connection to PostgreSQL), the other
hosts' monitors recover the worker's job once its heartbeat is heartbeat_timeout
old.  The worker must have killed the job before that, whatever its own thread is
doing: blocked in a store call, or backing off between reconnects.  So a thread of
its own holds the deadline and kills the job's process group at it; the worker
moves the deadline on with every heartbeat that reached the store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any


def deadline_after(sent: float, heartbeat_timeout: float, heartbeat_interval: float) -> float:
    """The monotonic time by which a worker whose last heartbeat that reached the
    store was sent at `sent` must have killed its job: two heartbeat intervals
    before any monitor may call it stale (config.check_combination keeps this at
    least one interval after `sent`).  `sent` is when the heartbeat left, which is no
    later than the time the store wrote it."""
    return sent + heartbeat_timeout - 2 * heartbeat_interval


class Fence:
    """Kills the armed process group once the deadline passes (one daemon thread,
    started on first use).  Signal handlers are not involved: the thread only
    sends SIGKILL to a group the worker has not yet reaped."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._cond = threading.Condition()
        #: The armed group, its job and its deadline (all None while disarmed).
        self._pgid: int | None = None
        self._job: str | None = None
        self._deadline: float | None = None
        #: Whether the thread sleeps, and until when (None: until notified).  A job's
        #: arm wakes it only when it would otherwise sleep past the new deadline, so
        #: a stream of short jobs costs no thread switches.
        self._asleep = False
        self._wakes_at: float | None = None
        #: The job whose group the fence killed since it was armed (None: none).
        self.fired: str | None = None
        self._thread: threading.Thread | None = None

    def arm(self, pgid: int, job_id: str, deadline: float) -> None:
        with self._cond:
            self._pgid, self._job, self._deadline, self.fired = pgid, job_id, deadline, None
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="queuectl-fence", daemon=True)
                self._thread.start()
            if self._asleep and (self._wakes_at is None or deadline < self._wakes_at):
                self._cond.notify()

    def renew(self, deadline: float) -> None:
        """Move the deadline on (never back): the thread, if it wakes at the old
        one, sleeps again until the new one.  Nothing to move while disarmed."""
        with self._cond:
            if self._deadline is not None:
                self._deadline = max(self._deadline, deadline)

    def disarm(self) -> str | None:
        """Stop watching (before the group is reaped); the job it killed, if any.
        The thread finds nothing armed when it next wakes."""
        with self._cond:
            self._pgid, self._job, self._deadline = None, None, None
            return self.fired

    def _watch(self) -> None:
        with self._cond:
            while True:
                deadline = self._deadline
                left = None if deadline is None else deadline - time.monotonic()
                if left is None or left > 0:
                    self._asleep, self._wakes_at = True, deadline
                    self._cond.wait(left)
                    self._asleep = False
                    continue
                pgid, job = self._pgid, self._job
                self._pgid, self._deadline = None, None
                self.fired = job
                if pgid is not None:  # always, while a deadline is set
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
                self.log.warning(
                    "lease_presumed_lost",
                    job_id=job,
                    note="no heartbeat reached the store in time: the job was killed before"
                    " any monitor may recover it",
                )
