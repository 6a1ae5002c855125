"""The Store contract for named queues (queuectl/store/__init__.py): pause, concurrency,
served queues, per-queue counts and the listing filters, on every backend."""

from __future__ import annotations

import threading
import time

from queuectl.models import Job, JobFilter, JobState, NewJob
from queuectl.store import Store
from queuectl.store.outcome import Completed
from tests.conftest import StoreFactory
from tests.helpers import T0


def new(
    job_id: str, queue: str = "default", *, priority: int = 0, run_at: float = T0, command: str = "true"
) -> NewJob:
    return NewJob(job_id, command, 3, priority, 30.0, run_at, queue=queue)


def done(store: Store, job: Job, now: float = T0) -> bool:
    return store.finish(job.id, job.lease, Completed("", ""), now=now)


def running(store: Store, queue: str) -> int:
    return len(store.list_jobs(JobState.PROCESSING, where=JobFilter(queues=(queue,))))


# --- pause ----------------------------------------------------------------------------


def test_a_paused_queue_is_not_claimed_from_and_its_running_jobs_finish(store: Store) -> None:
    store.enqueue([new("a1", "a", priority=9), new("a2", "a", priority=9), new("d1")], now=T0)
    first = store.claim("w1", now=T0)
    assert first is not None and first.id == "a1"
    assert store.set_paused("a", True) is True
    assert store.set_paused("a", True) is False  # already paused: nothing changed
    # The best job of another queue is still claimed; the paused queue's never.
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "d1"
    assert store.claim("w1", now=T0) is None
    assert done(store, first)  # a running job of a paused queue finishes
    assert store.set_paused("a", False) is True
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "a2"


def test_pausing_an_unknown_queue_creates_it_paused(store: Store) -> None:
    assert store.set_paused("later", True) is True
    store.enqueue([new("l1", "later")], now=T0)
    assert store.claim("w1", now=T0) is None
    info = {q.name: q for q in store.queue_stats()}
    assert info["later"].paused and info["later"].counts["pending"] == 1
    assert not info["default"].paused


def test_the_default_queue_alone_is_paused_and_limited_like_any_other(store: Store) -> None:
    # With `default` the only queue, the SQLite claim reads it alone (_CLAIM_ONE):
    # its pause and its limit must hold there too.
    store.enqueue([new("d1", priority=2), new("d2", priority=1), new("d3")], now=T0)
    first = store.claim("w1", now=T0)
    assert first is not None and first.id == "d1"
    assert store.set_paused("default", True)
    assert store.claim("w1", now=T0) is None
    assert store.claim("w1", now=T0, queues=["default"]) is None
    assert store.set_paused("default", False)
    assert store.set_concurrency("default", 2)
    second = store.claim("w2", now=T0)
    assert second is not None and second.id == "d2"
    assert store.claim("w3", now=T0) is None  # two processing: the limit
    assert store.claim("w3", now=T0, queues=["default"]) is None
    held, nxt = store.finish_and_claim(first.id, first.lease, Completed("", ""), "w1", now=T0)
    assert held and nxt is not None and nxt.id == "d3"


def test_a_queue_beside_the_default_is_weighed_against_it(store: Store) -> None:
    store.enqueue([new("d1")], now=T0)
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "d1"
    # A second queue appears: the best head of the two is claimed, whichever queue.
    store.enqueue([new("d2", priority=1), new("b1", "b", priority=5)], now=T0)
    held, nxt = store.finish_and_claim(job.id, job.lease, Completed("", ""), "w1", now=T0)
    assert held and nxt is not None and nxt.id == "b1"
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "d2"


def test_a_worker_serving_one_queue_heeds_only_that_queues_settings(store: Store) -> None:
    store.enqueue([new("b1", "b"), new("b2", "b"), new("d1", priority=9)], now=T0)
    assert store.set_paused("default", True)  # not this worker's queue
    job = store.claim("w1", now=T0, queues=["b"])
    assert job is not None and job.id == "b1"
    assert store.set_concurrency("b", 1)
    assert store.claim("w2", now=T0, queues=["b"]) is None
    assert store.set_concurrency("b", None)
    assert store.set_paused("b", True)
    assert store.claim("w2", now=T0, queues=["b"]) is None
    assert store.set_paused("b", False)
    job = store.claim("w2", now=T0, queues=["b", "b"])  # named twice: still one queue
    assert job is not None and job.id == "b2"
    assert store.claim("w2", now=T0, queues=["b"]) is None  # default's d1 is not served


# --- concurrency ----------------------------------------------------------------------


def test_concurrency_bounds_a_queues_processing_jobs(store: Store) -> None:
    store.enqueue([new(f"a{i}", "a", priority=9) for i in range(4)] + [new("d1"), new("d2")], now=T0)
    assert store.set_concurrency("a", 2) is True
    assert store.set_concurrency("a", 2) is False
    got = [store.claim("w1", now=T0) for _ in range(3)]
    assert [j.id for j in got if j] == ["a0", "a1", "d1"]  # a is full: the best of another queue
    assert running(store, "a") == 2
    assert got[0] is not None and done(store, got[0])
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "a2"  # room again
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "d2"
    assert store.claim("w1", now=T0) is None
    assert store.set_concurrency("a", None) is True  # no limit
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "a3"
    assert running(store, "a") == 3


def test_finish_and_claim_respects_the_served_queues_and_the_concurrency(store: Store) -> None:
    store.enqueue([new("a1", "a"), new("a2", "a"), new("b1", "b", priority=5)], now=T0)
    store.set_concurrency("a", 1)
    first = store.claim("w1", now=T0, queues=["a"])
    assert first is not None and first.id == "a1"
    assert store.claim("w2", now=T0, queues=["a"]) is None  # full
    held, nxt = store.finish_and_claim(first.id, first.lease, Completed("", ""), "w1", now=T0, queues=["a"])
    assert held and nxt is not None and nxt.id == "a2"  # the finish made room in its own transaction


def test_concurrency_holds_under_concurrent_claimers(stores: StoreFactory) -> None:
    """Six claimers, each on its own connection, race for a queue of concurrency 2,
    holding each job a moment; no one ever sees more than 2 of its jobs running."""
    setup = stores.open()
    total = 60
    setup.enqueue([new(f"j{i:03d}", "lim") for i in range(total)], now=T0)
    setup.set_concurrency("lim", 2)
    claimers = [stores.open() for _ in range(6)]
    seen: list[int] = []
    taken: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def claim_loop(store: Store, me: str) -> None:
        try:
            while time.monotonic() < deadline:
                with lock:
                    if len(taken) >= total:
                        return
                job = store.claim(me, now=T0, queues=["lim"])
                if job is None:
                    time.sleep(0.001)
                    continue
                n = running(store, "lim")
                with lock:
                    seen.append(n)
                    taken.append(job.id)
                time.sleep(0.003)  # hold the slot while the others try
                assert done(store, job)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim_loop, args=(s, f"w{i}")) for i, s in enumerate(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(taken) == [f"j{i:03d}" for i in range(total)]  # each once
    assert max(seen) <= 2, f"a claimer saw {max(seen)} jobs of a queue of concurrency 2 processing"
    assert 2 in seen  # the limit is used, not just respected


# --- served queues --------------------------------------------------------------------


def test_a_worker_claims_only_from_the_queues_it_serves(store: Store) -> None:
    store.enqueue([new("a1", "a", priority=9), new("b1", "b"), new("d1")], now=T0)
    job = store.claim("w1", now=T0, queues=["b"])
    assert job is not None and job.id == "b1"
    assert store.claim("w1", now=T0, queues=["b", "nope"]) is None
    job = store.claim("w1", now=T0, queues=["default", "a"])
    assert job is not None and job.id == "a1"
    job = store.claim("w1", now=T0)
    assert job is not None and job.id == "d1"


def test_next_due_leaves_out_paused_full_and_unserved_queues(store: Store) -> None:
    store.enqueue([new("a1", "a", run_at=T0 + 10), new("b1", "b", run_at=T0 + 20)], now=T0)
    assert store.next_due() == T0 + 10
    assert store.next_due(["b"]) == T0 + 20
    store.set_paused("a", True)
    assert store.next_due() == T0 + 20
    store.set_paused("a", False)
    store.enqueue([new("c1", "c")], now=T0)
    store.set_concurrency("a", 1)
    job = store.claim("w1", now=T0, queues=["c"])
    assert job is not None
    store.enqueue([new("c2", "c", run_at=T0 + 5)], now=T0)
    assert store.next_due(["c"]) == T0 + 5
    store.set_concurrency("c", 1)  # full now: its later job is no wake-up
    assert store.next_due(["c"]) is None
    assert store.next_due(["a", "c"]) == T0 + 10


# --- counts per queue -----------------------------------------------------------------


def test_queue_stats_count_each_queues_jobs_per_state(store: Store) -> None:
    assert [(q.name, q.paused, q.concurrency, sum(q.counts.values())) for q in store.queue_stats()] == [
        ("default", False, None, 0)
    ]
    store.enqueue([new("a1", "a"), new("a2", "a"), new("b1", "b"), new("d1")], now=T0)
    job = store.claim("w1", now=T0, queues=["a"])
    assert job is not None and done(store, job)
    store.claim("w1", now=T0, queues=["a"])
    store.set_concurrency("b", 3)
    stats = {q.name: q for q in store.queue_stats()}
    assert list(stats) == ["a", "b", "default"]
    assert set(stats["a"].counts) == {s.value for s in JobState}
    assert (stats["a"].counts["completed"], stats["a"].counts["processing"]) == (1, 1)
    assert stats["b"].concurrency == 3 and stats["b"].counts["pending"] == 1
    assert stats["default"].counts["pending"] == 1
    assert stats["a"].to_dict()["total"] == 2


# --- listing --------------------------------------------------------------------------


def test_list_jobs_filters(store: Store) -> None:
    store.enqueue(
        [
            new("p1", "a", command="echo 100%"),
            new("p2", "b", command="echo 100x"),
            new("p3", "a", command="rm a_b"),
            new("p4", "b", command="rm axb"),
        ],
        now=T0,
    )
    store.enqueue([new("late", "a", command="echo late")], now=T0 + 100)
    job = store.claim("w1", now=T0, queues=["b"])
    assert job is not None and job.id == "p2"

    def ids(limit: int | None = None, state: JobState | None = None, **kw: object) -> list[str]:
        return [j.id for j in store.list_jobs(state, limit, where=JobFilter(**kw))]  # type: ignore[arg-type]

    assert ids() == ["p1", "p2", "p3", "p4", "late"]
    assert ids(states=(JobState.PENDING, JobState.PROCESSING), queues=("b",)) == ["p2", "p4"]
    assert ids(states=(JobState.PROCESSING,)) == ["p2"]
    assert ids(queues=("a",)) == ["p1", "p3", "late"]
    assert ids(command_contains="100%") == ["p1"]  # % is no wildcard
    assert ids(command_contains="a_b") == ["p3"]  # nor is _
    assert ids(command_contains="ECHO") == []  # case-sensitive
    assert ids(since=T0 + 50) == ["late"]
    assert ids(until=T0 + 50) == ["p1", "p2", "p3", "p4"]
    assert ids(since=T0, until=T0 + 100) == ["p1", "p2", "p3", "p4"]  # until is exclusive
    assert ids(newest_first=True) == ["late", "p4", "p3", "p2", "p1"]
    assert ids(2, newest_first=True) == ["late", "p4"]
    assert ids(1, queues=("a",)) == ["p1"]
    assert ids(state=JobState.PENDING, queues=("b",)) == ["p4"]  # the old shorthand still works
