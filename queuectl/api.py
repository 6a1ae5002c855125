"""The library API: what the CLI (and any Python program) does with a queue.

Validates every input before it reaches the store, so a rejected call changes
nothing.  Sees only the Store protocol.
"""

from __future__ import annotations

import builtins
import math
import unicodedata
from pathlib import Path

from queuectl import config as cfg
from queuectl.config import Config, Paths
from queuectl.errors import Conflict, InvalidInput, JobNotFound, StoreError
from queuectl.models import MONITOR_LEASE, Event, Job, JobState, NewJob, WorkerInfo, iso, new_id, parse_time
from queuectl.store import Store, open_store

# Not typing.TYPE_CHECKING, which would import typing at every start (issue 6).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

#: Linux refuses a single exec argument longer than this (MAX_ARG_STRLEN).
MAX_COMMAND_BYTES = 131_072 - 1
MAX_ID_LENGTH = 200
PRIORITY_RANGE = (-1_000_000, 1_000_000)
MAX_DELAY = 10 * 365 * 86_400.0

JOB_FIELDS = {"id", "command", "max_retries", "priority", "run_at", "delay", "timeout"}
#: Fields of a job's JSON form that may be sent back at enqueue with their initial
#: values (so a job printed by `inspect --json` can be enqueued again elsewhere).
INITIAL_FIELDS = {"state", "attempts", "created_at", "updated_at"}


class Queue:
    # Annotations after `def list` below say `builtins.list`: inside the class body
    # the bare name means that method.

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, paths: Paths) -> Queue:
        if not paths.home.is_dir():
            raise InvalidInput(f"queuectl home {paths.home} does not exist or is not a folder")
        if paths.is_sqlite and Path(paths.db_url).parent == paths.db_dir:
            _make_private_dir(paths.db_dir)
        return cls(open_store(paths.db_url))

    def close(self) -> None:
        self.store.close()

    def config(self) -> Config:
        return Config.from_stored(self.store.config_items())

    # --- enqueue -------------------------------------------------------------------

    def enqueue(self, spec: Mapping[str, Any], now: float | None = None) -> str:
        """Validate one job and insert it as pending; returns its id."""
        t = self.store.now() if now is None else now
        return self.store.enqueue([build_job(spec, self.config(), t)], t)[0]

    def enqueue_many(self, specs: Iterable[Mapping[str, Any]], now: float | None = None) -> list[str]:
        """Validate every job, then insert them all in one transaction (or none)."""
        defaults = self.config()
        t = self.store.now() if now is None else now
        jobs = []
        for n, spec in enumerate(specs, 1):
            try:
                jobs.append(build_job(spec, defaults, t))
            except InvalidInput as exc:
                raise InvalidInput(f"job {n}: {exc}") from None
        if not jobs:
            raise InvalidInput("no jobs given")
        return self.store.enqueue(jobs, t)

    # --- reading -------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def inspect(self, job_id: str) -> tuple[Job, list[Event]]:
        job = self.get(job_id)
        return job, self.store.history(job_id)

    def list(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        if limit is not None and limit < 0:
            raise InvalidInput("--limit must be 0 or more")
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
        before = None if older_than is None else self.store.now() - older_than
        return self.store.purge(parsed, before)

    # --- config --------------------------------------------------------------------

    def config_get(self, key: str | None = None) -> dict[str, Any]:
        values = self.config().as_dict()
        if key is None:
            return values
        name = cfg.normalize_key(key)
        return {name: values[name]}

    def config_set(self, key: str, value: str) -> tuple[str, Any]:
        name = cfg.normalize_key(key)
        parsed = cfg.parse_value(name, value)
        merged = self.config().as_dict()
        merged[name] = parsed
        cfg.check_combination(merged)
        self.store.config_set({name: str(parsed)})
        return name, parsed


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:  # the home is fine; its database folder cannot be made
        raise StoreError(f"cannot create the database folder {path}: {exc.strerror}") from None


def parse_state(text: str) -> JobState:
    try:
        return JobState(text.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"unknown state {text!r} (known: {known})") from None


def parse_job_text(text: str) -> dict[str, Any]:
    """One job from the command line: a JSON object, or else a shell command."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return parse_json_object(stripped)
    return {"command": text}


def parse_json_object(text: str) -> dict[str, Any]:
    import json  # here: a plain command (the common case) needs no JSON at all

    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"a job must be a JSON object, not {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def build_job(spec: Mapping[str, Any], defaults: Config, now: float) -> NewJob:
    """Validate one job object; raise InvalidInput naming the first problem."""
    unknown = set(spec) - JOB_FIELDS - INITIAL_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    _check_initial(spec)
    command = spec.get("command")
    if not isinstance(command, str):
        raise InvalidInput("command is required and must be a string")
    if not command.strip():
        raise InvalidInput("command must not be empty")
    if "\x00" in command:
        raise InvalidInput("command must not contain NUL characters")
    if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    _check_text(command, "command")
    job_id = spec.get("id")
    job_id = new_id(now) if job_id is None else _check_id(job_id)
    max_retries = _int(spec, "max_retries", defaults.max_retries, 0, 1000)
    priority = _int(spec, "priority", 0, *PRIORITY_RANGE)
    timeout = _number(spec, "timeout", defaults.job_timeout, 0.01, 604_800.0)
    return NewJob(
        id=job_id,
        command=command,
        max_retries=max_retries,
        priority=priority,
        timeout=timeout,
        run_at=_start_time(spec, now),
    )


def _start_time(spec: Mapping[str, Any], now: float) -> float:
    """`delay` seconds from now, or the ISO-8601 `run_at`, or now."""
    if spec.get("run_at") is not None and spec.get("delay") is not None:
        raise InvalidInput("give run_at or delay, not both")
    if spec.get("delay") is not None:
        return now + _number(spec, "delay", 0.0, 0.0, MAX_DELAY)
    raw = spec.get("run_at")
    if raw is None:
        return now
    if not isinstance(raw, str):
        raise InvalidInput("run_at must be an ISO-8601 time string")
    try:
        return parse_time(raw)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput(f"run_at is not an ISO-8601 time: {raw!r}") from None


def _check_initial(spec: Mapping[str, Any]) -> None:
    if "state" in spec and spec["state"] != "pending":
        raise InvalidInput("a new job's state can only be 'pending'")
    if "attempts" in spec and (type(spec["attempts"]) is not int or spec["attempts"] != 0):
        raise InvalidInput("a new job's attempts can only be 0")
    for key in ("created_at", "updated_at"):
        value = spec.get(key)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            parse_time(value)
        except (ValueError, OverflowError, OSError):
            raise InvalidInput(f"{key} must be an ISO-8601 time (it is set by queuectl)") from None


def _check_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("id must be a string")
    if not value or value != value.strip():
        raise InvalidInput("id must be non-empty, without leading or trailing spaces")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"id is longer than {MAX_ID_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidInput("id must not contain control characters")
    return value


def _check_text(value: str, name: str) -> None:
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        raise InvalidInput(f"{name} is not valid UTF-8 text")


def _int(spec: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key} must be a whole number")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidInput(f"{key} must be a whole number")
        value = int(value)
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be between {low} and {high}")
    return value


def _number(spec: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = spec.get(key)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInput(f"{key} is too large") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidInput(f"{key} must be between {low:g} and {high:g}")
    return number
