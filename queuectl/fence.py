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
        #: The job whose group the fence killed since it was armed (None: none).
        self.fired: str | None = None
        self._thread: threading.Thread | None = None

    def arm(self, pgid: int, job_id: str, deadline: float) -> None:
        with self._cond:
            self._pgid, self._job, self._deadline, self.fired = pgid, job_id, deadline, None
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="queuectl-fence", daemon=True)
                self._thread.start()
            self._cond.notify()

    def renew(self, deadline: float) -> None:
        with self._cond:
            self._deadline = max(self._deadline, deadline) if self._pgid is not None else deadline
            self._cond.notify()

    def disarm(self) -> str | None:
        """Stop watching (before the group is reaped); the job it killed, if any."""
        with self._cond:
            self._pgid, self._job, self._deadline = None, None, float("inf")
            self._cond.notify()
            return self.fired

    def _watch(self) -> None:
        with self._cond:
            while True:
                left = self._deadline - time.monotonic()
                if self._pgid is None or left > 0:
                    self._cond.wait(None if self._pgid is None else left)
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
