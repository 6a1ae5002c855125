"""The Store contract: every backend implements exactly these semantics, and the
contract suite (tests/contract) holds each backend to them.

Times are epoch seconds (floats).  `now=None` means "the store's clock": the host
clock for SQLite, the database server's clock for PostgreSQL.  Every method that
changes a job's state is one guarded statement and returns whether it changed a row;
a False return means "someone else got there first" and is not an error.

Every state change a method makes is appended to the job's history (`job_events`)
in the same transaction, so the history can never disagree with the jobs table.

Every time a write stores or compares (`now=None`) is read after the write has its
locks: a write that waited for a lock held elsewhere records when it happened, not
when it was asked for.

Errors: every method may raise StoreError and its subclasses (errors.py), never a
driver's own exception: StoreBusy (the database stayed locked; retrying may
succeed), StoreUnavailable (the connection is lost; a write may or may not have
committed), StoreFatal (the database can no longer be used by this process).  A
store trusts its input: the caller (api.py, through rules.py) validates what users
give, and a store raises no usage errors.

The end of an attempt is one outcome value (store/outcome.py): finish() records a
Finished one (Completed, Retry, Dead), recover() a Recovered one (RecoveredRetry,
RecoveredDead, GivenBack).
"""

from __future__ import annotations

# A constant of this name means to mypy what typing.TYPE_CHECKING means: the
# protocol's annotations need these names, nothing at runtime does.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Protocol

    from queuectl.models import (
        Beat,
        Event,
        Job,
        JobFilter,
        JobMetrics,
        JobState,
        LeaseGrant,
        LeaseInfo,
        NewJob,
        QueueInfo,
        Schedule,
        WorkerInfo,
    )
    from queuectl.store.outcome import Finished, Recovered
    from queuectl.store.trail import TrailStore
else:
    # At runtime the protocol is a plain class: nothing checks it with isinstance().
    Protocol = object


class Store(Protocol):
    #: True where this process can be cut off from a store that other hosts still
    #: reach (PostgreSQL): a worker must then fence itself on its own clock.  False
    #: for SQLite, where every process shares one host and one lock: a wait for the
    #: lock stops every writer alike, and no one can record a recovery meanwhile.
    partitionable: bool
    #: Who this process's changes are by, in the audit trail: the OS user and host
    #: (actors.cli_actor) until the process names itself (a worker its id, the
    #: monitor `monitor:host:pid`).
    actor: str
    #: The audit trail's events, head and lines (store/trail.py).
    trail: TrailStore

    def now(self) -> float:
        """The store's clock."""

    def set_call_timeout(self, seconds: float | None) -> None:
        """Bound every later call of this process to about `seconds` (None: unbounded):
        a call that cannot complete by then (a hung or cut connection) raises
        StoreUnavailable instead of blocking its caller.  SQLite: nothing to bound
        (its waits for the lock are bounded by the busy timeout)."""

    def check_database(self) -> None:
        """Raise StoreFatal if the database this store opened can no longer be used by
        this process, whatever a retry does: StoreGone when its file was deleted or
        replaced (the path names no file, or another one: other processes work on that
        one), StoreCorrupt when the file was truncated.  Cheap (SQLite: one stat), so
        a long-running process calls it at every heartbeat.  PostgreSQL: nothing to
        check."""

    # --- jobs --------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], now: float | None = None) -> list[str]:
        """Insert all jobs as PENDING (due at their run_at, created and updated at
        now, no attempt yet), each with its first history event, in one transaction:
        all of them or none.  An idle worker waiting in wait_for_change() is woken.

        A job with parents (`after`) that have not all completed is WAITING instead
        (next_run_at NULL) until the last of them completes; job_deps links it to
        each.  A queue named by a job is added to the queues table.

        Returns the ids in order.  Raises DuplicateJob (naming the first id that
        repeats or exists already) and inserts nothing if any id is taken;
        UniqueConflict (naming the key and the job holding it) if a job's unique key
        is held by a waiting, pending, failed or processing job; JobNotFound for a
        parent neither stored nor in `jobs`; Conflict for a parent that ended dead or
        cancelled.
        """

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    def parents(self, job_id: str) -> list[str]:
        """The ids of the job's parents (what it was enqueued `after`), sorted; empty
        for none or an unknown job."""

    def history(self, job_id: str) -> list[Event]:
        """The job's events, oldest first."""

    def list_jobs(
        self, state: JobState | None = None, limit: int | None = None, *, where: JobFilter | None = None
    ) -> list[Job]:
        """Jobs in creation order (created_at, then id), oldest first, at most `limit`
        of them (None: all).  `where` keeps the jobs that meet every condition it
        gives: a state among `states`, a queue among `queues`, a command holding
        `command_contains` as a literal, case-sensitive substring (% and _ are plain
        characters), created_at >= `since` and < `until`; `newest_first` reverses
        the order (the limit then keeps the newest).  `state` is the one-state
        shorthand (it replaces where.states)."""

    def counts(self) -> dict[str, int]:
        """Number of jobs per state; every state is present (0 if none)."""

    def fold_counts(self) -> None:
        """Make the next counts() cheap, where the store keeps counts as a snapshot
        plus the changes since (SQLite): fold the changes into the snapshot.  Recovery
        passes call it.  It never changes what counts() returns."""

    def claim(
        self, worker_id: str, now: float | None = None, queues: Sequence[str] | None = None
    ) -> Job | None:
        """Atomically take the best due job and return it as PROCESSING, in one
        statement.

        Best: highest priority, then earliest next_run_at, then id.  Due: PENDING or
        FAILED with next_run_at <= now, in one of `queues` (None: any queue) that is
        not paused and has fewer PROCESSING jobs than its concurrency (if it has
        one).  The concurrency holds across every process and host: no interleaving
        of claims ever makes a queue's PROCESSING jobs more than its concurrency
        (lowering it below the running count only stops new claims).  The cost is
        flat in the number of jobs (it grows with the number of queues).

        The claim increments attempts (so a job that kills its worker every time
        still runs out of attempts) and lease (the fence every later write of this
        attempt checks), sets worker_id and started_at, and clears the previous
        attempt's result.  None means nothing is due.  No two
        callers, in any processes, ever get the same (job, lease).
        """

    def finish(self, job_id: str, lease: int, outcome: Finished, now: float | None = None) -> bool:
        """Record the end of an attempt by its own worker: PROCESSING -> the outcome's
        state, writing what the outcome holds (exit code, error, output; a Retry's
        next_run_at), finished_at and updated_at = now, reason cleared.

        Fenced: only if (job_id, PROCESSING, lease) still holds, checked in the same
        statement.  False means it did not (the job was recovered, and maybe claimed
        again, or it never existed): nothing changes, the result is dropped.
        """

    def finish_and_claim(
        self,
        job_id: str,
        lease: int,
        outcome: Finished,
        worker_id: str,
        now: float | None = None,
        queues: Sequence[str] | None = None,
    ) -> tuple[bool, Job | None]:
        """finish() and then claim() for `worker_id` from `queues`, in one transaction
        (one commit per job in a busy worker), both at the same `now`.  Returns (finish held, the
        next job or None); the claim is made whether or not the finish held."""

    def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        """The earliest next_run_at of the runnable jobs an idle worker serving
        `queues` (None: every queue) must wake for, or None: every job set to run
        later (delayed at enqueue, waiting for a retry, recovered, retried from the
        DLQ).  A job due from its arrival on may be left out (SQLite leaves it out):
        it is due already, a claim finds it, and new ones wake an idle worker through
        wait_for_change().  The jobs of paused queues and of queues at their
        concurrency are left out (a claim would pass them over; a time in the past
        would make an idle worker spin): a resume or a finished job wakes the
        worker through wait_for_change(), or its poll does."""

    # --- named queues --------------------------------------------------------------

    def queue_stats(self) -> list[QueueInfo]:
        """Every named queue (a row exists from its first job, or its first setting),
        by name: paused, concurrency, and its jobs per state (every state present).
        Counted from the jobs table (one pass over every job)."""

    def set_paused(self, name: str, paused: bool) -> bool:
        """Pause (no claim takes the queue's jobs; running ones finish) or resume the
        queue, creating it if it has no row: one guarded statement.  True if anything
        changed.  A resume wakes idle workers (wait_for_change())."""

    def set_concurrency(self, name: str, limit: int | None) -> bool:
        """At most `limit` (>= 1, checked by the caller) of the queue's jobs
        PROCESSING at once, or no limit (None), creating the queue if it has no row:
        one guarded statement.  True if anything changed; a change wakes idle
        workers."""

    def dlq_retry(self, job_ids: Iterable[str] | None, now: float | None = None) -> list[str]:
        """Move DEAD jobs back to PENDING, due now, with attempts reset and the last
        error cleared (reason 'dlq_retry'), in one transaction; None means every DEAD
        job.  An idle worker waiting in wait_for_change() is woken.

        Returns the ids moved.  Ids that are not DEAD (or unknown) are left alone: the
        caller tells "unknown" from "not dead" with get().  Raises UniqueConflict
        (naming the key and, where one holds it, the live job holding it) and moves
        nothing if a job would take a unique key that a waiting, pending, failed or
        processing job holds, or that another job of this retry takes.
        """

    def cancel(self, job_ids: Sequence[str], actor: str, now: float | None = None) -> list[str]:
        """Move each of these jobs that may still run (WAITING, PENDING, FAILED,
        PROCESSING: models.CANCELLABLE) to CANCELLED, in one transaction, each with one
        guarded statement: reason `cancelled by <actor>`, finished_at and updated_at =
        now, next_run_at cleared.  The lease, worker and output are left as they are:
        a PROCESSING job's worker learns of it from its next heartbeat (held=False),
        kills the attempt, and its finish is fenced off.  The history records each move
        (with the reason), and the WAITING children of a cancelled job are cancelled
        with it (reason `parent <id> cancelled`).  A waiter in wait_for_change() is
        woken.

        Returns the ids moved, in the order given.  Ids that are unknown or terminal
        already are left alone: the caller tells them apart with get().
        """

    def save_output(self, job_id: str, lease: int, stdout: str, stderr: str) -> bool:
        """Store the output a running attempt has written so far (its kept tail, which
        the caller bounds to output_limit), so get() shows it while the job runs.  The
        job's state, times and history do not change.

        Fenced like finish(): only if (job_id, PROCESSING, lease) still holds; False
        means it did not, and nothing changed.  A waiter in wait_for_change() may be
        woken (PostgreSQL: NOTIFY; SQLite: every commit is seen)."""

    def purge(self, states: Sequence[JobState], before: float | None = None, limit: int | None = None) -> int:
        """Delete the jobs in `states` (and their history) last updated before `before`
        (None: any time), in one transaction; returns how many jobs were deleted.  The
        caller passes only finished states (COMPLETED, DEAD: rules.check_purge).  With
        `limit`, at most that many, the earliest created first (the recovery pass's
        retention batches: each one short transaction)."""

    def purgeable(self, states: Sequence[JobState], before: float | None = None) -> int:
        """How many jobs purge(states, before) would delete now (a count, no change)."""

    def job_metrics(self, bounds: Sequence[float], now: float | None = None) -> JobMetrics:
        """For `queuectl metrics`: jobs and attempts per (queue, state), the completed
        jobs' last-attempt run times counted into the buckets `bounds` (cumulative),
        recoveries per reason in the stored history, and the earliest next_run_at of
        a job due at `now`.  Reads only; each part is one statement (the parts are
        not one snapshot)."""

    def finished_since(self, since: float) -> dict[str, int]:
        """How many attempts ended since `since`, per state reached (completed,
        failed, dead; a state none reached is absent), among the last
        sql.FINISHED_TAIL history events: `queuectl top`'s throughput."""

    # --- schedules -------------------------------------------------------------------

    def schedule_add(self, schedule: Schedule) -> None:
        """Store a new schedule; Conflict when the name is taken (nothing changed)."""

    def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""

    def schedule(self, name: str) -> Schedule | None:
        """The schedule `name`, or None."""

    def schedule_remove(self, name: str) -> bool:
        """Delete the schedule (its jobs stay); False: there was none."""

    def schedule_pause(self, name: str) -> bool:
        """Stop firing it (next_run_at kept); False: none, or paused already."""

    def schedule_resume(self, name: str, next_run_at: float) -> bool:
        """Fire it again, next at `next_run_at`; False: none, or not paused."""

    def due_schedules(self, now: float | None = None) -> list[Schedule]:
        """The schedules not paused whose next_run_at <= now, the earliest first."""

    def fire_schedule(self, name: str, expected: float, next_run_at: float, job: NewJob, now: float) -> bool:
        """One run of schedule `name`: in one transaction, move its next_run_at from
        `expected` to `next_run_at` (only if it is still `expected` and the schedule
        is not paused) and insert `job` (PENDING, due at its run_at).  False: the
        guard did not hold (another firer, a pause or a removal got there first) and
        nothing changed.  However many processes fire at once, each (schedule,
        expected) enqueues at most one job."""

    # --- recovery ----------------------------------------------------------------

    def processing(self) -> list[Job]:
        """All PROCESSING jobs."""

    def recover(self, job_id: str, lease: int, outcome: Recovered, now: float | None = None) -> bool:
        """End an attempt on its worker's behalf (the monitor; a worker giving back a
        job it claimed and never started): PROCESSING -> the outcome's state, with
        its reason and error, exit code cleared, output kept, finished_at and
        updated_at = now.  A GivenBack outcome does not count the attempt
        (attempts - 1).

        Fenced like finish() and, in the same statement, by the outcome's guard: the
        pass's monitor lease still held and unexpired (guard.holder), the worker
        still silent since the heartbeat the verdict saw (guard.worker_id,
        guard.heartbeat_seen).  False: something did not hold, nothing changed.
        When it changes the job and the outcome holds an `audit` text (the
        recovery's log record), that text is added to the audit outbox in the same
        transaction."""

    def audit_pending(self) -> list[tuple[int, str]]:
        """Audit records not yet written to a recovery log, oldest first: (id, text)."""

    def audit_clear(self, ids: Sequence[int]) -> None:
        """Drop these audit records: they are in a recovery log now."""

    # --- workers -----------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the worker's row."""

    def heartbeat(
        self, worker_id: str, job_id: str | None, lease: int | None, now: float | None = None
    ) -> Beat:
        """Refresh the worker's heartbeat and say what holds: `registered` is False if
        the worker's row is gone (the worker must register again); `held` is False if,
        with a job, (job_id, PROCESSING, lease) no longer holds (the job was recovered:
        the worker must kill it).  The two are independent."""

    def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row (clean exit), unless it holds a PROCESSING job: an
        attempt its worker could not record stays the worker's, and is recovered (and
        counted) when the worker is found dead or silent."""

    def workers(self) -> list[WorkerInfo]:
        """All registered workers, with the job each holds and the home each was
        started from."""

    def remove_worker(self, worker_id: str, heartbeat_at: float) -> bool:
        """Delete the row only if its heartbeat is still `heartbeat_at` and the worker
        holds no PROCESSING job (monitor): a worker keeps its row while any claim of
        its own is open, so a job's worker is missing only if it never received it."""

    # --- the monitor lease --------------------------------------------------------

    def acquire_lease(
        self, name: str, holder: str, kind: str, ttl: float, now: float | None = None
    ) -> LeaseGrant | None:
        """Take or renew the lease `name` for `ttl` seconds.  A grant if `holder` now
        holds it (it was free, expired, or already `holder`'s), else None.  At most one
        holder at a time; the grant's time is read under the lock that took it."""

    def mark_resumed(self, name: str, holder: str, at: float) -> None:
        """Record in the lease row, if `holder` holds it, that its pass at `at` found
        every process had stalled."""

    def keep_due(self, was: float, now: float) -> int:
        """After the clock stepped back from `was` to `now`: every waiting job that was
        due at `was` is due at `now` (it would otherwise wait for the size of the
        step).  Returns how many jobs moved."""

    def release_lease(self, name: str, holder: str, passed: bool, now: float | None = None) -> bool:
        """Give the lease up (if `holder` still holds it).  With passed=True, record that
        `holder` (of its kind) completed a pass at `now`."""

    def lease_info(self, name: str) -> LeaseInfo | None:
        """The lease row, or None if no one ever took it."""

    # --- config ------------------------------------------------------------------

    def config_items(self) -> dict[str, str]:
        """The stored config values (keys never set are absent)."""

    def config_set(self, items: dict[str, str]) -> None:
        """Store config values in one transaction."""

    # --- waiting -----------------------------------------------------------------

    def wait_for_change(self, timeout: float, wakeup_fd: int | None = None) -> None:
        """Return when another process may have changed the queue, when `timeout`
        seconds have passed, or when `wakeup_fd` becomes readable.  A hint, never
        the truth (the caller claims to find out), so it may return early and never
        raises."""

    def close(self) -> None:
        """Release the connection(s); the store is not used after this."""


def open_store(url: str, *, synchronous: str | None = None) -> Store:
    """Open the backend `url` names (postgresql://... or a SQLite file path), creating
    or migrating its schema on first use.  `synchronous` ('normal' or 'full') is the
    SQLite durability setting, None: the stored one.  The only place a backend is
    named; each is imported here, when first opened."""
    if url.startswith(("postgresql://", "postgres://")):
        from queuectl.errors import StoreUnavailable

        try:
            from queuectl.store.postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional extra
            raise StoreUnavailable(
                "PostgreSQL support is not installed: pip install 'queuectl[postgres]'"
            ) from exc
        return PostgresStore(url)
    from queuectl.store.sqlite.store import SQLiteStore

    return SQLiteStore(url, synchronous=synchronous)
