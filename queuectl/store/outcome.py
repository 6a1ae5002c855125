"""The outcomes a store records at the end of an attempt: one value each, named for
where it sends the job and holding exactly what that state records.

finish() and finish_and_claim() take a Finished value (the attempt's own worker
records it); recover() takes a Recovered value (the monitor, or a worker giving
back a job it never started, ends the attempt on the worker's behalf), which also
holds the recovery's log record (`audit`) and what must still hold for it to
commit (`guard`).  Every outcome exposes `state` (the job's next state) and the
columns it writes, so a backend writes each kind with one statement.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import ClassVar

from queuectl.models import JobState, Outcome, RecoveryGuard, Transition

#: A recovery that requires nothing beyond the job's lease.
UNGUARDED = RecoveryGuard()


@dataclass(frozen=True, slots=True)
class Completed:
    """PROCESSING -> COMPLETED: the command exited 0."""

    stdout: str = ""
    stderr: str = ""

    state: ClassVar[JobState] = JobState.COMPLETED
    next_run_at: ClassVar[None] = None
    exit_code: ClassVar[int] = 0
    error: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class Retry:
    """PROCESSING -> FAILED: the attempt failed and the job is due again at
    `next_run_at`."""

    next_run_at: float
    exit_code: int | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""

    state: ClassVar[JobState] = JobState.FAILED


@dataclass(frozen=True, slots=True)
class Dead:
    """PROCESSING -> DEAD: the attempt failed and no retry is left (dead-letter
    queue)."""

    exit_code: int | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""

    state: ClassVar[JobState] = JobState.DEAD
    next_run_at: ClassVar[None] = None


#: What an attempt's own worker records.
Finished = Completed | Retry | Dead


@dataclass(frozen=True, slots=True)
class _Recovery:
    """What every recovery holds: why (`reason`, a models.Reason value) and what
    happened (`error`); the exit code is cleared, the attempt's output left as it
    was.  `audit` is the recovery's log record, added to the audit outbox if the job
    changes; `guard` what must still hold for the change to commit."""

    reason: str
    error: str
    _: KW_ONLY
    audit: str | None = None
    guard: RecoveryGuard = UNGUARDED


@dataclass(frozen=True, slots=True)
class RecoveredRetry(_Recovery):
    """PROCESSING -> FAILED on the worker's behalf: the attempt counts, and the job is
    due again at `next_run_at`."""

    next_run_at: float

    state: ClassVar[JobState] = JobState.FAILED
    give_back: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class RecoveredDead(_Recovery):
    """PROCESSING -> DEAD on the worker's behalf: the attempt counts and it was the
    last one."""

    state: ClassVar[JobState] = JobState.DEAD
    next_run_at: ClassVar[None] = None
    give_back: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class GivenBack(_Recovery):
    """PROCESSING -> PENDING: the command never started, so the attempt is given back
    (attempts - 1) and the job is due at `next_run_at`."""

    next_run_at: float

    state: ClassVar[JobState] = JobState.PENDING
    give_back: ClassVar[bool] = True


#: What a recovery records.
Recovered = RecoveredRetry | RecoveredDead | GivenBack


def finished(move: Transition, result: Outcome) -> Finished:
    """The outcome `move` (models.decide) makes of an attempt's `result`."""
    if move.state is JobState.COMPLETED:
        return Completed(result.stdout, result.stderr)
    if move.state is JobState.FAILED and move.next_run_at is not None:
        return Retry(move.next_run_at, result.exit_code, result.error, result.stdout, result.stderr)
    if move.state is JobState.DEAD:
        return Dead(result.exit_code, result.error, result.stdout, result.stderr)
    raise ValueError(f"an attempt cannot end in {move}")


def recovered(
    state: JobState,
    next_run_at: float | None,
    reason: str,
    error: str,
    *,
    audit: str | None = None,
    guard: RecoveryGuard = UNGUARDED,
) -> Recovered:
    """The recovery that sends a job to `state`: FAILED due at `next_run_at`, DEAD,
    or PENDING at `next_run_at` with the attempt given back.  The kind alone says
    whether the attempt is given back (stores read no flag): a guard that asks for a
    give-back (`RecoveryGuard.give_back`) with any other state is a caller's error."""
    if guard.give_back and state is not JobState.PENDING:
        raise ValueError(f"a give-back sends the job to pending, not to {state}")
    if state is JobState.PENDING and next_run_at is not None:
        return GivenBack(reason, error, next_run_at, audit=audit, guard=guard)
    if state is JobState.FAILED and next_run_at is not None:
        return RecoveredRetry(reason, error, next_run_at, audit=audit, guard=guard)
    if state is JobState.DEAD:
        return RecoveredDead(reason, error, audit=audit, guard=guard)
    raise ValueError(f"a recovery cannot send a job to {state} (next_run_at={next_run_at})")
