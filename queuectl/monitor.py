"""The monitor: one recovery pass at a time, idempotent, safe with two at once.

A pass, in order:
  1. read the PROCESSING jobs, then the workers (in that order: a worker registers
     before it claims, so every job read has its worker in the second read unless
     that worker is really gone);
  2. stale workers: no heartbeat for heartbeat_timeout, or, on this host, a dead pid
     (checked with the process start time, so a reused pid does not fool it);
  3. each job of a stale or missing worker (heartbeat_lost) and each job past its
     timeout + kill_grace + timeout_grace (timeout): kill its processes on this host
     first, then compare-and-set it to FAILED/DEAD on its lease; a lost CAS means
     someone else (its worker, another monitor) got there first;
  4. delete stale worker rows (CAS on their heartbeat);
  5. kill job processes on this host whose attempt is over (orphan_killed);
  6. write the recovery log for what the CAS calls actually changed.
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

import structlog

from queuectl import failpoints, procs
from queuectl.config import Config
from queuectl.errors import Conflict, JobNotFound, QueuectlError
from queuectl.logs import json_logger
from queuectl.models import MONITOR_LEASE, Job, JobState, LeaseInfo, Reason, WorkerInfo, decide, iso
from queuectl.signals import StopSignals
from queuectl.store import Store


@dataclass
class Recovery:
    """One recovered job, removed worker or killed orphan: one line of the log."""

    event: str
    reason: str
    job_id: str | None = None
    attempt: int | None = None
    state_before: str | None = None
    state_after: str | None = None
    next_run_at: str | None = None
    worker_id: str | None = None
    host: str | None = None
    pid: int | None = None
    command: str | None = None
    killed_pids: list[int] = field(default_factory=list)


class Monitor:
    def __init__(
        self,
        store: Store,
        *,
        queue: str,
        logs_dir: Path,
        log: Any = None,
        signals: StopSignals | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.logs_dir = logs_dir
        self.log = log or json_logger(component="monitor", pid=os.getpid())
        self.signals = signals or StopSignals()
        self.host = procs.hostname()

    # --- the lease: one pass at a time, anywhere ------------------------------------

    def guarded_pass(self, kind: str = "monitor", now: float | None = None) -> list[Recovery] | None:
        """Run one pass under the monitor lease; None if another process holds it."""
        cfg = Config.from_stored(self.store.config_items())
        ttl = lease_ttl(cfg)
        if not self.store.acquire_lease(LEASE, self.holder(kind), kind, ttl, now):
            return None
        passed = False
        started = time.time()
        try:
            done = self.run_once(now)
            passed = True
        finally:
            ended = time.time()  # before the release: the next pass may start right after it
            with contextlib.suppress(QueuectlError):
                self.store.release_lease(LEASE, self.holder(kind), passed, now)
        # Wall-clock bounds of the pass, so an audit can check no two ever overlapped.
        self.log.info("recovery_pass", kind=kind, started=started, ended=ended, recovered=len(done))
        return done

    def holder(self, kind: str) -> str:
        return f"{kind}:{self.host}:{os.getpid()}"

    # --- one pass ------------------------------------------------------------------

    def run_once(self, now: float | None = None, *, dry_run: bool = False) -> list[Recovery]:
        cfg = Config.from_stored(self.store.config_items())
        t = self.store.now() if now is None else now
        jobs = self.store.processing()
        workers = {w.id: w for w in self.store.workers()}
        stale = {wid: w for wid, w in workers.items() if self._is_stale(w, t, cfg)}
        done: list[Recovery] = []
        local = procs.job_processes(self.queue)
        for job in jobs:
            reason = self._reason(job, workers, stale, t, cfg)
            if reason is None:
                continue
            rec = self._recover(job, reason, workers.get(job.worker_id or ""), local, t, cfg, dry_run)
            if rec is not None:
                done.append(rec)
        for w in stale.values():
            if dry_run or self.store.remove_worker(w.id, w.heartbeat_at):
                done.append(
                    Recovery(
                        event="worker_removed",
                        reason=Reason.HEARTBEAT_LOST.value,
                        worker_id=w.id,
                        host=w.host,
                        pid=w.pid,
                    )
                )
        done.extend(self._sweep_orphans(dry_run))
        if not dry_run:
            # Job recoveries are in the outbox already (written with their CAS);
            # removed workers and killed orphans are not job history: logged directly.
            self.flush_audit([r for r in done if r.event != "job_recovered"])
            # Every pass, so `queuectl status` has few events to add to its snapshot.
            # Only a saving: if it fails, the pass (its recoveries committed) stands.
            try:
                self.store.fold_counts()
            except QueuectlError as exc:
                self.log.warning("counts_fold_failed", error=str(exc))
        return done

    def _is_stale(self, w: WorkerInfo, now: float, cfg: Config) -> bool:
        if w.heartbeat_at < now - cfg.heartbeat_timeout:
            return True
        return w.host == self.host and not procs.is_alive(w.pid, w.proc_start)

    @staticmethod
    def _reason(
        job: Job,
        workers: dict[str, WorkerInfo],
        stale: dict[str, WorkerInfo],
        now: float,
        cfg: Config,
    ) -> Reason | None:
        if job.worker_id in stale or job.worker_id not in workers:
            return Reason.HEARTBEAT_LOST
        w = workers[job.worker_id]
        started = job.started_at if job.started_at is not None else job.updated_at
        if w.heartbeat_at > started and w.holding != job.id:
            # Its worker heartbeated after the claim without this job: the claim
            # committed but never reached it (a connection cut mid-reply).
            return Reason.HEARTBEAT_LOST
        if now > started + job.timeout + cfg.kill_grace + cfg.timeout_grace:
            return Reason.TIMEOUT
        return None

    def _recover(
        self,
        job: Job,
        reason: Reason,
        worker: WorkerInfo | None,
        local: list[procs.JobProcess],
        now: float,
        cfg: Config,
        dry_run: bool,
    ) -> Recovery | None:
        move = decide(
            ok=False,
            attempts=job.attempts,
            max_retries=job.max_retries,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
            now=now,
        )
        rec = Recovery(
            event="job_recovered",
            reason=reason.value,
            job_id=job.id,
            attempt=job.attempts,
            state_before=JobState.PROCESSING.value,
            state_after=move.state.value,
            next_run_at=iso(move.next_run_at),
            worker_id=job.worker_id,
            host=worker.host if worker else None,
            pid=worker.pid if worker else None,
            command=job.command,
        )
        if dry_run:
            return rec
        # Kill before the CAS: once the job is FAILED it may be claimed again, and
        # the old attempt must not still be running then.
        mine = [p for p in local if p.job_id == job.id and p.lease in (job.lease, None)]
        rec.killed_pids = procs.kill_job_processes(mine)
        error = _ERRORS[reason].format(timeout=job.timeout, worker=job.worker_id)
        audit = json.dumps(self.audit_record(rec))
        # PROCESSING -> FAILED / DEAD (recovery), its audit record in the same transaction
        if not self.store.recover(
            job.id, job.lease, move.state, move.next_run_at, reason.value, error, now, audit=audit
        ):
            return None
        failpoints.hit("monitor_after_cas")
        self.log.warning("job_recovered", **_compact(rec))
        return rec

    def _sweep_orphans(self, dry_run: bool) -> list[Recovery]:
        """Kill job processes on this host whose attempt is over.  Each candidate is
        checked against the store just before the kill, so an attempt claimed after
        this pass began is never mistaken for an orphan."""
        out = []
        for p in procs.job_processes(self.queue):
            job = self.store.get(p.job_id)
            if job is not None and job.state is JobState.PROCESSING and job.lease == p.lease:
                continue
            rec = Recovery(
                event="orphan_killed",
                reason=Reason.ORPHAN_KILLED.value,
                job_id=p.job_id,
                attempt=job.attempts if job else None,
                state_before=job.state.value if job else None,
                state_after=job.state.value if job else None,
                worker_id=job.worker_id if job else None,
                host=self.host,
                pid=p.pid,
                command=job.command if job else None,
            )
            if not dry_run:
                rec.killed_pids = procs.kill_job_processes([p])
                if not rec.killed_pids:
                    continue
                self.log.warning("orphan_killed", **_compact(rec))
            out.append(rec)
        return out

    def recover_job(self, job_id: str, now: float | None = None) -> Recovery:
        """An operator's manual recovery of one PROCESSING job (reason `manual`)."""
        cfg = Config.from_stored(self.store.config_items())
        t = self.store.now() if now is None else now
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.state is not JobState.PROCESSING:
            raise Conflict(f"job {job_id!r} is {job.state.value}, not processing: nothing to recover")
        workers = {w.id: w for w in self.store.workers()}
        local = procs.job_processes(self.queue)
        rec = self._recover(job, Reason.MANUAL, workers.get(job.worker_id or ""), local, t, cfg, False)
        if rec is None:
            raise Conflict(f"job {job_id!r} changed while it was being recovered; try again")
        self.flush_audit([])
        return rec

    # --- the audit log -------------------------------------------------------------

    def audit_record(self, rec: Recovery) -> dict[str, Any]:
        """The recovery log's line for `rec`, stamped now (the time of the recovery)."""
        fields = asdict(rec)
        return {"time": iso(time.time()), **fields, "recovered_by": f"{self.host}:{os.getpid()}"}

    def flush_audit(self, direct: list[Recovery]) -> Path | None:
        """Write every pending audit record (this pass's recoveries, and any a killed
        monitor left in the outbox) and `direct` ones to a new recovery log, then
        drop them from the outbox.  A crash between the two writes them again on the
        next pass: the same record (same `time`, job and attempt) twice, never none."""
        pending = self.store.audit_pending()
        records = [json.loads(text) for _, text in pending] + [self.audit_record(r) for r in direct]
        if not records:
            return None
        path = self.write_log(records)
        self.store.audit_clear([i for i, _ in pending])
        return path

    def write_log(self, records: list[dict[str, Any]]) -> Path:
        """logs/recovered_jobs_<UTC timestamp>.json: JSON Lines through structlog's
        renderer, owner-only, created with O_EXCL after the database commit."""
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.logs_dir / f"recovered_jobs_{stamp}.json"
        n = 0
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                n += 1
                path = self.logs_dir / f"recovered_jobs_{stamp}-{n}.json"
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
        return path

    # --- the loop ------------------------------------------------------------------

    def run(self) -> int:
        self.log.info("monitor_started", host=self.host)
        while not self.signals.warm:
            interval = 5.0
            try:
                interval = Config.from_stored(self.store.config_items()).monitor_interval
                if self.guarded_pass("monitor") is None:
                    # A worker's fallback pass holds the lease right now: try again soon.
                    interval = min(interval, 0.2)
            except QueuectlError as exc:
                self.log.warning("monitor_store_error", error=str(exc))
            except Exception:
                self.log.exception("monitor_error")
            self._sleep(interval)
        self.log.info("monitor_stopped")
        return 0

    def _sleep(self, seconds: float) -> None:
        import select

        deadline = time.monotonic() + seconds
        while not self.signals.warm:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError):
                select.select([self.signals.fd], [], [], left)
            self.signals.drain()


#: The name of the lease every recovery pass runs under.
LEASE = MONITOR_LEASE


def lease_ttl(cfg: Config) -> float:
    """How long a pass may hold the lease: far longer than a pass takes, short enough
    that a monitor killed mid-pass delays the next one by little."""
    return max(3 * cfg.monitor_interval, 5.0)


def monitor_absent(info: LeaseInfo | None, now: float, cfg: Config) -> bool:
    """No monitor process has completed a pass for two intervals."""
    last = info.last_monitor_pass_at if info else None
    return last is None or now - last > 2 * cfg.monitor_interval


_ERRORS = {
    Reason.HEARTBEAT_LOST: "recovered: worker {worker} stopped heartbeating (heartbeat_lost)",
    Reason.TIMEOUT: "recovered: still processing past its {timeout:g}s timeout (timeout)",
    Reason.MANUAL: "recovered by an operator (manual)",
    Reason.ORPHAN_KILLED: "orphan process killed",
}


def _compact(rec: Recovery) -> dict[str, Any]:
    return {k: v for k, v in asdict(rec).items() if v not in (None, []) and k != "event"}
