"""The worker: claim -> run -> record, one job at a time, in one thread.

`run_once()` does one job (or nothing) and takes `now` so tests can drive it at
fixed instants; `run()` is the thin loop around it.  What is periodic (heartbeats,
config refresh, stop checks, covering for an absent monitor) is a named duty run by
a scheduler (scheduler.py): between jobs by the loop, which sleeps until the next
one is due (or work arrives); while a job runs, at each of the executor's ticks.
Sees only the Store protocol, never a backend.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from queuectl import affinity, executor, failpoints, procs
from queuectl.config import Config
from queuectl.errors import QueuectlError, StoreBusy, StoreFatal, StoreUnavailable
from queuectl.fence import Fence, deadline_after
from queuectl.logs import json_logger
from queuectl.models import Beat, Job, JobState, Outcome, RecoveryGuard, Transition, WorkerInfo, decide
from queuectl.recovery import LEASE, Recoverer, end_attempt, monitor_absent
from queuectl.scheduler import Duty, Scheduler
from queuectl.signals import StopSignals
from queuectl.store import Store
from queuectl.store.outcome import finished
from queuectl.trail_files import FLUSH_INTERVAL, STOP_WAIT, Flusher

#: How often (seconds) a worker re-reads the config table.
CONFIG_TTL = 2.0
#: How often the executor ticks while a job runs (the running job's duties; the
#: stop checks, which do no I/O, run at every tick).
CHECK_INTERVAL = 0.25

#: The error an attempt records when the fence killed it.
FENCED = (
    "lease presumed lost: no heartbeat reached the store in time, killed before any monitor may recover it"
)


def new_worker_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{procs.hostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Worker:
    def __init__(
        self,
        store: Store,
        *,
        queue: str,
        signals: StopSignals | None = None,
        worker_id: str | None = None,
        log: Any = None,
        clock: Callable[[], float] | None = None,
        watch_parent: bool = False,
        logs_dir: Path | None = None,
        run_dir: Path | None = None,
        overrides: dict[str, Any] | None = None,
        home: str | None = None,
        serves: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        #: The named queues this worker claims from (None: every queue).  Recovery
        #: (covering for an absent monitor) still serves every queue: a dead worker's
        #: job is recovered whoever's queue it is in.
        self.serves = None if serves is None else tuple(dict.fromkeys(serves))
        #: The home this worker was started from, recorded with its row.
        self.home = home
        self.queue = queue
        self.signals = signals or StopSignals()
        self.id = worker_id or new_worker_id()
        #: The audit trail names this worker as the actor of what it changes on purpose.
        store.actor = self.id
        self.log = log or json_logger(worker_id=self.id)
        self.clock = clock
        # Settings given to this one worker (e.g. `worker run --poll-interval`) win
        # over the config table, also after every refresh.
        self._overrides = dict(overrides or {})
        self.config = self._load_config()
        self._files: executor.OutputFiles | None = None
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_FAILPOINT")}
        #: When the last heartbeat (or registration) that reached the store was sent.
        self._last_beat_ok = time.monotonic()
        #: Kills a running job on its own clock when the store cannot be reached in time
        #: (stores other hosts may still reach, where a monitor there would recover it).
        self._fence = Fence(self.log) if store.partitionable else None
        self._stop_requested_at: float | None = None
        self._parent = self.signals.watch_parent() if watch_parent else None
        self.jobs_done = 0
        #: A job claimed together with the last finish, to be run next.
        self._next: Job | None = None
        #: The job being run now.
        self._running: Job | None = None
        #: (id, lease) of an attempt found cancelled: its result is not recorded.
        self._cancelled: tuple[str, int] | None = None
        #: The output sizes of the running attempt when its output was last saved.
        self._saved = (0, 0)
        #: The CPUs jobs may use when this worker is pinned to one (see pin()), and
        #: the lock on its CPU; `run_dir` holds the locks (None: never pinned).
        self._job_cpus: frozenset[int] | None = None
        self._cpu_slot: affinity.CpuSlot | None = None
        self._run_dir = run_dir
        # Recovery fallback: with no monitor around, workers run its passes themselves.
        self._recoverer = (
            Recoverer(store, queue=queue, logs_dir=logs_dir, log=self.log) if logs_dir is not None else None
        )
        self._covering = False
        self._beat = Duty("heartbeat", lambda: self.config.heartbeat_interval, self._heartbeat)
        self._cover = (
            Duty("monitor_cover", lambda: self.config.monitor_interval, self._cover_for_monitor)
            if self._recoverer is not None
            else None
        )
        refresh = Duty("config_refresh", lambda: CONFIG_TTL, self._refresh_config, last=time.monotonic())
        stop = Duty("stop_checks", lambda: 0.0, self._stop_checks)  # at every tick
        cover = [self._cover] if self._cover is not None else []
        #: Seals the audit trail's waiting events and appends them to this home's
        #: files, every FLUSH_INTERVAL and as the worker stops (trail_files.py).
        self._trail = Flusher(store, logs_dir, self.log) if logs_dir is not None else None
        if self._trail is not None:
            cover.append(Duty("audit_flush", lambda: FLUSH_INTERVAL, self._flush_trail))
        #: The duties between jobs, and those while a job runs (the heartbeat, the
        #: monitor cover and the audit flush keep one rhythm across both).
        self._between_jobs = Scheduler(refresh, *cover, self._beat)
        self._job_running = Scheduler(*cover, stop, self._beat)

    # --- lifecycle -----------------------------------------------------------------

    def _flush_trail(self) -> None:
        if self._trail is not None:
            self._trail()

    def register(self, holding: str | None = None) -> None:
        """(Re-)register this worker, naming the job it runs (`holding`): a worker
        whose row was removed while it was stopped keeps its job, and a row written
        without the job would make its running attempt look never received."""
        # The store's clock (the database server's, for PostgreSQL), like every other
        # heartbeat: a host whose clock lags would otherwise look stale at once.
        sent = time.monotonic()
        now = self.clock() if self.clock is not None else self.store.now()
        pid = os.getpid()
        self.store.register_worker(
            WorkerInfo(
                id=self.id,
                host=procs.hostname(),
                pid=pid,
                proc_start=procs.proc_start(pid),
                started_at=now,
                heartbeat_at=now,
                holding=holding,
                home=self.home,
            )
        )
        self._beat.done(time.monotonic())
        self._last_beat_ok = sent

    def pin(self) -> int | None:
        """With cpu_affinity=auto, keep this worker to one CPU; return it (or None).

        The CPU is the first free lock in the home's run/ folder (affinity.take_cpu),
        so workers starting together never pick the same one while another is free.
        """
        if (
            self.config.cpu_affinity != "auto"
            or self._run_dir is None
            or not hasattr(os, "sched_setaffinity")
        ):
            return None
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return None
        slot = affinity.take_cpu(self._run_dir, allowed)
        if slot is None:
            return None
        try:
            os.sched_setaffinity(0, {slot.cpu})
        except OSError:
            slot.release()
            return None
        self._cpu_slot = slot
        self._job_cpus = frozenset(allowed)
        return slot.cpu

    def unregister(self) -> None:
        job, self._next = self._next, None
        if job is not None:
            # Claimed with the last finish, never started: give the attempt back.
            # PROCESSING -> PENDING (released by its worker)
            with contextlib.suppress(QueuectlError):
                end_attempt(
                    self.store,
                    job,
                    Transition(JobState.PENDING, self.store.now()),
                    "released",
                    f"released unstarted by worker {self.id} as it stopped",
                    guard=RecoveryGuard(give_back=True),
                )
        with contextlib.suppress(QueuectlError):
            self.store.unregister_worker(self.id)
        if self._trail is not None:
            self._trail(wait=STOP_WAIT)
        if self._cpu_slot is not None:
            self._cpu_slot.release()
            self._cpu_slot = None
        if self._files is not None:
            self._files.close()
            self._files = None

    @property
    def files(self) -> executor.OutputFiles:
        if self._files is None:
            self._files = executor.OutputFiles()
        return self._files

    def _load_config(self) -> Config:
        cfg = replace(Config.from_stored(self.store.config_items()), **self._overrides)
        # A call that hangs must not hold the loop past a heartbeat (the fence does
        # not depend on it: it runs on its own thread).
        self.store.set_call_timeout(cfg.call_timeout)
        return cfg

    def _refresh_config(self) -> None:
        self.config = self._load_config()

    def _deadline(self) -> float:
        cfg = self.config
        return deadline_after(self._last_beat_ok, cfg.heartbeat_timeout, cfg.heartbeat_interval)

    # --- one job -------------------------------------------------------------------

    def run_once(self, now: float | None = None, *, chain: bool = False) -> Job | None:
        """Claim the best due job, run it, record the outcome.  None if none was due.

        With chain=True the outcome is written together with the claim of the next
        job (one transaction per job); that job is run by the next call.
        """
        job, self._next = self._next, None
        if job is None:
            # One stat per claim: no job is taken from a file the path no longer names.
            self.store.check_database()
            job = self.store.claim(self.id, now, self.serves)
            if job is None:
                return None
        failpoints.hit("after_claim_commit")
        if not self._still_mine(job):
            self._cancelled = None  # never started: nothing to drop either way
            return job
        try:
            outcome = self.execute(job)
        except StoreFatal:
            raise  # the job was killed: no store here can record it
        except Exception as exc:  # the attempt started: record it as failed, never drop it
            self.log.exception("worker_error", job_id=job.id)
            outcome = Outcome(exit_code=None, error=f"worker error while running the job: {exc}")
        if self._cancelled == (job.id, job.lease):
            # CANCELLED is terminal and the lease never goes back: nothing to write
            # (the fenced finish could only fail), not a failure, never a retry.
            self._cancelled = None
            self.log.info("job_cancelled", job_id=job.id, attempt=job.attempts, exit_code=outcome.exit_code)
        else:
            self.record(job, outcome, now, claim_next=chain and not self.signals.warm)
        self.jobs_done += 1
        return job

    def _still_mine(self, job: Job) -> bool:
        """Before the spawn: after a heartbeat was missed (this worker was stopped or
        starved, and may have been taken for dead), ask the store first, and run the
        job only if its lease still holds.  Otherwise nothing to ask: the claim just
        proved the store reachable, and heartbeats were on time."""
        if time.monotonic() - self._last_beat_ok <= 2 * self.config.heartbeat_interval:
            return True
        sent = time.monotonic()
        self._beat.done(sent)
        try:
            beat = self.store.heartbeat(self.id, job.id, job.lease)
        except StoreFatal:
            raise
        except QueuectlError as exc:
            if self._fence is None:
                return True  # a wait for SQLite's lock: everyone waits alike
            self.log.warning("job_not_started", job_id=job.id, error=str(exc))
            return False
        self._last_beat_ok = sent
        return self._still_held(beat, job, started=False)

    def execute(self, job: Job) -> Outcome:
        cfg = self.config
        # The worker's environment is the base, the job's variables are added, and the
        # attempt's markers come last: no job can hide from procs.job_processes.  The
        # job's variables are never logged.
        env = {**self._base_env, **job.environment()} if job.env else dict(self._base_env)
        env["QUEUECTL_JOB_ID"] = job.id
        env["QUEUECTL_LEASE"] = str(job.lease)
        env["QUEUECTL_ATTEMPT"] = str(job.attempts)
        env["QUEUECTL_QUEUE"] = self.queue
        command = executor.Command(
            command=job.command,
            timeout=job.timeout,
            env=env,
            kill_grace=cfg.kill_grace,
            output_limit=cfg.output_limit * 1024,
            cpus=self._job_cpus,
            cwd=job.cwd,  # None (jobs enqueued before they had one): the worker's own
        )
        fence = self._fence
        self._running = job
        self._saved = (0, 0)
        try:
            outcome = executor.run(
                command,
                self.files,
                check=self._job_running.run_due,
                check_interval=min(CHECK_INTERVAL, cfg.heartbeat_interval),
                wakeup_fd=self.signals.fd,
                on_start=None if fence is None else lambda pid: fence.arm(pid, job.id, self._deadline()),
                on_exit=None if fence is None else fence.disarm,
            )
        finally:
            self._running = None
        if fence is not None and fence.fired == job.id:
            return replace(outcome, error=FENCED)
        return outcome

    def record(
        self, job: Job, outcome: Outcome, now: float | None = None, *, claim_next: bool = False
    ) -> bool:
        """Write the attempt's outcome, fenced by the lease (and with claim_next, claim
        the next job in the same transaction).  A busy or unreachable store is retried
        until the outcome is written or fenced off (dropped): a started attempt is
        never left unrecorded while this worker lives, so its heartbeats, which stop
        naming the job only once it is recorded, never make a started attempt look
        never started.  Only a cold stop abandons it (the worker row stays, so the
        monitor recovers the attempt as a counted one)."""
        failpoints.hit("before_finish_commit")
        # Not into a file the path no longer names (StoreFatal goes up, unrecorded:
        # the file at the path says the job is still processing, and its recovery
        # follows this worker's exit).
        self.store.check_database()
        delay = 0.05
        while True:
            try:
                move, held = self._write(job, outcome, now, claim_next)
                break
            except (StoreBusy, StoreUnavailable) as exc:
                if self.signals.cold:
                    self.log.error("finish_abandoned", job_id=job.id, error=str(exc))
                    return False
                self.log.warning("finish_retry", job_id=job.id, error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        failpoints.hit("after_finish_commit")
        if held:
            # A completed job is a debug event (QUEUECTL_LOG_LEVEL=debug); any other
            # outcome is worth a line at info.
            emit = self.log.debug if move.state is JobState.COMPLETED else self.log.info
            emit(
                "job_finished",
                job_id=job.id,
                attempt=job.attempts,
                state=move.state.value,
                exit_code=outcome.exit_code,
                error=outcome.error,
            )
        else:
            self.log.warning("result_dropped", job_id=job.id, lease=job.lease, reason="lease lost")
        return held

    def _write(
        self, job: Job, outcome: Outcome, now: float | None, claim_next: bool
    ) -> tuple[Transition, bool]:
        """One try at record(): the move decided for the outcome, and whether the
        lease held (with claim_next, the job claimed with it is run next)."""
        cfg = self.config
        # Only a retry's due time needs the store's clock (a round trip on
        # PostgreSQL); the store stamps everything else itself.
        retry = not outcome.ok and job.attempts <= job.max_retries
        t = now if now is not None else (self.store.now() if retry else 0.0)
        move = decide(
            ok=outcome.ok,
            attempts=job.attempts,
            max_retries=job.max_retries,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
            now=t,
        )
        result = finished(move, outcome)
        # PROCESSING -> COMPLETED / FAILED / DEAD
        if claim_next:
            held, self._next = self.store.finish_and_claim(
                job.id, job.lease, result, self.id, now, self.serves
            )
        else:
            held = self.store.finish(job.id, job.lease, result, now)
        return move, held

    # --- the duties ----------------------------------------------------------------

    def _heartbeat(self) -> str | None:
        """The heartbeat, naming the job this worker holds: the one it runs, or the
        one claimed with the last finish.  Why to kill the running job, if so."""
        job, started = self._running, True
        if job is None:
            job, started = self._next, False
        ids = {"job_id": job.id} if job is not None else {}
        sent = time.monotonic()
        try:
            self.store.check_database()
            beat = self.store.heartbeat(self.id, job.id if job else None, job.lease if job else None)
        except StoreFatal:
            raise  # a running job is killed (executor.run) and the worker stops
        except QueuectlError as exc:
            # Where other hosts may still reach the store, the fence kills the job at
            # its deadline; on SQLite a failed heartbeat is a wait for the one lock
            # that every process (any monitor included) waits for alike.
            self.log.warning("heartbeat_failed", **ids, error=str(exc))
            return None
        self._last_beat_ok = sent
        if self._still_held(beat, job, started):
            if started and job is not None:
                if self._fence is not None:  # the store has our heartbeat naming the job
                    self._fence.renew(self._deadline())
                self._save_output(job)
            return None
        if started and job is not None:
            if self._cancelled == (job.id, job.lease):
                return "cancelled"
            return "lease lost: the job was recovered by the monitor"
        # Recovered or cancelled before it even started: not ours any more.
        self._next = self._cancelled = None
        return None

    def _save_output(self, job: Job) -> None:
        """At a heartbeat of a running attempt that wrote something since the last
        save: store its kept tail (output_limit), so `logs` shows it while it runs.
        Two fstat calls when nothing new was written; a failed save is retried at the
        next heartbeat (the finish writes the output in any case)."""
        files = self._files
        if files is None:
            return
        try:
            sizes = files.sizes()
            if sizes == self._saved:
                return
            out, err = files.peek(self.config.output_limit * 1024)
        except OSError:
            return  # the attempt's files are being closed: it is ending
        try:
            self.store.save_output(job.id, job.lease, out, err)
        except StoreFatal:
            raise
        except QueuectlError as exc:
            self.log.warning("output_save_failed", job_id=job.id, error=str(exc))
            return
        self._saved = sizes

    def _still_held(self, beat: Beat, job: Job | None, started: bool) -> bool:
        """Act on a heartbeat's answer: re-register if the monitor took this worker
        for dead (it was stopped or starved), keeping `job` if its lease held; False
        if `job`'s lease is lost."""
        ids = {"job_id": job.id} if job is not None else {}
        if not beat.registered:
            self.log.warning("worker_reregistered", **ids)
            self.register(job.id if job is not None and beat.held else None)
        if job is not None and not beat.held:
            more = {} if started else {"started": False}
            if self._was_cancelled(job):
                self._cancelled = (job.id, job.lease)
                self.log.info("cancel_seen", **ids, lease=job.lease, **more)
            else:
                self.log.warning("lease_lost", **ids, lease=job.lease, **more)
            return False
        return True

    def _was_cancelled(self, job: Job) -> bool:
        """Whether this attempt's lease was lost to a cancel rather than a recovery:
        CANCELLED is terminal and only a claim changes the lease, so the job
        cancelled at this lease means this attempt was cancelled.  One read, only
        once a lease is lost."""
        try:
            now = self.store.get(job.id)
        except StoreFatal:
            raise
        except QueuectlError:
            return False
        return now is not None and now.state is JobState.CANCELLED and now.lease == job.lease

    def _stop_checks(self) -> str | None:
        """While a job runs: why to kill it for a stop, if so (no I/O)."""
        self._watch_parent()
        if self.signals.cold:
            return "stopped: the worker got a second stop signal"
        if self.signals.warm:
            mono = time.monotonic()
            if self._stop_requested_at is None:
                self._stop_requested_at = mono
            elif mono - self._stop_requested_at > self.config.stop_timeout:
                return (
                    f"stopped: still running {self.config.stop_timeout:g}s after the worker was told to stop"
                )
        return None

    def _cover_for_monitor(self, *, startup: bool = False) -> None:
        """If no monitor has completed a pass for two intervals, run one here (under
        the same lease, so never two at once); at startup, one in any case."""
        if self._recoverer is None:
            return
        try:
            absent = monitor_absent(self.store.lease_info(LEASE), self.store.now(), self.config)
            if not (absent or startup):
                if self._covering:
                    self.log.info("monitor_back", note="a monitor is running passes again")
                    self._covering = False
                return
            done = self._recoverer.guarded_pass("worker")
        except StoreFatal:
            raise
        except QueuectlError as exc:
            self.log.warning("fallback_pass_failed", error=str(exc))
            return
        except Exception:  # recovery trouble must not stop this worker's own job
            self.log.exception("fallback_pass_error")
            return
        if done is not None and (not self._covering or done):
            self.log.info("fallback_pass", recovered=len(done), startup=startup)
        self._covering = absent and done is not None

    def _watch_parent(self) -> None:
        """Once the supervisor is gone (a warm stop): say so, once."""
        if self._parent is not None and self._parent.gone and not self.signals.parent_gone:
            self.log.warning("supervisor_gone", parent=self._parent.pid)
            self.signals.request()

    # --- the loop ------------------------------------------------------------------

    def run(self, *, burst: bool = False) -> int:
        """Work until told to stop (or, in burst mode, until nothing is left)."""
        self.register()
        cpu = self.pin()
        self.log.info("worker_started", pid=os.getpid(), host=procs.hostname(), burst=burst, cpu=cpu)
        if self._cover is not None:  # jobs left by a crash before any monitor ran
            self._cover.done(time.monotonic())
            self._cover_for_monitor(startup=True)
        try:
            # A job already claimed (with the last finish) is run even after a warm
            # stop: it is this worker's current job.
            while not self.signals.warm or self._next is not None:
                self._watch_parent()
                try:
                    # Between jobs too: a worker draining jobs shorter than a tick
                    # never idles, and would otherwise never heartbeat.
                    self._between_jobs.run_due()
                    if self.run_once(chain=True) is not None:
                        continue
                    if burst and self._drained():
                        break
                    # Inside the try too: an outage between two claims must not end us.
                    timeout = self._idle_timeout()
                except StoreFatal:
                    raise
                except QueuectlError as exc:  # a busy or lost database: wait, go on
                    self.log.warning("worker_store_error", error=str(exc))
                    timeout = self.config.poll_interval
                except Exception:  # one bad job must not kill the worker
                    self.log.exception("worker_error")
                    timeout = self.config.poll_interval
                if timeout > 0:
                    self.store.wait_for_change(timeout, self.signals.fd)
                    self.signals.drain()
        except StoreFatal as exc:
            # Deleted, replaced or damaged: retrying cannot help, and a restart
            # (supervisord's) opens whatever file the path names now.
            self.log.error("database_unusable", error=str(exc))
            raise
        finally:
            self._watch_parent()
            self.unregister()
            self.log.info("worker_stopped", jobs=self.jobs_done, signals=self.signals.count)
        return 0

    def _drained(self) -> bool:
        return not self.store.processing()

    def _idle_timeout(self) -> float:
        """Until the next due job or duty, at most poll_interval (new work wakes the
        wait sooner).  Only the served queues' jobs count, and only while their queue
        can be claimed from (next_due): a paused or full queue's due jobs would make
        the wait zero and the worker spin."""
        timeout = self.config.poll_interval
        due = self.store.next_due(self.serves)
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.store.now()))
        mono = time.monotonic()
        duty = self._between_jobs.next_due(mono)
        if duty is not None:
            timeout = min(timeout, duty - mono)
        return max(0.0, timeout)
