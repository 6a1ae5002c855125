"""Queue.health on both stores, at fixed instants: the recovery pass's age and jobs
processing past their timeout (the supervisor half is in tests/unit/test_cli_health.py)."""

from __future__ import annotations

from queuectl.api import Queue
from queuectl.models import MONITOR_LEASE, NewJob
from queuectl.store import Store
from tests.helpers import T0


def _job(job_id: str, timeout: float) -> NewJob:
    return NewJob(id=job_id, command="true", max_retries=0, priority=0, timeout=timeout, run_at=T0)


def _pass(store: Store, at: float) -> None:
    assert store.acquire_lease(MONITOR_LEASE, "m1", "monitor", 10, now=at)
    assert store.release_lease(MONITOR_LEASE, "m1", True, now=at)


def test_no_pass_yet_then_a_recent_pass_then_an_overdue_one(store: Store) -> None:
    q = Queue(store)
    q.store.config_set({"monitor_interval": "5"})
    (problem,) = q.health(now=T0)
    assert problem["check"] == "recovery" and "no recovery pass has run yet" in problem["message"]
    _pass(store, T0)
    assert q.health(now=T0 + 15) == []  # three intervals: still served
    (late,) = q.health(now=T0 + 15.5)
    assert late["check"] == "recovery" and late["age_s"] == 15.5
    assert "no recovery pass for 15.5s (over 3 x monitor_interval = 15s)" in late["message"]


def test_a_job_processing_past_its_timeout_and_both_graces(store: Store) -> None:
    q = Queue(store)
    store.config_set({"kill_grace": "2", "timeout_grace": "3", "monitor_interval": "100"})
    store.enqueue([_job("slow", 10), _job("fine", 60)], T0)
    assert store.claim("w1", now=T0).id == "fine"  # type: ignore[union-attr]
    assert store.claim("w2", now=T0).id == "slow"  # type: ignore[union-attr]
    _pass(store, T0 + 15)
    # 10 s timeout + 2 + 3: its worker should have killed and recorded it by then.
    assert q.health(now=T0 + 15) == []
    (problem,) = q.health(now=T0 + 15.5)
    assert problem["check"] == "timeout" and problem["job_id"] == "slow"
    assert problem["message"] == "job slow processing for 15.5s, past its 10s timeout (worker w2)"
