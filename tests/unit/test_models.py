"""models.py: the one transition rule, backoff, the JSON form, times and ids."""

from __future__ import annotations

import pytest

from queuectl.models import (
    ALLOWED,
    RUNNABLE,
    TERMINAL,
    Event,
    Job,
    JobState,
    Outcome,
    Transition,
    backoff_delay,
    decide,
    iso,
    new_id,
    parse_time,
)
from tests.helpers import T0


def _decide(
    ok: bool, attempts: int, max_retries: int = 3, base: float = 2.0, cap: float = 3600.0
) -> Transition:
    return decide(
        ok=ok, attempts=attempts, max_retries=max_retries, backoff_base=base, backoff_max=cap, now=T0
    )


def test_success_completes_whatever_the_attempt() -> None:
    assert _decide(True, 1) == Transition(JobState.COMPLETED, None)
    assert _decide(True, 4) == Transition(JobState.COMPLETED, None)


@pytest.mark.parametrize(("attempts", "delay"), [(1, 2.0), (2, 4.0), (3, 8.0)])
def test_failures_retry_after_base_to_the_attempts(attempts: int, delay: float) -> None:
    assert _decide(False, attempts) == Transition(JobState.FAILED, T0 + delay)


def test_dead_after_max_retries_plus_one_attempts() -> None:
    assert _decide(False, 4, max_retries=3).state is JobState.DEAD
    assert _decide(False, 4, max_retries=3).next_run_at is None
    assert _decide(False, 1, max_retries=0).state is JobState.DEAD
    assert _decide(False, 3, max_retries=3).state is JobState.FAILED


def test_backoff_is_capped_and_never_overflows() -> None:
    assert backoff_delay(3, 2, 5) == 5.0
    assert backoff_delay(10_000, 1000, 3600) == 3600.0
    assert backoff_delay(2, 1, 3600) == 1.0
    assert _decide(False, 1, cap=0).next_run_at == T0


def test_outcome_ok_only_for_a_clean_exit_zero() -> None:
    assert Outcome(exit_code=0).ok
    assert not Outcome(exit_code=1).ok
    assert not Outcome(exit_code=None, error="cannot start").ok
    assert not Outcome(exit_code=0, timed_out=True).ok


def test_transition_table() -> None:
    # WAITING: enqueued after parents that have not all completed.
    assert ALLOWED[None] == {JobState.PENDING, JobState.WAITING}
    # PENDING: an attempt given back (recovered before its command started).
    assert ALLOWED[JobState.PROCESSING] == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.DEAD,
        JobState.PENDING,
        JobState.CANCELLED,
    }
    assert ALLOWED[JobState.WAITING] == {JobState.PENDING, JobState.CANCELLED}
    assert ALLOWED[JobState.DEAD] == {JobState.PENDING}
    for state in (JobState.COMPLETED, JobState.CANCELLED):
        assert ALLOWED[state] == frozenset()
    for state in RUNNABLE:
        assert ALLOWED[state] == {JobState.PROCESSING, JobState.CANCELLED}
    assert set(RUNNABLE) | set(TERMINAL) | {JobState.PROCESSING, JobState.WAITING} == set(JobState)
    assert str(JobState.DEAD) == "dead"


def _job(**kw: object) -> Job:
    base: dict[str, object] = {
        "id": "j1",
        "command": "true",
        "state": JobState.FAILED,
        "attempts": 1,
        "max_retries": 3,
        "priority": 0,
        "timeout": 60.0,
        "lease": 1,
        "created_at": T0,
        "updated_at": T0 + 1,
        "run_at": T0,
        "next_run_at": T0 + 3,
        "started_at": T0 + 0.5,
        "finished_at": T0 + 1,
        "worker_id": "w1",
        "exit_code": 1,
        "error": "exited with code 1",
        "stdout": "out",
        "stderr": "err",
    }
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_job_json_form() -> None:
    data = _job().to_dict()
    assert data["state"] == "failed"
    assert data["created_at"] == "2023-11-14T22:13:20.000Z"
    assert data["next_run_at"] == "2023-11-14T22:13:23.000Z"
    assert data["started_at"] == "2023-11-14T22:13:20.500Z"
    assert data["stdout"] == "out"
    assert "stdout" not in _job().to_dict(output=False)
    # Only a waiting job shows when it runs next.
    assert _job(state=JobState.COMPLETED).to_dict()["next_run_at"] is None


def test_event_json_form() -> None:
    event = Event(7, "j1", T0, "processing", "failed", 2, "w1", 1, "boom", None)
    assert event.to_dict() == {
        "at": "2023-11-14T22:13:20.000Z",
        "from": "processing",
        "to": "failed",
        "attempt": 2,
        "worker_id": "w1",
        "exit_code": 1,
        "error": "boom",
        "reason": None,
    }


def test_times_round_trip_in_utc() -> None:
    assert iso(None) is None
    assert iso(T0 + 0.123) == "2023-11-14T22:13:20.123Z"
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14T22:13:20") == T0  # no zone: UTC
    assert parse_time("2023-11-14T23:13:20+01:00") == T0
    with pytest.raises(ValueError):
        parse_time("tomorrow")


def test_any_float_a_database_holds_is_printed_as_a_time() -> None:
    # A hand-edited row must not stop `inspect` or the audit trail's sealing: every
    # float prints, the far ones with a signed, expanded year, exact to the second.
    import sys

    for ts in (1e300, -1e300, sys.float_info.max, -sys.float_info.max, 1e20):
        text = str(iso(ts))
        assert text[0] == ("+" if ts > 0 else "-") and text.endswith(".000Z"), text
    assert iso(1e20) == "+3168873852651-02-22T09:46:40.000Z"  # 1e20 s: exact, not float-rounded
    assert iso(253402300800.5) == "+10000-01-01T00:00:00.500Z"
    assert iso(float("nan")) == "nan" and iso(float("-inf")) == "-inf"


def test_ids_are_short_unique_and_sortable() -> None:
    ids = [new_id(T0) for _ in range(2000)] + [new_id(T0 + 1) for _ in range(10)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 16 for i in ids)
    assert new_id() > ids[-1]
