"""The recovery log: one JSON Lines file per write, for auditors.

A recovery pass writes one record per job it recovered, worker row it removed and
process it killed, after the database commit, to `logs/recovered_jobs_<UTC
timestamp>.json` (owner-only, created with O_EXCL).  Job recoveries reach it
through the store's audit outbox (written in the recovery's own transaction), so a
crash between the commit and the write loses none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from queuectl.logs import structlog  # imported without rich (logs._import_structlog)
from queuectl.models import iso
from queuectl.store import Store

#: The fields each event of a recovery log carries (besides `time` and `event`).
RECORD_FIELDS = {
    "job_recovered": (
        "reason", "job_id", "attempt", "lease", "state_before", "state_after", "next_run_at",
        "attempt_given_back", "worker_id", "host", "pid", "command", "killed_pids", "evidence",
    ),
    "worker_removed": ("reason", "worker_id", "host", "pid", "evidence"),
    "orphan_killed": (
        "reason", "job_id", "attempt", "lease", "job_state", "host", "pid", "command", "killed_pids",
    ),
    "processes_killed": (
        "reason", "job_id", "attempt", "lease", "host", "killed_pids", "command", "evidence",
    ),
    # reason "retention"; evidence: deleted (jobs), before (the cutoff, ISO-8601),
    # retention_s (the setting).
    "jobs_purged": ("reason", "job_state", "evidence"),
}  # fmt: skip


@dataclass
class Recovery:
    """One recovered job, removed worker, killed orphan, or kill whose recovery lost
    the race to the job's own worker: one line of the log (RECORD_FIELDS)."""

    event: str
    reason: str
    job_id: str | None = None
    attempt: int | None = None
    lease: int | None = None
    state_before: str | None = None
    state_after: str | None = None
    job_state: str | None = None
    next_run_at: str | None = None
    attempt_given_back: bool = False
    worker_id: str | None = None
    host: str | None = None
    pid: int | None = None
    command: str | None = None
    #: The pids killed (in a dry run: the pids that would be killed).
    killed_pids: list[int] = field(default_factory=list)
    #: What the verdict rests on: `pid` and `proc_start` (worker_died),
    #: `heartbeat_age_s` (heartbeat_lost), `runtime_s` and `timeout` (timeout),
    #: `user` (manual).
    evidence: dict[str, Any] = field(default_factory=dict)
    recovered_by: str = ""

    def fields(self) -> dict[str, Any]:
        """This event's own fields, in RECORD_FIELDS order, and recovered_by."""
        values = asdict(self)
        out = {"event": self.event, **{k: values[k] for k in RECORD_FIELDS[self.event]}}
        out["recovered_by"] = self.recovered_by
        return out


def compact(rec: Recovery) -> dict[str, Any]:
    """`rec`'s fields that say something, for an event of the process's own log."""
    return {k: v for k, v in rec.fields().items() if v not in (None, [], {}, False) and k != "event"}


class RecoveryLog:
    """The recovery logs in `logs_dir`, and the records still waiting to be written."""

    def __init__(self, store: Store, logs_dir: Path, log: Any) -> None:
        self.store = store
        self.logs_dir = logs_dir
        self.log = log
        #: Why the last recovery log could not be written (None: it was, or none was
        #: due); its records wait for the next write: the job recoveries in the
        #: store's outbox, the others (not job history) here.
        self.error: str | None = None
        self._unwritten: list[dict[str, Any]] = []

    @staticmethod
    def record(rec: Recovery) -> dict[str, Any]:
        """The recovery log's line for `rec`, stamped now (the time of the recovery)."""
        return {"time": iso(time.time()), **rec.fields()}

    def flush(self, direct: list[Recovery]) -> Path | None:
        """Write every pending audit record (this pass's recoveries, and any a killed
        monitor left in the outbox) and `direct` ones to a new recovery log, then
        drop them from the outbox.  A crash between the two writes them again on the
        next pass: the same record (same `time`, job and attempt) twice, never none."""
        # Never the records of a file the path no longer names: they are not the
        # history of the database every other process now uses.
        self.store.check_database()
        pending = self.store.audit_pending()
        own = self._unwritten + [self.record(r) for r in direct]
        records = [json.loads(text) for _, text in pending] + own
        if not records:
            return None
        try:
            path = self.write(records)
        except OSError as exc:  # a full disk, a logs/ that cannot be written
            self._unwritten = own
            self.error = f"cannot write a recovery log in {self.logs_dir}: {exc.strerror or exc}"
            self.log.warning("recovery_log_failed", error=self.error, records=len(records))
            return None
        self._unwritten, self.error = [], None
        self.store.audit_clear([i for i, _ in pending])
        return path

    def write(self, records: list[dict[str, Any]]) -> Path:
        """logs/recovered_jobs_<UTC timestamp>.json: JSON Lines through structlog's
        renderer, owner-only, created with O_EXCL after the database commit."""
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.logs_dir / f"recovered_jobs_{stamp}.json"
        n = 0
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                n += 1
                path = self.logs_dir / f"recovered_jobs_{stamp}-{n}.json"
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                logger = structlog.wrap_logger(
                    structlog.PrintLogger(f),
                    processors=[structlog.processors.JSONRenderer()],
                    context_class=dict,
                )
                for record in records:
                    fields = dict(record)
                    logger.info(fields.pop("event"), **fields)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            # An empty or cut log would pass for the whole record: leave none, and
            # the caller keeps the records for the next write.
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return path
