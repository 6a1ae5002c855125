"""queuectl's exception tree; the CLI maps each class to one exit code."""

from __future__ import annotations


class QueuectlError(Exception):
    """Base of every error queuectl reports to a user."""

    exit_code = 1


class InvalidInput(QueuectlError):
    """A value the user gave is malformed or out of range (a usage error)."""

    exit_code = 2


class JobNotFound(QueuectlError):
    exit_code = 3

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class ScheduleNotFound(QueuectlError):
    exit_code = 3

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r}")
        self.name = name


class Conflict(QueuectlError):
    """The request clashes with what is stored (duplicate id, wrong state)."""

    exit_code = 4


class JobEnded(Conflict):
    """The job is terminal already (completed, dead, cancelled): it cannot be cancelled."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id!r} is {state} already: nothing to cancel")
        self.job_id = job_id


class DuplicateJob(Conflict):
    def __init__(self, job_id: str | None = None) -> None:
        what = f"a job with id {job_id!r} already exists" if job_id else "a job id already exists"
        super().__init__(what)
        self.job_id = job_id


class UniqueConflict(Conflict):
    """A new job's unique key is held by a job that may still run."""

    def __init__(self, key: str, job_id: str | None) -> None:
        holder = f"job {job_id}" if job_id else "another job"
        super().__init__(f"unique key {key!r} is held by {holder} (pending, failed, waiting or processing)")
        self.key = key
        self.job_id = job_id


class StoreError(QueuectlError):
    """The database cannot be used: busy, corrupt, not ours, read-only, full."""

    exit_code = 5


class StoreBusy(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database server cannot be reached (PostgreSQL)."""


class StoreFatal(StoreError):
    """The database this process opened can no longer be used, and retrying cannot
    help: a worker or monitor stops (exit 5) so that a restart opens it afresh."""


class StoreGone(StoreFatal):
    """The database file was deleted or replaced: the path no longer names the file
    this process has open, so its writes would go where no one else looks."""


class StoreCorrupt(StoreFatal):
    """The database file is corrupt, truncated, or not a database."""


class TrailBusy(QueuectlError):
    """The home's audit trail files stayed locked by another process (logs/audit.lock,
    held for milliseconds by a writer, and for as long as one is stopped mid-write)."""

    exit_code = 5


class SupervisorError(QueuectlError):
    """supervisord could not be started, reached or commanded (or it died)."""

    exit_code = 6


EXIT_CODES = {
    0: "success",
    1: "unexpected internal error; for wait and logs --follow: a job ended dead or cancelled;"
    " for health: the queue is not served; for audit verify: the trail is broken",
    2: "usage error or invalid input (nothing was changed)",
    3: "job or schedule not found; for worker status: the workers running are not the ones asked for",
    4: "conflict with stored data (duplicate id or schedule name, job not in the required state)",
    5: "database unavailable: busy, corrupt, deleted, not a queuectl database, read-only, full;"
    " for audit: its files stayed locked by another process",
    6: "supervisord could not be started or reached, or died under a foreground `worker start`",
    124: "wait: its --timeout passed before every job ended (as timeout(1))",
}
