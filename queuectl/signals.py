"""Stop requests from signals: the handlers only count, set flags and wake.

The first SIGTERM/SIGINT is a warm stop (finish the current job, claim no more);
the second is a cold stop (kill the job now).  A lost parent (supervisord died) is
a warm stop too (ParentWatch).  `signal.set_wakeup_fd` writes a byte to a pipe on
every signal, so a select() on `fd` wakes at once instead of at the end of its
timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

from queuectl import logs


class StopSignals:
    def __init__(self) -> None:
        self.count = 0
        self.parent_gone = False
        self.parent: ParentWatch | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def fd(self) -> int:
        """Readable whenever a signal arrived (a select() wakes on it)."""
        return self._r

    @property
    def warm(self) -> bool:
        return self.count >= 1 or self.parent_gone or (self.parent is not None and self.parent.gone)

    @property
    def cold(self) -> bool:
        return self.count >= 2

    def install(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def watch_parent(self) -> ParentWatch:
        """From now on, losing our parent (supervisord) is a warm stop."""
        if self.parent is None:
            self.parent = ParentWatch()
            self.parent.install()
        return self.parent

    def request(self) -> None:
        """A stop asked for by the program itself (e.g. its supervisor is gone)."""
        self.parent_gone = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"\0")

    def drain(self) -> None:
        """Empty the wake-up pipe (after a select() returned because of it)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._r, 512):
                pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when our parent dies (Linux PR_SET_PDEATHSIG): a
    worker whose supervisord was SIGKILLed gets its warm stop instead of living on."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


class ParentWatch:
    """Tells when this process's parent (its supervisord) is gone.

    The kernel sends SIGHUP when the parent dies (PR_SET_PDEATHSIG), after it gave
    the process a new parent; the handler only sets a flag (a SIGHUP is a warm
    stop), and set_wakeup_fd wakes a select().  The parent pid itself is the truth:
    it differs from the one at start once the parent died, also where prctl is
    missing or the parent died before it was asked.  Once it does, the process's
    log lines move to its own file: the pipe its parent read has no reader any more.
    """

    def __init__(self) -> None:
        self.pid = os.getppid()
        self._hup = False
        self._moved = False

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._handle)
        die_with_parent(signal.SIGHUP)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._hup = True

    @property
    def gone(self) -> bool:
        if not self._moved and (self.pid == 1 or os.getppid() != self.pid):
            self._moved = True
            logs.log_to_own_file()
        return self._moved or self._hup
