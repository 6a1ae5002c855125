"""The job-control side of the Store contract (unique keys, dependencies, the
caller's directory and variables), through the library on every backend."""

from __future__ import annotations

import pytest

from queuectl.api import Queue
from queuectl.errors import Conflict, InvalidInput, JobNotFound, UniqueConflict
from queuectl.models import Job, JobState, Outcome, Transition
from queuectl.store import Store
from queuectl.store.outcome import finished
from queuectl.trail_files import seal_pending
from tests.helpers import T0


def run(store: Store, state: JobState, now: float = T0) -> Job:
    """Claim the best due job and end its attempt in `state`."""
    job = store.claim("w1", now=now)
    assert job is not None
    result = Outcome(0 if state is JobState.COMPLETED else 1, None, "", "")
    assert store.finish(job.id, job.lease, finished(Transition(state, None), result), now=now)
    return job


def state(q: Queue, job_id: str) -> JobState:
    return q.get(job_id).state


# --- unique keys ------------------------------------------------------------------------


def test_a_unique_key_is_held_while_its_job_may_run(store: Store) -> None:
    q = Queue(store)
    first = q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    with pytest.raises(UniqueConflict) as exc:
        q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    assert exc.value.exit_code == 4 and first in str(exc.value)
    assert [j.id for j in store.list_jobs()] == [first]
    store.claim("w1", now=T0)  # processing still holds it
    with pytest.raises(UniqueConflict):
        q.enqueue({"command": "true", "unique_key": "k"}, now=T0)


@pytest.mark.parametrize("end", [JobState.COMPLETED, JobState.DEAD])
def test_a_unique_key_is_free_once_its_job_ended(store: Store, end: JobState) -> None:
    q = Queue(store)
    first = q.enqueue({"command": "true", "unique_key": "k", "max_retries": 0}, now=T0)
    run(store, end)
    second = q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    assert second != first and state(q, second) is JobState.PENDING


def test_a_unique_key_is_free_once_its_job_is_cancelled(store: Store) -> None:
    q = Queue(store)
    parent = q.enqueue({"command": "true", "max_retries": 0}, now=T0)
    child = q.enqueue({"command": "true", "unique_key": "k", "after": [parent]}, now=T0)
    run(store, JobState.DEAD)
    assert state(q, child) is JobState.CANCELLED
    assert state(q, q.enqueue({"command": "true", "unique_key": "k"}, now=T0)) is JobState.PENDING


def test_on_conflict_ignore_gives_the_holders_id(store: Store) -> None:
    q = Queue(store)
    first = q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    assert q.enqueue({"command": "other", "unique_key": "k"}, now=T0, on_conflict="ignore") == first
    ids = q.enqueue_many(
        [{"command": "a"}, {"command": "b", "unique_key": "k"}, {"command": "c", "unique_key": "j"}],
        now=T0,
        on_conflict="ignore",
    )
    assert ids[1] == first and len(set(ids)) == 3
    assert {j.command for j in store.list_jobs()} == {"true", "a", "c"}


def test_a_batch_is_all_or_nothing_on_a_held_key(store: Store) -> None:
    q = Queue(store)
    q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    with pytest.raises(UniqueConflict):
        q.enqueue_many([{"command": "a"}, {"command": "b", "unique_key": "k"}], now=T0)
    assert len(store.list_jobs()) == 1
    with pytest.raises(InvalidInput, match="job 2: unique key 'x' is also job 1's"):
        q.enqueue_many([{"command": "a", "unique_key": "x"}, {"command": "b", "unique_key": "x"}], now=T0)


def test_dlq_retry_refuses_a_key_now_held_by_another_job(store: Store) -> None:
    q = Queue(store)
    dead = q.enqueue({"command": "false", "unique_key": "k", "max_retries": 0}, now=T0)
    run(store, JobState.DEAD)
    other = q.enqueue({"command": "false", "max_retries": 0}, now=T0 + 1)
    run(store, JobState.DEAD, T0 + 1)
    holder = q.enqueue({"command": "true", "unique_key": "k"}, now=T0)
    for call in (lambda: q.dlq_retry_many([other, dead]), q.dlq_retry_all):
        with pytest.raises(UniqueConflict) as exc:
            call()
        assert exc.value.exit_code == 4 and (exc.value.key, exc.value.job_id) == ("k", holder)
        assert (state(q, dead), state(q, other)) == (JobState.DEAD, JobState.DEAD)  # nothing moved
    run(store, JobState.COMPLETED, T0 + 2)
    assert q.dlq_retry(dead) == dead


# --- dependencies -----------------------------------------------------------------------


def test_a_child_waits_until_every_parent_has_completed(store: Store) -> None:
    q = Queue(store)
    a = q.enqueue({"command": "a", "priority": 2}, now=T0)
    b = q.enqueue({"command": "b", "priority": 1}, now=T0)
    child = q.enqueue({"command": "c", "after": [a, b]}, now=T0)
    assert state(q, child) is JobState.WAITING
    assert sorted(q.parents(child)) == sorted([a, b])
    assert run(store, JobState.COMPLETED).id == a
    assert state(q, child) is JobState.WAITING
    assert run(store, JobState.COMPLETED, T0 + 1).id == b
    assert state(q, child) is JobState.PENDING
    assert run(store, JobState.COMPLETED, T0 + 2).id == child


def test_a_purged_completed_parent_does_not_hold_back_its_child(store: Store) -> None:
    # Retention (or purge) may delete a completed parent while its child still waits
    # for another parent: the child must still be released when that one completes.
    q = Queue(store)
    a = q.enqueue({"command": "a", "priority": 2}, now=T0)
    b = q.enqueue({"command": "b", "priority": 1}, now=T0)
    child = q.enqueue({"command": "c", "after": [a, b]}, now=T0)
    assert run(store, JobState.COMPLETED).id == a
    seal_pending(store)  # a purge takes only jobs whose history the audit trail holds
    assert store.purge([JobState.COMPLETED]) == 1
    assert store.get(a) is None and state(q, child) is JobState.WAITING
    assert run(store, JobState.COMPLETED, T0 + 1).id == b
    assert state(q, child) is JobState.PENDING


def test_a_parent_already_completed_leaves_the_child_pending(store: Store) -> None:
    q = Queue(store)
    a = q.enqueue({"command": "a"}, now=T0)
    run(store, JobState.COMPLETED)
    assert state(q, q.enqueue({"command": "c", "after": [a]}, now=T0)) is JobState.PENDING


def test_a_dead_parent_cancels_children_and_grandchildren(store: Store) -> None:
    q = Queue(store)
    a = q.enqueue({"command": "a", "max_retries": 0}, now=T0)
    ids = q.enqueue_many(
        [{"id": "c1", "command": "c", "after": [a]}, {"id": "g1", "command": "g", "after": ["c1"]}], now=T0
    )
    assert ids == ["c1", "g1"]
    run(store, JobState.DEAD)
    for job_id in ids:
        job = q.get(job_id)
        assert job.state is JobState.CANCELLED
    assert a in (store.history("c1")[-1].reason or "")
    assert "c1" in (store.history("g1")[-1].reason or "")


def test_an_unknown_or_ended_parent_is_refused(store: Store) -> None:
    q = Queue(store)
    with pytest.raises(JobNotFound) as missing:
        q.enqueue({"command": "c", "after": ["nope"]}, now=T0)
    assert missing.value.exit_code == 3
    dead = q.enqueue({"command": "a", "max_retries": 0}, now=T0)
    run(store, JobState.DEAD)
    with pytest.raises(Conflict) as ended:
        q.enqueue({"command": "c", "after": [dead]}, now=T0)
    assert ended.value.exit_code == 4 and dead in str(ended.value)
    assert [j.id for j in store.list_jobs()] == [dead]


def test_a_cycle_in_a_batch_is_refused(store: Store) -> None:
    q = Queue(store)
    with pytest.raises(InvalidInput, match="cycle: a -> b -> a") as exc:
        q.enqueue_many(
            [{"id": "a", "command": "x", "after": ["b"]}, {"id": "b", "command": "y", "after": ["a"]}], now=T0
        )
    assert exc.value.exit_code == 2
    with pytest.raises(InvalidInput, match="after itself"):
        q.enqueue({"id": "s", "command": "x", "after": ["s"]}, now=T0)
    assert store.list_jobs() == []


# --- queue, directory and variables ---------------------------------------------------


def test_queue_cwd_env_are_stored_as_given(store: Store) -> None:
    q = Queue(store)
    job_id = q.enqueue(
        {"command": "x", "queue": "reports", "cwd": "/srv", "env": {"B": "2", "A": "1"}}, now=T0
    )
    job = q.get(job_id)
    assert (job.queue, job.cwd, job.environment()) == ("reports", "/srv", {"A": "1", "B": "2"})
