"""The audit trail's part of the Store contract (store/trail.py), on every backend:
events written with their change, sealed once into one chain, by whoever seals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queuectl.models import JobState, NewJob, Outcome, Transition, WorkerInfo
from queuectl.store import Store
from queuectl.store.outcome import finished
from queuectl.trail import GENESIS, link, seal
from queuectl.trail_files import seal_pending
from tests.conftest import StoreFactory
from tests.helpers import T0


def new(job_id: str) -> NewJob:
    return NewJob(id=job_id, command="true", max_retries=0, priority=0, timeout=30.0, run_at=T0)


def register(store: Store, worker: str = "w1") -> None:
    store.register_worker(
        WorkerInfo(id=worker, host="h", pid=1, proc_start=1, started_at=T0, heartbeat_at=T0, holding=None)
    )


def chain(store: Store) -> list[dict[str, object]]:
    """Every line the store keeps, checked link by link."""
    events = [json.loads(text) for _, text in store.trail.lines(0, 10_000)]
    prev = GENESIS
    for i, event in enumerate(events, 1):
        assert event["seq"] == i and event["prev_hash"] == prev
        assert link(prev, event) == event["hash"]
        prev = str(event["hash"])
    assert store.trail.head() == ((len(events), prev) if events else (0, GENESIS))
    return events


def run_one(store: Store, worker: str = "w1", code: int = 0) -> str:
    job = store.claim(worker, now=T0 + 1)
    assert job is not None
    state = JobState.COMPLETED if code == 0 else JobState.DEAD
    outcome = finished(
        Transition(state, T0 + 2), Outcome(code, None if code == 0 else f"exited with code {code}")
    )
    assert store.finish(job.id, job.lease, outcome, now=T0 + 2)
    return job.id


def test_every_change_is_sealed_once_in_order_with_its_actor(store: Store) -> None:
    store.actor = "alice@h1"
    store.enqueue([new("a"), new("b")], now=T0)
    register(store)
    run_one(store)
    store.config_set({"max_retries": "5"})
    assert store.set_paused("q1", True)
    assert seal_pending(store) == 6
    events = chain(store)
    assert [(e["event"], e.get("job_id"), e["actor"]) for e in events] == [
        ("job_enqueued", "a", "alice@h1"),
        ("job_enqueued", "b", "alice@h1"),
        ("job_claimed", "a", "w1"),
        ("job_completed", "a", "w1"),
        ("config_set", None, "alice@h1"),
        ("queue_paused", None, "alice@h1"),
    ]
    assert events[4]["detail"] == {"key": "max_retries", "old": None, "new": "5"}
    a, b = store.history("a"), store.history("b")
    assert [e["history_seq"] for e in events[:4]] == [a[0].seq, b[0].seq, a[1].seq, a[2].seq]
    assert seal_pending(store) == 0  # nothing sealed twice
    assert len(chain(store)) == 6


def test_a_cancel_a_retry_and_a_purge_name_who_did_them(store: Store) -> None:
    store.enqueue([new("a"), new("b")], now=T0)
    register(store)
    run_one(store, code=3)  # a: dead
    store.actor = "bob@h2"
    assert store.cancel(["b"], "bob@h2", now=T0 + 3) == ["b"]
    assert store.dlq_retry(["a"], now=T0 + 4) == ["a"]
    seal_pending(store)  # a purge deletes only the history already sealed
    assert store.purge([JobState.CANCELLED]) == 1
    seal_pending(store)
    events = chain(store)
    tail = [(e["event"], e.get("job_id"), e["actor"]) for e in events[-3:]]
    assert tail == [
        ("job_cancelled", "b", "bob@h2"),
        ("job_retried", "a", "bob@h2"),
        ("jobs_purged", None, "bob@h2"),
    ]
    assert events[-1]["detail"] == {"states": ["cancelled"], "before": None, "limit": None, "changed": 1}


def test_two_sealers_never_both_extend_the_chain(stores: StoreFactory) -> None:
    one, two = stores.open(), stores.open()
    one.enqueue([new(f"j{i}") for i in range(5)], now=T0)
    head1, token1, src1 = one.trail.pending(100)
    head2, token2, src2 = two.trail.pending(100)
    assert head1 == head2 and len(src1) == len(src2) == 5
    assert one.trail.commit(head1, token1, seal(src1, *head1))
    assert not two.trail.commit(head2, token2, seal(src2, *head2))  # lost the race: nothing changed
    assert len(chain(two)) == 5
    two.enqueue([new("late")], now=T0)
    assert seal_pending(two) == 1
    assert [e["seq"] for e in chain(one)] == [1, 2, 3, 4, 5, 6]


def test_sealing_in_batches_leaves_no_gap(store: Store) -> None:
    store.enqueue([new(f"j{i:03}") for i in range(25)], now=T0)
    store.config_set({"max_retries": "2"})
    store.enqueue([new("last")], now=T0)
    assert seal_pending(store, limit=4) == 27
    events = chain(store)
    assert [e.get("job_id") for e in events] == [f"j{i:03}" for i in range(25)] + [None, "last"]


def test_a_purge_waits_for_a_jobs_events_to_be_sealed(store: Store) -> None:
    store.enqueue([new("a"), new("b")], now=T0)
    register(store)
    run_one(store)  # a
    seal_pending(store)
    run_one(store)  # b: its claim and finish wait to be sealed
    assert store.purge([JobState.COMPLETED]) == 1  # a only: b's history is not sealed yet
    assert store.get("a") is None and store.history("a") == []
    assert store.get("b") is not None
    seal_pending(store)
    assert store.purge([JobState.COMPLETED]) == 1
    assert store.get("b") is None and store.history("b") == []  # no event left without its job
    seal_pending(store)
    events = chain(store)
    assert [(e["event"], e.get("job_id")) for e in events if e.get("job_id") != "b"] == [
        ("job_enqueued", "a"), ("job_claimed", "a"), ("job_completed", "a"),
        ("jobs_purged", None), ("jobs_purged", None),
    ]  # fmt: skip
    assert [e["event"] for e in events if e.get("job_id") == "b"] == [
        "job_enqueued",
        "job_claimed",
        "job_completed",
    ]


def test_homes_marks_never_move_back_and_lines_are_kept_until_every_home_has_them(store: Store) -> None:
    store.enqueue([new(f"j{i}") for i in range(4)], now=T0)
    seal_pending(store)
    lines = store.trail.lines(0, 100)
    store.trail.set_home("/a/logs", 4, "h4", now=T0)
    store.trail.set_home("/a/logs", 2, "h2", now=T0)  # a late writer: ignored
    mark = store.trail.home("/a/logs")
    assert mark is not None and (mark.seq, mark.hash) == (4, "h4")
    store.trail.set_home("/b/logs", 1, "h1", now=T0)
    far = store.now() + 10**6
    assert store.trail.prune(far, 100) == 1  # only seq 1: what /b has, never the head
    assert store.trail.first_kept() == 2
    store.trail.set_home("/b/logs", 4, "h4")
    assert store.trail.prune(far, 100) == 2
    assert store.trail.lines(0, 100) == lines[3:]  # the head's line stays


def test_a_checkpoint_is_recorded_and_is_itself_an_event(store: Store) -> None:
    store.actor = "carol@h3"
    store.enqueue([new("a")], now=T0)
    seal_pending(store)
    seq, digest = store.trail.head()
    store.trail.add_checkpoint(seq, digest)
    assert [(s, h, a) for s, h, _, a in store.trail.checkpoints()] == [(seq, digest, "carol@h3")]
    seal_pending(store)
    last = chain(store)[-1]
    assert (last["event"], last["detail"]) == ("audit_checkpoint", {"seq": seq, "hash": digest})


@pytest.mark.postgres
def test_postgres_holds_back_events_of_a_transaction_still_open(stores: StoreFactory) -> None:
    if stores.backend != "postgres":
        pytest.skip("PostgreSQL's transaction ids")
    import psycopg

    store = stores.open()
    store.enqueue([new("first")], now=T0)
    with psycopg.connect(stores.url) as slow:
        # An open transaction writing a job: its xid is older than the next enqueue's.
        slow.execute("CREATE TEMP TABLE t AS SELECT * FROM jobs WHERE id = 'first'")
        slow.execute("UPDATE t SET id = 'slow'")
        slow.execute("INSERT INTO jobs SELECT * FROM t")
        store.enqueue([new("after")], now=T0)  # commits first, with a newer xid
        seal_pending(store)
        assert [e["job_id"] for e in chain(store)] == ["first"]  # "after" waits behind "slow"
        slow.commit()
    seal_pending(store)
    assert [e["job_id"] for e in chain(store)] == ["first", "slow", "after"]  # none passed over


@pytest.mark.postgres
def test_postgres_is_not_held_back_by_another_databases_transaction(stores: StoreFactory) -> None:
    if stores.backend != "postgres":
        pytest.skip("PostgreSQL's transaction ids")
    import psycopg

    from tests.conftest import PG_SERVER

    store = stores.open()
    other_db = PG_SERVER.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(other_db) as other:
        other.execute("SELECT pg_current_xact_id()")  # an xid, open, in database postgres
        store.enqueue([new("a")], now=T0)
        assert seal_pending(store) == 1
        other.rollback()
    assert [e["job_id"] for e in chain(store)] == ["a"]


def test_a_backlog_is_written_in_order_and_not_held_in_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flush after a long wait (the history of an upgraded database, a session
    # that held sealing back) seals everything, keeps only the first batch of lines
    # in memory, and has the database serve the rest, in order, once.
    from queuectl import trail_files

    monkeypatch.setattr(trail_files, "BATCH", 5)
    monkeypatch.setattr(trail_files, "KEPT_IN_MEMORY", 5)
    store.enqueue([new(f"j{i:02d}") for i in range(23)], now=T0)
    kept: list[object] = []
    assert seal_pending(store, limit=4, sealed_lines=kept) == 23
    assert len(kept) == 5
    store.enqueue([new(f"k{i:02d}") for i in range(17)], now=T0)
    logs = tmp_path / "logs"
    assert trail_files.flush(store, logs) == 40
    written = [ln for f in trail_files.files(logs) for ln in f.read_text().splitlines()]
    assert written == [text for _, text in store.trail.lines(0, 100)] and len(chain(store)) == 40


@pytest.mark.postgres
def test_a_sealer_stopped_mid_commit_holds_up_no_other_sealer(stores: StoreFactory) -> None:
    # A process stopped (SIGSTOP) inside its sealing transaction keeps the head row
    # locked: another sealer must give up at once (the events wait), not block the
    # CLI command or the monitor it runs in, and seal everything once the lock is
    # gone.  (On SQLite a stopped writer holds every write, the trail's included, up
    # to the busy timeout, as before the trail.)
    if stores.backend != "postgres":
        pytest.skip("PostgreSQL's row lock on the head")
    import time

    import psycopg

    store = stores.open()
    store.enqueue([new(f"j{i}") for i in range(5)], now=T0)
    with psycopg.connect(stores.url) as holder:
        holder.execute("SELECT 1 FROM audit_head FOR UPDATE")
        started = time.monotonic()
        assert seal_pending(store, limit=2) == 0
        assert time.monotonic() - started < 2.0
        holder.rollback()
    assert seal_pending(store, limit=2) == 5
    assert [e["job_id"] for e in chain(store)] == [f"j{i}" for i in range(5)]
