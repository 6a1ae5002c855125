"""One recovery pass: idempotent, safe with two at once, run under the pass lease
by the monitor's loop (monitor.py) and by a worker covering for an absent monitor.

A pass, in order:
  1. take the pass lease (the store's time read under the lock that takes it); if
     no pass ran for heartbeat_timeout, or the clock jumped, everyone was stalled
     (a held lock, a suspended machine, a clock step): silence is not judged until
     workers had one more heartbeat interval to speak;
  2. read the PROCESSING jobs, then the workers (in that order: a worker registers
     before it claims and keeps its row while it holds a claim, so a job whose
     worker is missing from the second read was never received by it);
  3. stale workers: on this host a dead pid (worker_died; checked with the process
     start time, so a reused pid does not fool it), anywhere no heartbeat for
     heartbeat_timeout (heartbeat_lost);
  4. each job of a stale worker, each job its worker never received (the attempt is
     given back: its command never started) and each job past its timeout +
     kill_grace + timeout_grace (timeout): renew the lease (so a monitor cut off from
     the store kills nothing), kill its processes on this host, then one guarded
     statement recovers it: its lease, the pass lease, and for a silence verdict the
     worker's heartbeat unchanged since it was read.  A lost guard means someone
     else (its worker, another monitor) got there first;
  5. delete stale worker rows (guarded on their heartbeat, and on holding no job);
  6. kill job processes on this host whose attempt is over (orphan_killed);
  7. retention: delete a batch of the finished jobs past their state's retention
     setting (retention.py; jobs_purged); fire each due schedule once
     (schedules.py; schedule_fired in the process's log);
  8. write the recovery log for what the guarded statements actually changed, and
     for every process killed.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from queuectl import failpoints, procs
from queuectl.config import Config
from queuectl.errors import Conflict, JobNotFound, QueuectlError, StoreFatal
from queuectl.logs import json_logger
from queuectl.models import (
    MONITOR_LEASE,
    Job,
    JobState,
    LeaseGrant,
    LeaseInfo,
    Reason,
    RecoveryGuard,
    Transition,
    WorkerInfo,
    decide,
    iso,
)
from queuectl.recovery_log import Recovery, RecoveryLog, compact
from queuectl.store import Store
from queuectl.store.outcome import recovered

#: Seconds by which the store's clock may drift from this process's monotonic clock
#: between two passes before it counts as a step.
CLOCK_TOLERANCE = 1.0

#: The name of the lease every recovery pass runs under.
LEASE = MONITOR_LEASE


@dataclass(frozen=True)
class Verdict:
    """Why a worker is stale, and what shows it."""

    reason: Reason
    evidence: dict[str, Any]


class Recoverer:
    """Runs recovery passes (and an operator's recovery of one job) for the job
    processes of `queue` on this host, writing recovery logs to `logs_dir`."""

    def __init__(self, store: Store, *, queue: str, logs_dir: Path, log: Any = None) -> None:
        self.store = store
        self.queue = queue
        self.log = log or json_logger(component="monitor", pid=os.getpid())
        self.host = procs.hostname()
        #: (store time, monotonic time) at this process's last pass: a clock step
        #: is the difference of their advances.
        self._last_clock: tuple[float, float] | None = None
        self.audit = RecoveryLog(store, logs_dir, self.log)

    @property
    def log_error(self) -> str | None:
        """Why the last recovery log could not be written (None: it was, or none
        was due); its records wait for the next write."""
        return self.audit.error

    # --- the lease: one pass at a time, anywhere ------------------------------------

    def guarded_pass(
        self, kind: str = "monitor", now: float | None = None, *, wait: bool = False
    ) -> list[Recovery] | None:
        """Run one pass under the pass lease; None if another process holds it (with
        `wait`, as an operator's `recover` does: wait for that pass to end)."""
        cfg = Config.from_stored(self.store.config_items())
        holder = self.holder(kind)
        if wait:
            grant: LeaseGrant | None = self._wait_for_lease(holder, cfg, now)
        else:
            grant = self.store.acquire_lease(LEASE, holder, kind, lease_ttl(cfg), now)
        if grant is None:
            return None
        passed = False
        started = time.time()
        try:
            judge = self._judges_silence(grant, holder, cfg)
            done = self.run_once(grant.at, holder=holder, judge_silence=judge)
            passed = True
        finally:
            ended = time.time()  # before the release: the next pass may start right after it
            with contextlib.suppress(QueuectlError):
                self.store.release_lease(LEASE, holder, passed, now)
        # Wall-clock bounds of the pass, so an audit can check no two ever overlapped.
        self.log.info("recovery_pass", kind=kind, started=started, ended=ended, recovered=len(done))
        return done

    def holder(self, kind: str) -> str:
        """`role:host:pid`: the one form of `recovered_by` everywhere."""
        return f"{kind}:{self.host}:{os.getpid()}"

    def _judges_silence(self, grant: LeaseGrant, holder: str, cfg: Config) -> bool:
        """False while workers are owed one more heartbeat interval after a stall
        that stopped everyone (this judge included): silence is not death then."""
        resumed = grant.resumed_at
        gap = None if grant.previous is None else grant.at - grant.previous
        # A gap of one monitor interval is the normal rhythm (however long it is set).
        stalled = gap is not None and gap > cfg.heartbeat_timeout + cfg.monitor_interval
        mono = time.monotonic()
        if self._last_clock is not None:
            step = (grant.at - self._last_clock[0]) - (mono - self._last_clock[1])
            if step < -CLOCK_TOLERANCE:
                # Due times are the store's clock: what was due before the step would
                # wait for its size; it is made due now instead.
                kept = self.store.keep_due(self._last_clock[0], grant.at)
                self.log.warning("clock_stepped_back", step_s=round(step, 3), jobs_kept_due=kept)
            elif step > CLOCK_TOLERANCE:
                self.log.warning("clock_jumped_forward", step_s=round(step, 3))
                stalled = True
        self._last_clock = (grant.at, mono)
        if stalled:
            self.log.warning("stall_detected", gap_s=None if gap is None else round(gap, 3))
            self.store.mark_resumed(LEASE, holder, grant.at)
            resumed = grant.at
        return resumed is None or grant.at >= resumed + cfg.heartbeat_interval

    # --- one pass ------------------------------------------------------------------

    def run_once(
        self,
        now: float | None = None,
        *,
        dry_run: bool = False,
        holder: str | None = None,
        judge_silence: bool = True,
    ) -> list[Recovery]:
        """One pass at `now` (the store's clock by default).  With `holder`, every
        recovery commits only while that holder holds the pass lease."""
        cfg = Config.from_stored(self.store.config_items())
        t = self.store.now() if now is None else now
        by = holder or self.holder("cli")
        jobs = self.store.processing()
        workers = {w.id: w for w in self.store.workers()}
        stale = {}
        for w in workers.values():
            verdict = self._judge(w, t, cfg, judge_silence)
            if verdict is not None:
                stale[w.id] = verdict
        done: list[Recovery] = []
        local = procs.job_processes(self.queue)
        for job in jobs:
            found = self._reason(job, workers, stale, t, cfg, judge_silence)
            if found is None:
                continue
            verdict, guard = found
            rec = self._recover(
                job, verdict, guard, workers.get(job.worker_id or ""), local, t, cfg, dry_run, by, holder
            )
            if rec is not None:
                done.append(rec)
        for wid, verdict in stale.items():
            w = workers[wid]
            if dry_run or self.store.remove_worker(w.id, w.heartbeat_at):
                done.append(
                    Recovery(
                        event="worker_removed",
                        reason=verdict.reason.value,
                        worker_id=w.id,
                        host=w.host,
                        pid=w.pid,
                        evidence=verdict.evidence,
                        recovered_by=by,
                    )
                )
        done.extend(self._sweep_orphans(dry_run, by))
        done.extend(self._retention(t, cfg, dry_run, by))
        if not dry_run:
            self._fire_schedules(t)
            # Job recoveries are in the outbox already (written with their CAS);
            # the rest is not job history: logged directly.
            self.audit.flush([r for r in done if r.event != "job_recovered"])
            self._fold_counts()
        return done

    def _retention(self, now: float, cfg: Config, dry_run: bool, by: str) -> list[Recovery]:
        from queuectl import retention

        return [
            Recovery(
                event="jobs_purged",
                reason="retention",
                job_state=state.value,
                evidence={
                    "deleted": n,
                    "before": iso(cutoff),
                    "retention_s": round(now - cutoff, 3),
                },
                recovered_by=by,
            )
            for state, cutoff, n in retention.apply(self.store, cfg, now, dry_run=dry_run)
        ]

    def _fire_schedules(self, now: float) -> None:
        from queuectl import schedules

        for name, job_id in schedules.fire_due(self.store, now):
            self.log.info("schedule_fired", schedule=name, job_id=job_id)

    def _fold_counts(self) -> None:
        """Every pass, so `queuectl status` has few events to add to its snapshot.
        Only a saving: if it fails, the pass (its recoveries committed) stands; but a
        database that can no longer be used fails the pass."""
        try:
            self.store.fold_counts()
        except StoreFatal:
            raise
        except QueuectlError as exc:
            self.log.warning("counts_fold_failed", error=str(exc))

    def _judge(self, w: WorkerInfo, now: float, cfg: Config, judge_silence: bool) -> Verdict | None:
        if w.host == self.host and not procs.is_alive(w.pid, w.proc_start):
            return Verdict(Reason.WORKER_DIED, {"pid": w.pid, "proc_start": w.proc_start})
        age = now - w.heartbeat_at
        if judge_silence and age > cfg.heartbeat_timeout:
            return Verdict(Reason.HEARTBEAT_LOST, {"heartbeat_age_s": round(age, 3)})
        return None

    @staticmethod
    def _reason(
        job: Job,
        workers: dict[str, WorkerInfo],
        stale: dict[str, Verdict],
        now: float,
        cfg: Config,
        judge: bool = True,
    ) -> tuple[Verdict, RecoveryGuard] | None:
        wid = job.worker_id or ""
        started = job.started_at if job.started_at is not None else job.updated_at
        if wid not in workers:
            # A worker keeps its row while it holds a claim: this one never reached
            # it (it had been removed, or it exited) and never started the command.
            never = Verdict(Reason.HEARTBEAT_LOST, {"worker_row": "missing"})
            return never, RecoveryGuard(worker_id=wid, heartbeat_seen=None, give_back=True)
        w = workers[wid]
        if w.heartbeat_at > started and w.holding != job.id:
            # Its worker heartbeated after the claim without this job: the claim
            # committed but never reached it (a connection cut mid-reply).  Checked
            # before the worker's own verdict: dead or silent since, it still never
            # started this command.
            never = Verdict(Reason.HEARTBEAT_LOST, {"heartbeat_without_job_at": iso(w.heartbeat_at)})
            return never, RecoveryGuard(give_back=True)
        if wid in stale:
            return stale[wid], RecoveryGuard(worker_id=wid, heartbeat_seen=w.heartbeat_at)
        runtime = now - started
        # After a stall or a clock step the store's clock is no measure of a runtime.
        if judge and runtime > job.timeout + cfg.kill_grace + cfg.timeout_grace:
            evidence = {"runtime_s": round(runtime, 3), "timeout": job.timeout}
            return Verdict(Reason.TIMEOUT, evidence), RecoveryGuard()
        return None

    def _recover(
        self,
        job: Job,
        verdict: Verdict,
        guard: RecoveryGuard,
        worker: WorkerInfo | None,
        local: list[procs.JobProcess],
        now: float,
        cfg: Config,
        dry_run: bool,
        by: str,
        holder: str | None,
    ) -> Recovery | None:
        reason = verdict.reason
        move = decide(
            ok=False,
            attempts=job.attempts,
            max_retries=job.max_retries,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
            now=now,
        )
        state, next_run_at = move.state, move.next_run_at
        if guard.give_back:
            state, next_run_at = JobState.PENDING, now
        if worker is not None and next_run_at is not None and reason in (Reason.TIMEOUT, Reason.MANUAL):
            # Its worker may still run the job on another host, cut off from the store:
            # it kills the job by its own deadline, before heartbeat_timeout of silence.
            next_run_at = max(next_run_at, worker.heartbeat_at + cfg.heartbeat_timeout)
        mine = [p for p in local if p.job_id == job.id and p.lease in (job.lease, None)]
        rec = Recovery(
            event="job_recovered",
            reason=reason.value,
            job_id=job.id,
            attempt=job.attempts,
            lease=job.lease,
            state_before=JobState.PROCESSING.value,
            state_after=state.value,
            next_run_at=iso(next_run_at),
            attempt_given_back=guard.give_back,
            worker_id=job.worker_id,
            host=worker.host if worker else None,
            pid=worker.pid if worker else None,
            command=job.command,
            killed_pids=[p.pid for p in mine],
            evidence=verdict.evidence,
            recovered_by=by,
        )
        if dry_run:
            return rec
        if mine and holder is not None and not self._renew(holder, cfg):
            return None  # cut off from the store, or the lease is gone: kill nothing
        # Kill before the CAS: once the job is FAILED it may be claimed again, and
        # the old attempt must not still be running then.
        rec.killed_pids = procs.kill_job_processes(mine)
        error = _error(verdict, job, by, guard.give_back)
        audit = json.dumps(RecoveryLog.record(rec))
        held = RecoveryGuard(
            holder=holder,
            worker_id=guard.worker_id,
            heartbeat_seen=guard.heartbeat_seen,
            give_back=guard.give_back,
        )
        # Its audit record in the same transaction.
        if not end_attempt(
            self.store, job, Transition(state, next_run_at), reason.value, error, now, audit=audit, guard=held
        ):
            if rec.killed_pids:
                # The job's own worker recorded it first; what was killed is still told.
                self._log_lost_race(rec)
            return None
        failpoints.hit("monitor_after_cas")
        self.log.warning("job_recovered", **compact(rec))
        return rec

    def _renew(self, holder: str, cfg: Config) -> bool:
        kind = holder.split(":", 1)[0]
        try:
            return self.store.acquire_lease(LEASE, holder, kind, lease_ttl(cfg)) is not None
        except StoreFatal:
            raise
        except QueuectlError as exc:
            self.log.warning("recovery_abandoned", error=str(exc))
            return False

    def _log_lost_race(self, rec: Recovery) -> None:
        lost = replace(
            rec,
            event="processes_killed",
            host=self.host,
            evidence={**rec.evidence, "note": "the job's worker recorded the attempt first"},
        )
        self.log.warning("processes_killed", **compact(lost))
        with contextlib.suppress(OSError):
            self.audit.write([RecoveryLog.record(lost)])

    def _sweep_orphans(self, dry_run: bool, by: str) -> list[Recovery]:
        """Kill job processes on this host whose attempt is over.  Each candidate is
        checked against the store just before the kill, so an attempt claimed after
        this pass began is never mistaken for an orphan.  The record names the
        attempt the processes belonged to, not the job's current one."""
        out = []
        for p in procs.job_processes(self.queue):
            job = self.store.get(p.job_id)
            if job is not None and job.state is JobState.PROCESSING and job.lease == p.lease:
                continue
            rec = Recovery(
                event="orphan_killed",
                reason=Reason.ORPHAN_KILLED.value,
                job_id=p.job_id,
                attempt=p.attempt,
                lease=p.lease,
                job_state=job.state.value if job else None,
                host=self.host,
                pid=p.pid,
                command=job.command if job else None,
                killed_pids=[p.pid],
                recovered_by=by,
            )
            if not dry_run:
                rec.killed_pids = procs.kill_job_processes([p])
                if not rec.killed_pids:
                    continue
                self.log.warning("orphan_killed", **compact(rec))
            out.append(rec)
        return out

    def recover_job(self, job_id: str, now: float | None = None) -> Recovery:
        """An operator's manual recovery of one PROCESSING job (reason `manual`),
        under the pass lease (so never in the middle of a pass)."""
        cfg = Config.from_stored(self.store.config_items())
        holder = self.holder("cli")
        grant = self._wait_for_lease(holder, cfg, now)
        try:
            t = grant.at
            job = self.store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state is not JobState.PROCESSING:
                raise Conflict(f"job {job_id!r} is {job.state.value}, not processing: nothing to recover")
            workers = {w.id: w for w in self.store.workers()}
            local = procs.job_processes(self.queue)
            verdict = Verdict(Reason.MANUAL, {"user": _user()})
            worker = workers.get(job.worker_id or "")
            rec = self._recover(job, verdict, RecoveryGuard(), worker, local, t, cfg, False, holder, holder)
            if rec is None:
                raise Conflict(f"job {job_id!r} changed while it was being recovered; try again")
            self.audit.flush([])
            return rec
        finally:
            with contextlib.suppress(QueuectlError):
                self.store.release_lease(LEASE, holder, False, now)

    def _wait_for_lease(self, holder: str, cfg: Config, now: float | None) -> LeaseGrant:
        """The pass lease for an operator's action; waits for a running pass to end."""
        deadline = time.monotonic() + lease_ttl(cfg) + 1
        while True:
            grant = self.store.acquire_lease(LEASE, holder, holder.split(":", 1)[0], lease_ttl(cfg), now)
            if grant is not None:
                return grant
            if time.monotonic() > deadline:
                raise Conflict("a recovery pass holds the lease for too long; try again")
            time.sleep(0.05)


def end_attempt(
    store: Store,
    job: Job,
    move: Transition,
    reason: str,
    error: str,
    now: float | None = None,
    *,
    audit: str | None = None,
    guard: RecoveryGuard,
) -> bool:
    """End `job`'s attempt on its worker's behalf, guarded by its lease and `guard`:
    a recovery's verdict, or a worker giving back a job it never started.  False:
    the guard did not hold, nothing changed."""
    # PROCESSING -> FAILED / DEAD / PENDING (recovery, or given back unstarted)
    outcome = recovered(move.state, move.next_run_at, reason, error, audit=audit, guard=guard)
    return store.recover(job.id, job.lease, outcome, now)


def lease_ttl(cfg: Config) -> float:
    """How long a pass may hold the lease: far longer than a pass takes, short enough
    that a monitor killed mid-pass delays the next one by little."""
    return max(3 * cfg.monitor_interval, 5.0)


def monitor_absent(info: LeaseInfo | None, now: float, cfg: Config) -> bool:
    """No monitor process has completed a pass for two intervals."""
    last = info.last_monitor_pass_at if info else None
    return last is None or now - last > 2 * cfg.monitor_interval


def _error(verdict: Verdict, job: Job, by: str, given_back: bool) -> str:
    """The job's `error` (and its history's) for a recovery: who, why, the reason."""
    ev, worker = verdict.evidence, job.worker_id
    reason = verdict.reason
    if given_back:
        why = f"the claim never reached worker {worker}; attempt given back"
    elif reason is Reason.WORKER_DIED:
        why = f"worker {worker} died (pid {ev.get('pid')})"
    elif reason is Reason.HEARTBEAT_LOST:
        why = f"worker {worker} silent for {ev.get('heartbeat_age_s', 0):.1f}s"
    elif reason is Reason.TIMEOUT:
        why = f"still processing {ev.get('runtime_s', 0):.1f}s, past its {job.timeout:g}s timeout"
    else:
        why = f"on request of {ev.get('user')}"
    return f"recovered by {by}: {why} ({reason.value})"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
