"""The library API: what the CLI (and any Python program) does with a queue.

Validates every input before it reaches the store, so a rejected call changes
nothing.  Sees only the Store protocol.
"""

from __future__ import annotations

import builtins

from queuectl.config import Config, Paths, check_combination
from queuectl.errors import Conflict, InvalidInput, JobNotFound
from queuectl.models import MONITOR_LEASE, Event, Job, JobState, NewJob, WorkerInfo, iso
from queuectl.rules import check_jobs, check_purge, open_home, skip_held
from queuectl.settings import LIMIT, SETTINGS, normalize_key, num_text
from queuectl.store import Store, open_store

# Not typing.TYPE_CHECKING, which would import typing at every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any


class Queue:
    # Annotations after `def list` below say `builtins.list`: inside the class body
    # the bare name means that method.

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, paths: Paths) -> Queue:
        open_home(str(paths.home), paths.db_url)
        return cls(open_store(paths.db_url))

    def close(self) -> None:
        self.store.close()

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

    def list(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        _check_limit(limit)
        return self.store.list_jobs(parse_state(state) if state else None, limit)

    def status(self) -> dict[str, Any]:
        """Counts per state, the total, live workers, and the last recovery pass."""
        counts = self.store.counts()
        out: dict[str, Any] = {s.value: counts.get(s.value, 0) for s in JobState}
        out["total"] = sum(counts.values())
        out["workers"] = len(self.live_workers())
        out["recovery"] = self.recovery_status()
        return out

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

    def workers(self) -> builtins.list[WorkerInfo]:
        return self.store.workers()

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
        return self.store.dlq_retry(ids)

    def dlq_retry_all(self) -> builtins.list[str]:
        return self.store.dlq_retry(None)

    def purge(self, states: builtins.list[str], older_than: float | None = None) -> int:
        parsed = [parse_state(s) for s in states]
        check_purge(parsed)
        before = None if older_than is None else self.store.now() - older_than
        return self.store.purge(parsed, before)

    def purgeable(self, states: builtins.list[str], older_than: float | None = None) -> int:
        """How many jobs purge() with these arguments would delete now."""
        parsed = [parse_state(s) for s in states]
        before = None if older_than is None else self.store.now() - older_than
        return self.store.purgeable(parsed, before)

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
        self.store.config_set({name: str(parsed)})
        return name, parsed


def parse_state(text: str) -> JobState:
    try:
        return JobState(text.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"unknown state {text!r} (known: {known})") from None


def _check_limit(limit: int | None) -> None:
    if limit is not None and not LIMIT.low <= limit <= LIMIT.high:
        raise InvalidInput(f"--limit must be between {num_text(LIMIT.low)} and {num_text(LIMIT.high)}")
