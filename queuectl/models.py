"""Jobs, their states and the one function that decides every transition.

Standard library only: the store backends, the worker and the monitor all import
this module, so the retry rules live in exactly one place.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

# The times and ids live in rules.py, which the enqueue fast path imports alone.
from queuectl.rules import iso, new_id, parse_time

__all__ = [
    "ALLOWED",
    "CANCELLABLE",
    "DEFAULT_QUEUE",
    "JOB_COLUMNS",
    "MONITOR_LEASE",
    "RUNNABLE",
    "TERMINAL",
    "Beat",
    "Event",
    "Job",
    "JobFilter",
    "JobState",
    "LeaseGrant",
    "LeaseInfo",
    "NewJob",
    "Outcome",
    "QueueInfo",
    "Reason",
    "RecoveryGuard",
    "Transition",
    "WorkerInfo",
    "backoff_delay",
    "decide",
    "iso",
    "new_id",
    "parse_time",
]


class JobState(enum.StrEnum):
    """The life of a job.

    PENDING -> PROCESSING            claimed by a worker (attempts += 1, lease += 1)
    FAILED -> PROCESSING             a scheduled retry is claimed
    PROCESSING -> COMPLETED          the command exited 0
    PROCESSING -> FAILED             it failed and a retry is scheduled (next_run_at)
    PROCESSING -> DEAD               it failed max_retries + 1 times: dead-letter queue
    PROCESSING -> PENDING            recovered before its command started: the attempt
                                     is given back (attempts -= 1)
    DEAD -> PENDING                  `dlq retry` (attempts reset to 0)
    (new) -> WAITING                 enqueued after parents (--after) not all completed
    WAITING -> PENDING               its last parent completed (due then, or at run_at)
    WAITING/PENDING/FAILED/PROCESSING -> CANCELLED
                                     `cancel` (a running attempt is killed by its own
                                     worker, which sees it with its heartbeat), or a
                                     parent ended dead or cancelled
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    WAITING = "waiting"
    CANCELLED = "cancelled"


#: States a worker may claim from.
RUNNABLE = (JobState.PENDING, JobState.FAILED)
#: States a job never leaves on its own.
TERMINAL = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)
#: States `cancel` moves to CANCELLED (a job that may still run).
CANCELLABLE = (JobState.WAITING, JobState.PENDING, JobState.FAILED, JobState.PROCESSING)
#: The default queue's name.
DEFAULT_QUEUE = "default"

ALLOWED: Mapping[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.PENDING, JobState.WAITING}),
    JobState.WAITING: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.CANCELLED}),
    JobState.FAILED: frozenset({JobState.PROCESSING, JobState.CANCELLED}),
    JobState.PROCESSING: frozenset(
        {JobState.COMPLETED, JobState.FAILED, JobState.DEAD, JobState.PENDING, JobState.CANCELLED}
    ),
    JobState.DEAD: frozenset({JobState.PENDING}),
    JobState.COMPLETED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class Reason(enum.StrEnum):
    """Why the monitor (not the job's own worker) ended an attempt.

    WORKER_DIED: the worker's process on the monitor's host is gone (a crash);
    HEARTBEAT_LOST: the worker is silent for heartbeat_timeout (a hang, a partition,
    or a crash on another host); TIMEOUT: the job ran past its time limit and its
    worker did not stop it; MANUAL: an operator's `recover`.
    """

    WORKER_DIED = "worker_died"
    HEARTBEAT_LOST = "heartbeat_lost"
    TIMEOUT = "timeout"
    ORPHAN_KILLED = "orphan_killed"
    MANUAL = "manual"


@dataclass(frozen=True)
class Outcome:
    """What one attempt produced."""

    exit_code: int | None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


@dataclass(frozen=True)
class Beat:
    """A heartbeat's answer: two separate facts, so a worker that was wrongly taken
    for dead re-registers and keeps a job whose lease is still its own."""

    #: The worker's row was there (and is refreshed); False: it was removed.
    registered: bool
    #: The job's lease still holds (True when the heartbeat named no job).
    held: bool

    def __bool__(self) -> bool:
        return self.registered and self.held


@dataclass(frozen=True)
class Transition:
    """Where a finished attempt sends its job."""

    state: JobState
    next_run_at: float | None


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the retry after `attempts` attempts: base ** attempts, capped."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        return float(cap)
    return float(min(delay, cap))


def decide(
    *,
    ok: bool,
    attempts: int,
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    now: float,
) -> Transition:
    """The single rule for the end of an attempt.

    `attempts` counts the attempts made so far, this one included (the claim counts
    it).  A job gets max_retries + 1 attempts in all; a failure before that schedules
    a retry at now + backoff_base ** attempts seconds, capped by backoff_max.
    """
    if ok:
        return Transition(JobState.COMPLETED, None)  # PROCESSING -> COMPLETED
    if attempts > max_retries:
        return Transition(JobState.DEAD, None)  # PROCESSING -> DEAD
    # PROCESSING -> FAILED
    return Transition(JobState.FAILED, now + backoff_delay(attempts, backoff_base, backoff_max))


@dataclass(frozen=True)
class Job:
    """A job as stored: JOB_COLUMNS, in this order, are its fields."""

    id: str
    command: str
    state: JobState
    attempts: int
    max_retries: int
    priority: int
    timeout: float
    lease: int
    created_at: float
    updated_at: float
    run_at: float
    next_run_at: float | None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    exit_code: int | None = None
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    #: The named queue the job is in.
    queue: str = DEFAULT_QUEUE
    #: The directory the command runs in (None: the worker's own).
    cwd: str | None = None
    #: Variables added to the worker's environment, as a JSON object (None: none).
    env: str | None = None
    #: While the job may still run, no other such job has this key (None: no key).
    unique_key: str | None = None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> Job:
        """From a row whose columns are JOB_COLUMNS, in order."""
        job = cls(*row)
        object.__setattr__(job, "state", JobState(job.state))
        return job

    def environment(self) -> dict[str, str]:
        """The variables `env` adds (empty: none)."""
        if not self.env:
            return {}
        value = json.loads(self.env)
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def to_dict(self, *, output: bool = True) -> dict[str, Any]:
        """The stable JSON form: times as ISO-8601 UTC, states as strings."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _TIME_FIELDS:
                value = iso(value)
            elif f.name == "state":
                value = value.value
            elif f.name in ("stdout", "stderr") and not output:
                continue
            elif f.name == "env":
                value = self.environment()
            out[f.name] = value
        if self.state not in RUNNABLE:
            # Only a waiting job has a next run; elsewhere the stored value would mislead.
            out["next_run_at"] = None
        return out


JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))

_TIME_FIELDS = frozenset({"created_at", "updated_at", "run_at", "next_run_at", "started_at", "finished_at"})


@dataclass(frozen=True)
class Event:
    """One row of a job's append-only history."""

    seq: int
    job_id: str
    at: float
    from_state: str | None
    to_state: str
    attempt: int
    worker_id: str | None
    exit_code: int | None
    error: str | None
    reason: str | None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> Event:
        return cls(*row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "exit_code": self.exit_code,
            "error": self.error,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as the workers table knows it."""

    id: str
    host: str
    pid: int
    proc_start: int | None
    started_at: float
    heartbeat_at: float
    #: The PROCESSING job assigned to this worker (from the jobs table).
    job_id: str | None = None
    #: The job the worker said it runs in its last heartbeat (None: it was idle).
    holding: str | None = None
    #: The home (its real path on `host`) the worker was started from: lifecycle
    #: commands of one home act on its own workers only (None: not recorded).
    home: str | None = None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> WorkerInfo:
        return cls(*row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "heartbeat_at": iso(self.heartbeat_at),
            "job_id": self.job_id,
            "home": self.home,
        }


#: The lease every recovery pass runs under (recovery.py); here, so that reading it
#: (`queuectl status`) does not import the monitor.
MONITOR_LEASE = "monitor"


@dataclass(frozen=True)
class LeaseInfo:
    """The monitor lease: who may run a recovery pass now, and who ran the last one."""

    name: str
    holder: str
    kind: str
    acquired_at: float
    expires_at: float
    last_pass_at: float | None
    last_pass_by: str | None
    last_pass_kind: str | None
    last_monitor_pass_at: float | None
    #: When a pass last found that every process had stalled (nobody ran a pass for
    #: heartbeat_timeout, or the clock jumped): heartbeats get one more interval.
    resumed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "kind": self.kind,
            "expires_at": iso(self.expires_at),
            "last_pass_at": iso(self.last_pass_at),
            "last_pass_by": self.last_pass_by,
            "last_pass_kind": self.last_pass_kind,
            "last_monitor_pass_at": iso(self.last_monitor_pass_at),
            "resumed_at": iso(self.resumed_at),
        }


@dataclass(frozen=True)
class LeaseGrant:
    """A lease just taken: the store's time read while holding the lock that took it,
    and what the lease row said before."""

    at: float
    #: The latest start or end of a pass before this one (by anyone); None: first pass.
    previous: float | None
    resumed_at: float | None


@dataclass(frozen=True)
class RecoveryGuard:
    """What must still hold, checked in the recovery's own statement, for a monitor's
    verdict to commit (beyond the job's lease, always checked)."""

    #: The recovery pass's lease holder: the lease must be held and unexpired.
    holder: str | None = None
    #: A silence verdict: the job's worker must not have heartbeated after
    #: `heartbeat_seen` (None: the worker had no row, and must still have none).
    worker_id: str | None = None
    heartbeat_seen: float | None = None
    #: The command never started: give the attempt back (attempts - 1, PENDING).
    give_back: bool = False


@dataclass(frozen=True)
class NewJob:
    """A validated job ready to insert (what rules.check_jobs returns, as a row of these
    fields in this order)."""

    id: str
    command: str
    max_retries: int
    priority: int
    timeout: float
    run_at: float
    queue: str = DEFAULT_QUEUE
    cwd: str | None = None
    #: JSON object text, or None.
    env: str | None = None
    unique_key: str | None = None
    #: Parents: the job waits until every one of them has completed.
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows: every given condition holds (empty or None: no
    condition on that field)."""

    states: tuple[JobState, ...] = ()
    queues: tuple[str, ...] = ()
    #: A literal substring of the command (case-sensitive; no pattern characters).
    command_contains: str | None = None
    #: Created at or after `since`, and before `until` (epoch seconds).
    since: float | None = None
    until: float | None = None
    newest_first: bool = False


@dataclass(frozen=True)
class QueueInfo:
    """One named queue: its settings and how many of its jobs are in each state."""

    name: str
    paused: bool
    #: At most this many of its jobs processing at once (None: no limit).
    concurrency: int | None
    #: Every state, 0 if none.
    counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paused": self.paused,
            "concurrency": self.concurrency,
            "counts": dict(self.counts),
            "total": sum(self.counts.values()),
        }


@dataclass(frozen=True)
class JobMetrics:
    """What `queuectl metrics` reads from the jobs and their history (Store.job_metrics)."""

    #: (queue, state, jobs, attempts they spent), one row per pair that has jobs.
    jobs: list[tuple[str, str, int, int]]
    #: The upper bounds of the run-time histogram's buckets, in seconds, increasing.
    bounds: tuple[float, ...]
    #: Completed jobs whose last attempt ran at most each bound (cumulative).
    runtime_buckets: list[int]
    runtime_count: int
    runtime_sum: float
    #: Recoveries in the stored history, by reason (models.Reason values).
    recoveries: dict[str, int]
    #: The earliest next_run_at of a pending or failed job due at `now` (None: none due).
    oldest_due_at: float | None
    #: The time these were read at.
    now: float


@dataclass(frozen=True)
class Schedule:
    """A named cron schedule: each run due enqueues one job made from `job`."""

    name: str
    #: A five-field cron expression, evaluated in the time zone `tz` (an IANA name).
    cron: str
    tz: str
    #: The job each run enqueues, as a JSON object of NewJob fields (no id, run_at or
    #: after: each run gets a new id and runs at once).
    job: str
    paused: bool
    #: When the next run is due (epoch seconds).
    next_run_at: float
    created_at: float
    last_run_at: float | None = None
    last_job_id: str | None = None

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> Schedule:
        name, cron, tz, job, paused, nxt, created, last, last_id = row
        return cls(
            str(name), str(cron), str(tz), str(job), bool(paused), float(nxt), float(created),
            None if last is None else float(last), None if last_id is None else str(last_id),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        import json

        return {
            "name": self.name,
            "cron": self.cron,
            "tz": self.tz,
            "paused": self.paused,
            "next_run_at": iso(self.next_run_at),
            "last_run_at": iso(self.last_run_at),
            "last_job_id": self.last_job_id,
            "created_at": iso(self.created_at),
            "job": json.loads(self.job),
        }


#: A schedule's columns, in Schedule's field order.
SCHEDULE_COLUMNS = "name, cron, tz, job, paused, next_run_at, created_at, last_run_at, last_job_id"
