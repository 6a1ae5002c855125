"""A Hypothesis state machine drives a Store through random interleavings of enqueue,
claim, finish, a stale-lease finish, clock ticks, monitor passes, `dlq retry`, purges
and folds of the counts, and compares it after every step with a dict model (issue 5;
purge and fold: issue 6, SQLite's counts snapshot).  Both backends; each
example gets a fresh database (a file, or a PostgreSQL schema)."""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from queuectl.config import Config
from queuectl.logs import json_logger
from queuectl.models import RUNNABLE, JobState, NewJob, Outcome, Transition, WorkerInfo, decide
from queuectl.monitor import Monitor
from queuectl.store import Store, open_store
from queuectl.store.outcome import finished
from queuectl.store.sqlite import SQLiteStore
from tests.conftest import PG_SERVER, _unavailable
from tests.helpers import T0

CFG = Config()


#: Workers the machine claims for, registered on another host (judged by heartbeat).
WORKERS = ("w1", "w2")


class StoreMachine(RuleBasedStateMachine):
    """`model` maps id -> the fields a store must agree on; `held` are the (id, lease)
    pairs claims handed out and not yet finished, `owner` who holds them and since
    when; `old` the ones whose lease is gone; `rows` the workers table (present,
    heartbeat, the job its last heartbeat named)."""

    open_store: Callable[[], tuple[Store, Callable[[], None]]]
    logs: Path

    def __init__(self) -> None:
        super().__init__()
        self.store, self._close = self.open_store()
        self.monitor = Monitor(
            self.store, queue=f"sm-{uuid.uuid4().hex}", logs_dir=self.logs, log=json_logger(io.StringIO())
        )
        self.now = T0
        self.n = 0
        self.model: dict[str, dict[str, Any]] = {}
        self.held: dict[str, int] = {}
        self.owner: dict[str, tuple[str, float]] = {}
        self.old: list[tuple[str, int]] = []
        self.rows: dict[str, dict[str, Any]] = {}

    def teardown(self) -> None:
        self._close()

    # --- the model's rules ----------------------------------------------------------

    def _due(self) -> list[str]:
        due = [
            (-m["priority"], m["next_run_at"], jid)
            for jid, m in self.model.items()
            if m["state"] in RUNNABLE and m["next_run_at"] <= self.now
        ]
        return [jid for *_, jid in sorted(due)]

    def _end(self, jid: str, ok: bool) -> tuple[JobState, float | None]:
        m = self.model[jid]
        move = decide(
            ok=ok,
            attempts=m["attempts"],
            max_retries=m["max_retries"],
            backoff_base=CFG.backoff_base,
            backoff_max=CFG.backoff_max,
            now=self.now,
        )
        m["state"] = move.state
        m["at"] = self.now
        if move.next_run_at is not None:
            m["next_run_at"] = move.next_run_at
        self.old.append((jid, m["lease"]))
        del self.held[jid]
        del self.owner[jid]
        return move.state, move.next_run_at

    def _give_back(self, jid: str) -> None:
        m = self.model[jid]
        m.update(state=JobState.PENDING, attempts=m["attempts"] - 1, next_run_at=self.now, at=self.now)
        self.old.append((jid, m["lease"]))
        del self.held[jid]
        del self.owner[jid]

    def _register(self, worker: str) -> None:
        self.store.register_worker(WorkerInfo(worker, "elsewhere", 1, None, self.now, self.now))
        self.rows[worker] = {"hb": self.now, "holding": None}

    # --- rules -------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        assert self.store.counts()["pending"] == 0
        for w in WORKERS:
            self._register(w)

    @rule(
        jobs=st.lists(
            st.tuples(
                st.integers(0, 2), st.integers(-1, 1), st.sampled_from(["x", "x'); DROP TABLE jobs;--", "é"])
            ),
            min_size=1,
            max_size=3,
        )
    )
    def enqueue(self, jobs: list[tuple[int, int, str]]) -> None:
        new = []
        for retries, priority, tag in jobs:
            self.n += 1
            jid = f"{tag}-{self.n:03d}"
            new.append(NewJob(jid, "true", retries, priority, 60.0, self.now))
        assert self.store.enqueue(new, self.now) == [j.id for j in new]
        for j in new:
            self.model[j.id] = {
                "state": JobState.PENDING,
                "attempts": 0,
                "lease": 0,
                "max_retries": j.max_retries,
                "priority": j.priority,
                "next_run_at": self.now,
                "at": self.now,
            }

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        due = self._due()
        job = self.store.claim(worker, self.now)
        if not due:
            assert job is None
            return
        assert job is not None and job.id == due[0], (job, due[:3])
        m = self.model[job.id]
        m["state"] = JobState.PROCESSING
        m["at"] = self.now
        m["attempts"] += 1
        m["lease"] += 1
        assert (job.attempts, job.lease, job.worker_id) == (m["attempts"], m["lease"], worker)
        self.held[job.id] = job.lease
        self.owner[job.id] = (worker, self.now)

    @rule(worker=st.sampled_from(WORKERS), data=st.data(), stale_lease=st.booleans())
    def heartbeat(self, worker: str, data: st.DataObject, stale_lease: bool) -> None:
        """A heartbeat naming one of the worker's jobs (or an old lease, or none);
        a worker whose row is gone registers again, as Worker does."""
        mine = sorted(j for j, (w, _) in self.owner.items() if w == worker)
        jid: str | None = None
        lease: int | None = None
        if stale_lease and self.old:
            jid, lease = data.draw(st.sampled_from(self.old))
        elif mine:
            jid = data.draw(st.sampled_from(mine))
            lease = self.held[jid]
        beat = self.store.heartbeat(worker, jid, lease, self.now)
        present = worker in self.rows
        assert beat.registered == present
        assert beat.held == (jid is None or self.held.get(jid) == lease)
        if present:
            self.rows[worker].update(hb=self.now, holding=jid)
        else:
            self._register(worker)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        jid = data.draw(st.sampled_from(sorted(self.held)))
        lease = self.held[jid]
        state, nxt = self._end(jid, ok)
        code = 0 if ok else 1
        assert self.store.finish(
            jid, lease, finished(Transition(state, nxt), Outcome(code, None, "out", "")), self.now
        )

    @precondition(lambda self: self.old)
    @rule(data=st.data(), state=st.sampled_from([JobState.COMPLETED, JobState.FAILED, JobState.DEAD]))
    def stale_finish(self, data: st.DataObject, state: JobState) -> None:
        jid, lease = data.draw(st.sampled_from(self.old))
        nxt = self.now + 1 if state is JobState.FAILED else None
        assert not self.store.finish(
            jid, lease, finished(Transition(state, nxt), Outcome(0, None, "late", "")), self.now
        )

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 30.0, 100.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def monitor_pass(self) -> None:
        """The monitor's rules: a worker silent past heartbeat_timeout is stale and
        its jobs fail; a job whose worker has no row, or heartbeated since the claim
        without naming it, never started (its attempt is given back); a job past
        timeout + kill_grace + timeout_grace fails; stale rows holding no job go."""
        done = self.monitor.run_once(now=self.now)
        stale = {w for w, r in self.rows.items() if self.now - r["hb"] > CFG.heartbeat_timeout}
        failed, given_back = set(), set()
        for jid, (w, started) in self.owner.items():
            row = self.rows.get(w)
            # A heartbeat since the claim that named another job shows the claim never
            # reached its worker, whether or not the worker went silent afterwards.
            if row is None or (row["hb"] > started and row["holding"] != jid):
                given_back.add(jid)
            elif w in stale or self.now - started > 60.0 + CFG.kill_grace + CFG.timeout_grace:
                failed.add(jid)
        recovered = {r.job_id: r.attempt_given_back for r in done if r.event == "job_recovered"}
        assert recovered == {**dict.fromkeys(failed, False), **dict.fromkeys(given_back, True)}
        for jid in failed:
            self._end(jid, ok=False)
        for jid in given_back:
            self._give_back(jid)
        removed = {r.worker_id for r in done if r.event == "worker_removed"}
        busy = {w for w, _ in self.owner.values()}
        assert removed == stale - busy
        for w in removed:
            del self.rows[w]

    @rule(data=st.data(), everything=st.booleans())
    def dlq_retry(self, data: st.DataObject, everything: bool) -> None:
        dead = sorted(j for j, m in self.model.items() if m["state"] is JobState.DEAD)
        if everything:
            ids = None
        else:
            ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=2)) if self.model else []
        moved = self.store.dlq_retry(ids, self.now)
        want = dead if ids is None else sorted(set(ids) & set(dead))
        assert sorted(moved) == want
        for jid in want:
            self.model[jid].update(state=JobState.PENDING, attempts=0, next_run_at=self.now, at=self.now)

    @rule(
        states=st.sampled_from([[JobState.COMPLETED], [JobState.DEAD], [JobState.COMPLETED, JobState.DEAD]]),
        everything=st.booleans(),
    )
    def purge(self, states: list[JobState], everything: bool) -> None:
        # Everything: the newest events go too (SQLite may hand their seqs out again).
        before = None if everything else self.now
        gone = {
            jid
            for jid, m in self.model.items()
            if m["state"] in states and (before is None or m["at"] < before)
        }
        assert self.store.purge(states, before) == len(gone)
        for jid in gone:
            del self.model[jid]
        self.old = [(jid, lease) for jid, lease in self.old if jid not in gone]

    @rule()
    def fold_counts(self) -> None:
        self.store.fold_counts()

    # --- the comparison ----------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        jobs = {j.id: j for j in self.store.list_jobs()}
        assert jobs.keys() == self.model.keys()
        for jid, m in self.model.items():
            j = jobs[jid]
            assert (j.state, j.attempts, j.lease) == (m["state"], m["attempts"], m["lease"]), jid
            assert j.attempts <= j.max_retries + 1
            if m["state"] in RUNNABLE:
                assert j.next_run_at == pytest.approx(m["next_run_at"]), jid
        counts = self.store.counts()
        for s in JobState:
            assert counts[s.value] == sum(1 for m in self.model.values() if m["state"] is s)


def _sqlite_factory(folder: Path) -> Callable[[], tuple[Store, Callable[[], None]]]:
    def make() -> tuple[Store, Callable[[], None]]:
        db = Path(tempfile.mkdtemp(dir=folder)) / "queue.db"
        store = SQLiteStore(str(db))
        return store, store.close

    return make


def _pg_factory() -> Callable[[], tuple[Store, Callable[[], None]]]:
    try:
        import psycopg

        psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3).close()
    except Exception as exc:  # no driver or no server: skip (or fail under CI)
        _unavailable(f"PostgreSQL is not available at {PG_SERVER}: {type(exc).__name__}")

    def make() -> tuple[Store, Callable[[], None]]:
        schema = f"qsm_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        store = open_store(f"{PG_SERVER}?options=-csearch_path%3D{schema}")

        def close() -> None:
            store.close()
            with psycopg.connect(PG_SERVER, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

        return store, close

    return make


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_store_matches_the_model(backend: str, tmp_path: Path) -> None:
    StoreMachine.open_store = staticmethod(
        _sqlite_factory(tmp_path) if backend == "sqlite" else _pg_factory()
    )  # type: ignore[assignment]
    StoreMachine.logs = tmp_path / "logs"
    examples = int(os.environ.get("QUEUECTL_STATEFUL_EXAMPLES", "25" if backend == "sqlite" else "15"))
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
