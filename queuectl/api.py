"""The library API: what the CLI (and any Python program) does with a queue.

Validates every input before it reaches the store, so a rejected call changes
nothing.  Sees only the Store protocol.
"""

from __future__ import annotations

import builtins
import time

from queuectl.config import Config, Paths, check_combination
from queuectl.errors import Conflict, InvalidInput, JobEnded, JobNotFound, ScheduleNotFound
from queuectl.models import (
    CANCELLABLE,
    MONITOR_LEASE,
    TERMINAL,
    Event,
    Job,
    JobFilter,
    JobState,
    NewJob,
    QueueInfo,
    Schedule,
    WorkerInfo,
    iso,
)
from queuectl.rules import check_jobs, check_purge, check_queue_name, open_home, parse_moment, skip_held
from queuectl.settings import LIMIT, SETTINGS, normalize_key, num_text
from queuectl.store import Store, open_store

# Not typing.TYPE_CHECKING, which would import typing at every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path
    from typing import Any


class Queue:
    # Annotations after `def list` below say `builtins.list`: inside the class body
    # the bare name means that method.

    def __init__(self, store: Store, logs_dir: Path | None = None) -> None:
        self.store = store
        #: The home's logs folder, where close() brings the audit trail up to date.
        self.logs_dir = logs_dir
        #: Whether this Queue changed something the audit trail records (enqueue
        #: aside: its events wait for the next worker's flush, for enqueue's latency).
        self.changed = False

    @classmethod
    def open(cls, paths: Paths) -> Queue:
        open_home(str(paths.home), paths.db_url)
        return cls(open_store(paths.db_url), paths.logs)

    def close(self) -> None:
        try:
            if self.changed and self.logs_dir is not None:
                self.flush_trail()
        finally:
            self.store.close()

    def flush_trail(self) -> int:
        """Seal the events waiting in the database and append them to this home's
        audit files; a failure leaves them for the next flush (a worker's, within a
        second), never lost: 0 lines then."""
        from queuectl import trail_files

        if self.logs_dir is None:
            return 0
        try:
            # A second at most for the lock: a process stopped holding it must not
            # hold up the command (its change stands; the events wait).
            return trail_files.flush(self.store, self.logs_dir, wait=1.0)
        except Exception:  # the change stands; its events wait in the database, not lost
            return 0

    def config(self) -> Config:
        return Config.from_stored(self.store.config_items())

    # --- enqueue -------------------------------------------------------------------

    def enqueue(
        self, spec: Mapping[str, Any], now: float | None = None, *, on_conflict: str = "error"
    ) -> str:
        """Validate one job and insert it as pending (waiting, with parents not all
        completed); returns its id.  A unique key held by another job: UniqueConflict,
        or with on_conflict="ignore" the holder's id (nothing inserted)."""
        return self.enqueue_many([spec], now, on_conflict=on_conflict, numbered=False)[0]

    def enqueue_many(
        self,
        specs: Iterable[Mapping[str, Any]],
        now: float | None = None,
        *,
        on_conflict: str = "error",
        numbered: bool = True,
    ) -> list[str]:
        """Validate every job, then insert them all in one transaction (or none); an
        error names the job by its number, from 1.  With on_conflict="ignore", the
        jobs whose unique key is held are left out (the rest are inserted, all or
        none) and the holder's id stands in their place in the result."""
        if on_conflict not in ("error", "ignore"):
            raise InvalidInput("on_conflict must be 'error' or 'ignore'")
        if on_conflict == "error":
            return self._enqueue(specs, now, numbered=numbered)
        return skip_held([dict(s) for s in specs], lambda batch: self._enqueue(batch, now, numbered=numbered))

    def _enqueue(
        self, specs: Iterable[Mapping[str, Any]], now: float | None, *, numbered: bool
    ) -> builtins.list[str]:
        stored = self.store.config_items()
        t = self.store.now() if now is None else now
        rows = check_jobs(specs, stored, t, numbered=numbered)
        # A row holds NewJob's fields in their order (rules.JobRow).
        return self.store.enqueue([NewJob(*row) for row in rows], t)

    # --- reading -------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def inspect(self, job_id: str) -> tuple[Job, list[Event]]:
        job = self.get(job_id)
        return job, self.store.history(job_id)

    def parents(self, job_id: str) -> builtins.list[str]:
        """The ids the job was enqueued `after`."""
        return self.store.parents(job_id)

    def list(
        self,
        state: str | None = None,
        limit: int | None = None,
        *,
        states: Iterable[str] = (),
        queues: Iterable[str] = (),
        command_contains: str | None = None,
        since: str | None = None,
        until: str | None = None,
        newest_first: bool = False,
    ) -> list[Job]:
        """Jobs in creation order (oldest first, or newest first), at most `limit`
        (None: all), meeting every filter given: a state among `states` (or `state`),
        a queue among `queues`, a command holding `command_contains` literally,
        created since/until (ISO-8601 times, or durations ago such as `2h`)."""
        _check_limit(limit)
        wanted = [*states, *([state] if state else [])]
        now = self.store.now() if since is not None or until is not None else 0.0
        where = JobFilter(
            states=tuple(dict.fromkeys(parse_state(s) for s in wanted)),
            queues=tuple(dict.fromkeys(check_queue_name(q) for q in queues)),
            command_contains=command_contains or None,
            since=None if since is None else parse_moment(since, now, "--since"),
            until=None if until is None else parse_moment(until, now, "--until"),
            newest_first=newest_first,
        )
        return self.store.list_jobs(None, limit, where=where)

    def status(self, *, by_queue: bool = False) -> dict[str, Any]:
        """Counts per state, the total, live workers, and the last recovery pass;
        with by_queue, also `queues`: each queue's counts (queue_stats)."""
        counts = self.store.counts()
        out: dict[str, Any] = {s.value: counts.get(s.value, 0) for s in JobState}
        out["total"] = sum(counts.values())
        out["workers"] = len(self.live_workers())
        out["recovery"] = self.recovery_status()
        if by_queue:
            out["queues"] = [q.to_dict() for q in self.queues()]
        return out

    # --- named queues ----------------------------------------------------------------

    def queues(self) -> builtins.list[QueueInfo]:
        """Every queue: paused, concurrency, its jobs per state."""
        return self.store.queue_stats()

    def pause(self, name: str) -> bool:
        """Stop claims from the queue (its running jobs finish); the queue is created
        if it has none yet.  False: it was paused already."""
        self.changed = True
        return self.store.set_paused(check_queue_name(name), True)

    def resume(self, name: str) -> bool:
        """Let workers claim from the queue again.  False: it was not paused."""
        self.changed = True
        return self.store.set_paused(check_queue_name(name), False)

    def set_concurrency(self, name: str, limit: int | None) -> bool:
        """At most `limit` (>= 1) of the queue's jobs processing at once, across every
        worker and host; None: no limit.  False: it was so already."""
        check_queue_name(name)
        if limit is not None and not 1 <= limit <= CONCURRENCY_MAX:
            raise InvalidInput(
                f"--concurrency must be between 1 and {CONCURRENCY_MAX} (--no-limit removes the limit)"
            )
        self.changed = True
        return self.store.set_concurrency(name, limit)

    def recovery_status(self) -> dict[str, Any]:
        """Who ran the last recovery pass and when; `overdue` when none ran for more
        than three monitor intervals (no monitor and no worker is covering)."""
        cfg = self.config()
        info = self.store.lease_info(MONITOR_LEASE)
        last = info.last_pass_at if info else None
        age = None if last is None else max(0.0, self.store.now() - last)
        return {
            "last_pass_at": iso(last),
            "last_pass_by": info.last_pass_by if info else None,
            "last_pass_kind": info.last_pass_kind if info else None,
            "age_s": None if age is None else round(age, 3),
            "overdue": age is None or age > 3 * cfg.monitor_interval,
        }

    def health(self, now: float | None = None) -> builtins.list[dict[str, Any]]:
        """What keeps the queue from being served, as far as the database tells: no
        recovery pass for more than three monitor intervals (no monitor and no worker
        covering), and each job still processing past its timeout plus kill_grace and
        timeout_grace (by then its worker should have killed it and recorded the
        attempt).  Each problem is {"check", "message"} and more; empty: healthy."""
        cfg = self.config()
        t = self.store.now() if now is None else now
        problems: builtins.list[dict[str, Any]] = []
        info = self.store.lease_info(MONITOR_LEASE)
        last = info.last_pass_at if info else None
        limit = 3 * cfg.monitor_interval
        if last is None:
            problems.append(
                {"check": "recovery", "message": "no recovery pass has run yet: start a monitor or a worker"}
            )
        elif t - last > limit:
            problems.append(
                {
                    "check": "recovery",
                    "message": f"no recovery pass for {t - last:.1f}s"
                    f" (over 3 x monitor_interval = {limit:g}s): is a monitor or worker running?",
                    "age_s": round(t - last, 3),
                }
            )
        for job in self.store.processing():
            runtime = t - (job.started_at or t)
            if runtime > job.timeout + cfg.kill_grace + cfg.timeout_grace:
                problems.append(
                    {
                        "check": "timeout",
                        "message": f"job {job.id} processing for {runtime:.1f}s, past its {job.timeout:g}s"
                        f" timeout (worker {job.worker_id})",
                        "job_id": job.id,
                        "runtime_s": round(runtime, 3),
                    }
                )
        return problems

    def workers(self) -> builtins.list[WorkerInfo]:
        return self.store.workers()

    # --- schedules -------------------------------------------------------------------

    def schedule_add(
        self, name: str, cron: str, spec: Mapping[str, Any], tz: str = "UTC", now: float | None = None
    ) -> Schedule:
        """Add a schedule that enqueues the job `spec` (a job object: command and
        enqueue options, checked as an enqueue checks them, defaults taken now) at
        each time `cron` names in zone `tz`.  InvalidInput for a bad name, zone, cron
        or job; Conflict when the name is taken."""
        from queuectl import schedules

        schedules.check_name(name)
        for field in ("id", "after", "unique_key", "delay", "run_at"):
            if spec.get(field) not in (None, (), []):
                raise InvalidInput(f"a schedule's job cannot have {field.replace('_', '-')}: each run is new")
        t = self.store.now() if now is None else now
        first = schedules.next_after(cron, tz, t)
        (row,) = check_jobs([spec], self.store.config_items(), t, numbered=False)
        sched = Schedule(name, cron, tz, schedules.template(NewJob(*row)), False, first, t)
        self.changed = True
        self.store.schedule_add(sched)
        return sched

    def schedules(self) -> builtins.list[Schedule]:
        return self.store.schedules()

    def schedule_remove(self, name: str) -> None:
        self.changed = True
        if not self.store.schedule_remove(name):
            raise ScheduleNotFound(name)

    def schedule_pause(self, name: str) -> bool:
        """False: it was paused already."""
        if self.store.schedule(name) is None:
            raise ScheduleNotFound(name)
        self.changed = True
        return self.store.schedule_pause(name)

    def schedule_resume(self, name: str, now: float | None = None) -> bool:
        """Its next run is the first cron time after now.  False: it was not paused."""
        from queuectl import schedules

        s = self.store.schedule(name)
        if s is None:
            raise ScheduleNotFound(name)
        t = self.store.now() if now is None else now
        self.changed = True
        return self.store.schedule_resume(name, schedules.next_after(s.cron, s.tz, t))

    def live_workers(self) -> builtins.list[WorkerInfo]:
        cutoff = self.store.now() - self.config().heartbeat_timeout
        return [w for w in self.store.workers() if w.heartbeat_at >= cutoff]

    # --- dead-letter queue ---------------------------------------------------------

    def dlq_list(self, limit: int | None = None) -> builtins.list[Job]:
        _check_limit(limit)
        return self.store.list_jobs(JobState.DEAD, limit)

    def dlq_retry(self, job_id: str) -> str:
        return self.dlq_retry_many([job_id])[0]

    def dlq_retry_many(self, job_ids: Iterable[str]) -> builtins.list[str]:
        """Move these DEAD jobs back to PENDING, all or none: an unknown id or one that
        is not dead is reported before anything changes."""
        ids = list(dict.fromkeys(job_ids))
        for job_id in ids:
            job = self.get(job_id)  # raises JobNotFound
            if job.state is not JobState.DEAD:
                raise Conflict(
                    f"job {job_id!r} is {job.state.value}, not dead: only dead jobs can be retried"
                )
        # One transaction; a job another process retried in the meantime is left out.
        self.changed = True
        return self.store.dlq_retry(ids)

    def dlq_retry_all(self) -> builtins.list[str]:
        self.changed = True
        return self.store.dlq_retry(None)

    def purge(self, states: builtins.list[str], older_than: float | None = None) -> int:
        parsed = [parse_state(s) for s in states]
        check_purge(parsed)
        before = None if older_than is None else self.store.now() - older_than
        from queuectl.trail_files import seal_pending

        seal_pending(self.store)  # a purge deletes only the history events already sealed
        self.changed = True
        return self.store.purge(parsed, before)

    def purgeable(self, states: builtins.list[str], older_than: float | None = None) -> int:
        """How many jobs purge() with these arguments would delete now."""
        parsed = [parse_state(s) for s in states]
        before = None if older_than is None else self.store.now() - older_than
        from queuectl.trail_files import seal_pending

        seal_pending(self.store)  # as purge() does: it counts only jobs whose history is sealed
        return self.store.purgeable(parsed, before)

    # --- job control ---------------------------------------------------------------

    def cancel(
        self, job_ids: Iterable[str], actor: str | None = None, now: float | None = None
    ) -> tuple[builtins.list[str], builtins.list[JobNotFound | JobEnded]]:
        """Cancel these jobs (each one that may still run: models.CANCELLABLE), in one
        transaction, the history naming `actor` (default: this user@host).  A running
        attempt is killed by its own worker at its next heartbeat.  Returns the ids
        cancelled and, for each other id, why not: JobNotFound, or Conflict for a job
        that had ended already (by the time of the cancel)."""
        ids = builtins.list(dict.fromkeys(job_ids))
        moved = self.store.cancel(ids, actor or self.store.actor, now)
        self.changed = True
        done = set(moved)
        errors: builtins.list[JobNotFound | JobEnded] = []
        for job_id in ids:
            if job_id in done:
                continue
            job = self.store.get(job_id)
            if job is None:
                errors.append(JobNotFound(job_id))
            else:
                errors.append(JobEnded(job_id, job.state.value))
        return moved, errors

    def cancellable(self, state: str | None = None, queue: str | None = None) -> builtins.list[Job]:
        """The jobs `cancel --state/--queue` would cancel now: those in `state` (one
        of models.CANCELLABLE; None: any of them) and in `queue` (None: any)."""
        wanted = CANCELLABLE if state is None else (parse_state(state),)
        if wanted[0] not in CANCELLABLE:
            known = ", ".join(s.value for s in CANCELLABLE)
            raise InvalidInput(f"jobs that are {wanted[0].value} cannot be cancelled (cancellable: {known})")
        # One filtered listing (states and queue in the store's WHERE, oldest first).
        where = JobFilter(states=wanted, queues=() if queue is None else (queue,))
        return self.store.list_jobs(where=where)

    def watch(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Iterator[builtins.list[Job]]:
        """Snapshots of these jobs, in the order given: one at once, then one after
        each wake-up, until every job is terminal (that snapshot is the last) or
        `timeout` seconds (by `clock`) have passed.  JobNotFound for an id that is
        unknown (or purged meanwhile).

        A wake-up is the store's change signal (SQLite: data_version, microseconds a
        check; PostgreSQL: the NOTIFY of an enqueue, cancel or saved output) or, at
        the latest, heartbeat_interval: no store sends a signal for a finish (its
        cost would be paid by every job), so on PostgreSQL a finish is seen within
        one heartbeat interval, a read of the unfinished jobs each."""
        ids = builtins.list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput("no job ids given")
        jobs = {job_id: self.get(job_id) for job_id in ids}
        deadline = None if timeout is None else clock() + timeout
        recheck = self.config().heartbeat_interval
        while True:
            yield [jobs[i] for i in ids]
            running = [i for i in ids if jobs[i].state not in TERMINAL]
            if not running:
                return
            wait = recheck
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    return
                wait = min(wait, left)
            self.store.wait_for_change(wait)
            for job_id in running:
                jobs[job_id] = self.get(job_id)

    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> builtins.list[Job]:
        """Block until every one of these jobs is terminal, or `timeout` passes; the
        jobs as last read (see watch())."""
        last: builtins.list[Job] = []
        for last in self.watch(job_ids, timeout, clock):  # noqa: B007
            pass
        return last

    # --- config --------------------------------------------------------------------

    def config_get(self, key: str | None = None) -> dict[str, Any]:
        values = self.config().as_dict()
        if key is None:
            return values
        name = normalize_key(key)
        return {name: values[name]}

    def config_set(self, key: str, value: str) -> tuple[str, Any]:
        name = normalize_key(key)
        parsed = SETTINGS[name].parse(value)
        merged = self.config().as_dict()
        merged[name] = parsed
        check_combination(merged)
        self.changed = True
        self.store.config_set({name: str(parsed)})
        return name, parsed


#: The largest concurrency a queue takes (a 64-bit count either store holds).
CONCURRENCY_MAX = 1_000_000


def wait_exit_code(jobs: builtins.list[Job]) -> int:
    """`wait`'s exit code for the jobs it waited for: 0 when every one completed,
    1 when any ended dead or cancelled, 124 (as timeout(1)) when any had not ended."""
    if any(j.state not in TERMINAL for j in jobs):
        return WAIT_TIMEOUT
    return 0 if all(j.state is JobState.COMPLETED for j in jobs) else 1


#: `wait`'s exit code when its timeout passed first (as timeout(1)'s).
WAIT_TIMEOUT = 124


def parse_state(text: str) -> JobState:
    try:
        return JobState(text.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"unknown state {text!r} (known: {known})") from None


def _check_limit(limit: int | None) -> None:
    if limit is not None and not LIMIT.low <= limit <= LIMIT.high:
        raise InvalidInput(f"--limit must be between {num_text(LIMIT.low)} and {num_text(LIMIT.high)}")
