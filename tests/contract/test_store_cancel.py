"""The Store contract for job control: cancel() and save_output(), on every backend
(the parametrized `store` fixture), at fixed instants."""

from __future__ import annotations

import pytest

from queuectl.models import JobState, NewJob, Outcome, Transition, WorkerInfo
from queuectl.store import Store
from queuectl.store.outcome import finished
from tests.helpers import T0

ACTOR = "alice@host1"


def new(job_id: str, *, after: tuple[str, ...] = ()) -> NewJob:
    return NewJob(id=job_id, command="true", max_retries=3, priority=0, timeout=30.0, run_at=T0, after=after)


def register(store: Store, worker: str = "w1") -> None:
    store.register_worker(
        WorkerInfo(id=worker, host="h", pid=1, proc_start=1, started_at=T0, heartbeat_at=T0, holding=None)
    )


def in_state(store: Store, job_id: str, state: JobState) -> None:
    """Put a new job `job_id` into `state` (one of models.CANCELLABLE)."""
    if state is JobState.WAITING:
        store.enqueue([new(f"{job_id}-parent"), new(job_id, after=(f"{job_id}-parent",))], now=T0)
        return
    store.enqueue([new(job_id)], now=T0)
    if state is JobState.PENDING:
        return
    job = store.claim("w1", now=T0 + 1)
    assert job is not None and job.id == job_id
    if state is JobState.FAILED:
        outcome = finished(Transition(JobState.FAILED, T0 + 100), Outcome(1, "exited with code 1"))
        assert store.finish(job.id, job.lease, outcome, now=T0 + 2)


@pytest.mark.parametrize("state", [JobState.WAITING, JobState.PENDING, JobState.FAILED, JobState.PROCESSING])
def test_cancel_moves_every_cancellable_state(store: Store, state: JobState) -> None:
    in_state(store, "a", state)
    assert store.get("a").state is state  # type: ignore[union-attr]
    assert store.cancel(["a"], ACTOR, now=T0 + 10) == ["a"]
    job = store.get("a")
    assert job is not None
    assert job.state is JobState.CANCELLED
    assert job.next_run_at is None
    assert job.finished_at == job.updated_at == T0 + 10
    last = store.history("a")[-1]
    assert (last.from_state, last.to_state, last.reason) == (
        state.value,
        "cancelled",
        f"cancelled by {ACTOR}",
    )
    assert last.at == T0 + 10
    assert store.counts()["cancelled"] == 1
    # Nothing claims a cancelled job.
    assert store.claim("w2", now=T0 + 1000) is None or store.get("a").state is JobState.CANCELLED  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED])
def test_cancel_leaves_terminal_and_unknown_jobs_alone(store: Store, state: JobState) -> None:
    store.enqueue([new("a")], now=T0)
    if state is JobState.CANCELLED:
        assert store.cancel(["a"], "bob@h", now=T0 + 1) == ["a"]
    else:
        job = store.claim("w1", now=T0 + 1)
        assert job is not None
        code = 0 if state is JobState.COMPLETED else 1
        assert store.finish(job.id, job.lease, finished(Transition(state, None), Outcome(code)), now=T0 + 2)
    before = store.get("a")
    events = store.history("a")
    assert store.cancel(["a", "nope"], ACTOR, now=T0 + 10) == []
    assert store.get("a") == before
    assert store.history("a") == events


def test_cancel_returns_the_moved_ids_in_the_given_order(store: Store) -> None:
    store.enqueue([new("a"), new("b"), new("c")], now=T0)
    job = store.claim("w1", now=T0 + 1)
    assert job is not None and job.id == "a"
    assert store.finish(
        job.id, job.lease, finished(Transition(JobState.COMPLETED, None), Outcome(0)), now=T0 + 2
    )
    assert store.cancel(["c", "a", "x", "b", "c"], ACTOR, now=T0 + 3) == ["c", "b"]


def test_a_cancelled_running_attempt_loses_its_lease(store: Store) -> None:
    register(store)
    in_state(store, "a", JobState.PROCESSING)
    job = store.get("a")
    assert job is not None
    assert store.heartbeat("w1", "a", job.lease, now=T0 + 2).held
    assert store.cancel(["a"], ACTOR, now=T0 + 3) == ["a"]
    beat = store.heartbeat("w1", "a", job.lease, now=T0 + 4)
    assert beat.registered and not beat.held
    # The worker's result is dropped: the job stays cancelled, never retried.
    failed = finished(Transition(JobState.FAILED, T0 + 5), Outcome(137, "killed by signal SIGKILL"))
    assert not store.finish("a", job.lease, failed, now=T0 + 5)
    done, nxt = store.finish_and_claim("a", job.lease, failed, "w1", now=T0 + 6)
    assert not done and nxt is None
    after = store.get("a")
    assert after is not None
    assert (after.state, after.attempts, after.lease, after.exit_code) == (
        JobState.CANCELLED,
        1,
        job.lease,
        None,
    )
    assert [e.to_state for e in store.history("a")][-1] == "cancelled"
    assert not any(j.id == "a" for j in store.processing())


def test_cancel_cancels_the_waiting_children_with_it(store: Store) -> None:
    store.enqueue([new("p"), new("c1", after=("p",)), new("c2", after=("c1",))], now=T0)
    assert store.get("c1").state is JobState.WAITING  # type: ignore[union-attr]
    assert store.cancel(["p"], ACTOR, now=T0 + 5) == ["p"]
    for child, parent in (("c1", "p"), ("c2", "c1")):
        job = store.get(child)
        assert job is not None and job.state is JobState.CANCELLED
        assert store.history(child)[-1].reason == f"parent {parent} cancelled"
    assert store.counts()["cancelled"] == 3


# --- a running attempt's output ----------------------------------------------------------


def test_save_output_is_fenced_by_the_running_attempt(store: Store) -> None:
    in_state(store, "a", JobState.PROCESSING)
    job = store.get("a")
    assert job is not None
    events = store.history("a")
    assert store.save_output("a", job.lease, "line 1\n", "warn\n")
    got = store.get("a")
    assert got is not None
    assert (got.state, got.stdout, got.stderr, got.updated_at) == (
        JobState.PROCESSING,
        "line 1\n",
        "warn\n",
        job.updated_at,
    )
    assert store.history("a") == events  # no state change, no event
    assert store.save_output("a", job.lease, "line 1\nline 2\n", "")
    assert store.get("a").stdout == "line 1\nline 2\n"  # type: ignore[union-attr]
    # A stale lease, a job not running, an unknown job: nothing changes.
    assert not store.save_output("a", job.lease - 1, "stale", "stale")
    assert not store.save_output("nope", 1, "x", "y")
    assert store.cancel(["a"], ACTOR, now=T0 + 9) == ["a"]
    assert not store.save_output("a", job.lease, "late", "late")
    assert store.get("a").stdout == "line 1\nline 2\n"  # type: ignore[union-attr]


def test_save_output_keeps_what_a_job_may_write(store: Store) -> None:
    in_state(store, "a", JobState.PROCESSING)
    job = store.get("a")
    assert job is not None
    text = "é\tñ \x1b[31mred\x1b[0m" + "x" * 70_000
    assert store.save_output("a", job.lease, text, "")
    assert store.get("a").stdout == text  # type: ignore[union-attr]


def test_the_finish_replaces_the_saved_output(store: Store) -> None:
    in_state(store, "a", JobState.PROCESSING)
    job = store.get("a")
    assert job is not None
    assert store.save_output("a", job.lease, "partial", "")
    outcome = finished(Transition(JobState.COMPLETED, None), Outcome(0, None, "all of it", "e"))
    assert store.finish("a", job.lease, outcome, now=T0 + 3)
    got = store.get("a")
    assert got is not None and (got.stdout, got.stderr) == ("all of it", "e")
