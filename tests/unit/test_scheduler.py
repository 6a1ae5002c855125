"""scheduler.py at fixed instants: which duties run, in which order, and when the
next one is due."""

from __future__ import annotations

import pytest

from queuectl.scheduler import Duty, Scheduler


def recorder(ran: list[str], name: str, answer: str | None = None) -> Duty:
    def action() -> str | None:
        ran.append(name)
        return answer

    return Duty(name, lambda: 2.0, action)


def test_a_duty_that_never_ran_is_due_at_once_then_every_interval() -> None:
    ran: list[str] = []
    beat = recorder(ran, "beat")
    s = Scheduler(beat)
    assert s.next_due(10.0) == 10.0
    s.run_due(10.0)
    assert ran == ["beat"] and beat.last == 10.0
    assert s.next_due(11.0) == 12.0
    s.run_due(11.9)
    assert ran == ["beat"]
    s.run_due(12.0)
    assert ran == ["beat", "beat"]


def test_due_duties_run_in_order_and_a_reason_stops_the_rest() -> None:
    ran: list[str] = []
    first, stop, last = recorder(ran, "first"), recorder(ran, "stop", "stop now"), recorder(ran, "last")
    s = Scheduler(first, stop, last)
    assert s.run_due(0.0) == "stop now"
    assert ran == ["first", "stop"]
    assert last.last is None  # still due
    assert s.next_due(1.0) == 1.0


def test_the_interval_is_read_each_time() -> None:
    every = [5.0]
    duty = Duty("refresh", lambda: every[0], lambda: None, last=0.0)
    s = Scheduler(duty)
    assert s.next_due(1.0) == 5.0
    every[0] = 1.0
    assert s.next_due(1.0) == 1.0


def test_a_duty_that_raised_stays_due() -> None:
    def fail() -> None:
        raise RuntimeError("busy")

    duty = Duty("refresh", lambda: 2.0, fail, last=1.0)
    s = Scheduler(duty)
    with pytest.raises(RuntimeError):
        s.run_due(3.0)
    assert duty.last == 1.0
    assert s.next_due(3.5) == 3.0


def test_a_duty_done_elsewhere_keeps_its_rhythm_in_every_scheduler() -> None:
    ran: list[str] = []
    beat = recorder(ran, "beat")
    between, running = Scheduler(beat), Scheduler(beat)
    beat.done(4.0)
    assert between.next_due(4.0) == running.next_due(4.0) == 6.0
    running.run_due(6.0)
    assert between.next_due(6.0) == 8.0


def test_without_now_the_clock_is_read_before_each_duty() -> None:
    clock = iter([0.0, 2.5])
    ran: list[str] = []
    slow = Duty("pass", lambda: 10.0, lambda: ran.append("pass") and None, last=-10.0)
    beat = Duty("beat", lambda: 2.0, lambda: ran.append("beat") and None, last=0.0)
    Scheduler(slow, beat, clock=lambda: next(clock)).run_due()
    assert ran == ["pass", "beat"]
    assert (slow.last, beat.last) == (0.0, 2.5)


def test_no_duty_no_due_time() -> None:
    assert Scheduler().next_due(1.0) is None
    assert Scheduler().run_due(1.0) is None
