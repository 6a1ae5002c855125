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
        self._pgid: int | None = None
        self._job: str | None = None
        self._deadline = float("inf")
        #: Until when the thread sleeps (inf: until notified).  A job's arm and disarm
        #: wake it only when it would otherwise sleep past the new deadline, so a
        #: stream of short jobs costs no thread switches.
        self._waiting_until = float("inf")
        #: The job whose group the fence killed since it was armed (None: none).
        self.fired: str | None = None
        self._thread: threading.Thread | None = None

    def arm(self, pgid: int, job_id: str, deadline: float) -> None:
        with self._cond:
            self._pgid, self._job, self._deadline, self.fired = pgid, job_id, deadline, None
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="queuectl-fence", daemon=True)
                self._thread.start()
            if deadline < self._waiting_until:
                self._cond.notify()

    def renew(self, deadline: float) -> None:
        """Move the deadline on (never back while armed): the thread, if it wakes
        at the old one, sleeps again until the new one."""
        with self._cond:
            self._deadline = max(self._deadline, deadline) if self._pgid is not None else deadline

    def disarm(self) -> str | None:
        """Stop watching (before the group is reaped); the job it killed, if any.
        The thread finds nothing armed when it next wakes."""
        with self._cond:
            self._pgid, self._job, self._deadline = None, None, float("inf")
            return self.fired

    def _watch(self) -> None:
        with self._cond:
            while True:
                left = self._deadline - time.monotonic()
                if self._pgid is None or left > 0:
                    self._waiting_until = float("inf") if self._pgid is None else self._deadline
                    self._cond.wait(None if self._pgid is None else left)
                    self._waiting_until = float("-inf")  # awake: arm needs no notify
                    continue
                pgid, job = self._pgid, self._job
                self._pgid = None
                self.fired = job
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                self.log.warning(
                    "lease_presumed_lost",
                    job_id=job,
                    note="no heartbeat reached the store in time: the job was killed before"
                    " any monitor may recover it",
                )
