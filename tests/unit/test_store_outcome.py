"""The outcome values a store records (queuectl/store/outcome.py): each names where it
sends the job and holds what that state records."""

from __future__ import annotations

import pytest

from queuectl.models import JobState, Outcome, RecoveryGuard, Transition
from queuectl.store.outcome import (
    Completed,
    Dead,
    GivenBack,
    RecoveredDead,
    RecoveredRetry,
    Retry,
    finished,
    recovered,
)
from tests.helpers import T0


def test_an_attempt_ends_in_the_outcome_its_transition_names() -> None:
    result = Outcome(2, "exited with code 2", "out", "err")
    assert finished(Transition(JobState.COMPLETED, None), Outcome(0, None, "o", "e")) == Completed("o", "e")
    retry = finished(Transition(JobState.FAILED, T0 + 4), result)
    assert retry == Retry(T0 + 4, 2, "exited with code 2", "out", "err")
    assert finished(Transition(JobState.DEAD, None), result) == Dead(2, "exited with code 2", "out", "err")
    columns = [(o.state, o.next_run_at, o.exit_code, o.error) for o in (Completed(), retry, Dead(1, "x"))]
    assert columns == [
        (JobState.COMPLETED, None, 0, None),
        (JobState.FAILED, T0 + 4, 2, "exited with code 2"),
        (JobState.DEAD, None, 1, "x"),
    ]


@pytest.mark.parametrize(
    "move",
    [
        Transition(JobState.PENDING, T0),
        Transition(JobState.PROCESSING, None),
        Transition(JobState.FAILED, None),
    ],
)
def test_no_outcome_for_a_transition_an_attempt_cannot_end_in(move: Transition) -> None:
    with pytest.raises(ValueError):
        finished(move, Outcome(1))


def test_a_recovery_names_its_state_and_whether_the_attempt_counts() -> None:
    guard = RecoveryGuard(holder="monitor:1")
    retry = recovered(JobState.FAILED, T0 + 2, "heartbeat_lost", "gone", audit="{}", guard=guard)
    assert retry == RecoveredRetry("heartbeat_lost", "gone", T0 + 2, audit="{}", guard=guard)
    dead = recovered(JobState.DEAD, None, "timeout", "too slow")
    assert dead == RecoveredDead("timeout", "too slow")
    back = recovered(JobState.PENDING, T0, "released", "never started")
    assert back == GivenBack("released", "never started", T0)
    assert [(o.state, o.next_run_at, o.give_back) for o in (retry, dead, back)] == [
        (JobState.FAILED, T0 + 2, False),
        (JobState.DEAD, None, False),
        (JobState.PENDING, T0, True),
    ]
    assert dead.audit is None and dead.guard == RecoveryGuard()


@pytest.mark.parametrize(
    ("state", "next_run_at"),
    [
        (JobState.COMPLETED, None),
        (JobState.FAILED, None),
        (JobState.PENDING, None),
        (JobState.PROCESSING, T0),
    ],
)
def test_no_recovery_to_a_state_it_cannot_send_a_job_to(state: JobState, next_run_at: float | None) -> None:
    with pytest.raises(ValueError):
        recovered(state, next_run_at, "manual", "op")


def test_a_guard_that_gives_the_attempt_back_admits_only_pending() -> None:
    # Stores write a give-back from the outcome's kind: a flag that says otherwise
    # must not be turned silently into a counted attempt.
    give_back = RecoveryGuard(holder="monitor:1", give_back=True)
    back = recovered(JobState.PENDING, T0, "worker_died", "never started", guard=give_back)
    assert isinstance(back, GivenBack) and back.guard == give_back
    for state, at in ((JobState.FAILED, T0), (JobState.DEAD, None)):
        with pytest.raises(ValueError):
            recovered(state, at, "worker_died", "x", guard=give_back)
