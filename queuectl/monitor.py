"""The monitor process: a recovery pass (recovery.py) every monitor_interval until
it is told to stop, and one more as it stops because its supervisor is gone."""

from __future__ import annotations

import contextlib
import select
import time
from pathlib import Path
from typing import Any

from queuectl.actors import monitor_actor
from queuectl.config import Config
from queuectl.errors import QueuectlError, StoreFatal
from queuectl.recovery import Recoverer
from queuectl.settings import SETTINGS
from queuectl.signals import StopSignals
from queuectl.store import Store
from queuectl.trail_files import STOP_WAIT, Flusher


class Monitor(Recoverer):
    """A Recoverer that runs its passes in a loop, as the monitor process."""

    def __init__(
        self,
        store: Store,
        *,
        queue: str,
        logs_dir: Path,
        log: Any = None,
        signals: StopSignals | None = None,
    ) -> None:
        super().__init__(store, queue=queue, logs_dir=logs_dir, log=log)
        self.signals = signals or StopSignals()
        #: The audit trail's flush after every pass (workers flush every second).
        self._trail = Flusher(store, logs_dir, self.log)

    def run(self) -> int:
        # The monitor process's changes are by `monitor:host:pid` in the audit trail
        # (a `queuectl recover` using this class is the OS user's, as any command).
        self.store.actor = monitor_actor()
        self.log.info("monitor_started", host=self.host)
        while not self.signals.warm:
            interval = float(SETTINGS["monitor_interval"].default)  # until config is read
            try:
                self.store.check_database()
                cfg = Config.from_stored(self.store.config_items())
                interval = cfg.monitor_interval
                # Bounded calls: a monitor cut off from the store waits, and kills nothing.
                self.store.set_call_timeout(cfg.call_timeout)
                if self.guarded_pass("monitor") is None:
                    # A worker's fallback pass holds the lease right now: try again soon.
                    interval = min(interval, 0.2)
                self._trail()
            except StoreFatal as exc:
                # Deleted, replaced or damaged: a restart opens what the path names now.
                self.log.error("database_unusable", error=str(exc))
                raise
            except QueuectlError as exc:
                self.log.warning("monitor_store_error", error=str(exc))
            except Exception:
                self.log.exception("monitor_error")
            self._sleep(interval)
        gone = self.signals.parent is not None and self.signals.parent.gone
        if gone:
            self._last_pass()
        self._trail(wait=STOP_WAIT)
        self.log.info("monitor_stopped", supervisor_gone=gone)
        return 0

    def _last_pass(self) -> None:
        """One more pass as the supervisor is gone: what died with it (a worker killed
        at the same time) is recovered now, since no monitor runs here again until
        the next `worker start`."""
        try:
            self.guarded_pass("monitor")
        except QueuectlError as exc:
            self.log.warning("monitor_store_error", error=str(exc))
        except Exception:
            self.log.exception("monitor_error")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.signals.warm:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError):
                select.select([self.signals.fd], [], [], left)
            self.signals.drain()
