"""Chaos with real supervisord and real processes (issue 5): each scenario injects
its fault during a drain and then checks every invariant (tests/chaos/harness.py)."""

from __future__ import annotations

import json

import pytest

from queuectl.trail_files import files
from tests.chaos import scenarios
from tests.chaos.harness import Cluster


@pytest.mark.timeout(240)
def test_random_worker_sigkills_during_a_drain(chaos: Cluster) -> None:
    res = scenarios.random_kills(chaos, jobs=150, every=0.8)
    res.report.ok()
    assert res.faults >= 3, "the drain ended before enough kills"
    assert res.report.lost == 0
    # A same-host crash is recovered within about one monitor interval (0.3 s here).
    assert res.delays and max(res.delays) < 3, res.delays


@pytest.mark.parametrize("point", ["after_claim_commit", "before_finish_commit", "after_finish_commit"])
def test_worker_crash_points(chaos: Cluster, point: str) -> None:
    res = scenarios.failpoint(chaos, point, jobs=20, crashes=3)
    res.report.ok()
    if point == "after_finish_commit":
        assert res.report.duplicates == 0  # its result was in: nothing runs again
    else:
        assert res.report.recoveries >= 3


@pytest.mark.parametrize("point", ["trail_after_seal", "trail_mid_append", "trail_after_append"])
def test_audit_writers_killed_between_commit_and_append(chaos: Cluster, point: str) -> None:
    # Each crash leaves sealed lines unwritten, a line cut in the middle, or lines
    # written but not recorded: the next writer completes the files, nothing twice.
    res = scenarios.trail_crashes(chaos, point, jobs=24, crashes=3)
    res.report.ok()  # includes `audit verify --against-db`
    logs = chaos.path / "logs"
    seqs = [json.loads(line)["seq"] for f in files(logs) for line in f.read_text().splitlines()]
    assert seqs == list(range(1, chaos.store.trail.head()[0] + 1))


def test_monitor_killed_after_its_compare_and_set(chaos: Cluster) -> None:
    res = scenarios.failpoint(chaos, "monitor_after_cas", jobs=10, crashes=2)
    res.report.ok()
    assert res.report.recoveries >= 2


def test_sigstopped_worker_is_recovered_and_its_late_result_dropped(sqlite_chaos: Cluster) -> None:
    res = scenarios.sigstop(sqlite_chaos, jobs=30, rounds=2)
    res.report.ok()
    assert res.report.recoveries >= 2


@pytest.mark.timeout(240)
def test_monitor_sigkills_and_three_monitors_at_once(chaos: Cluster) -> None:
    res = scenarios.monitor_chaos(chaos, jobs=100)
    res.report.ok()
    assert res.faults >= 3


@pytest.mark.parametrize("everything", [True, False], ids=["tree", "group"])
def test_supervisord_sigkilled_then_started_again(sqlite_chaos: Cluster, everything: bool) -> None:
    res = scenarios.supervisord_kill(sqlite_chaos, jobs=80, everything=everything)
    res.report.ok()


def test_supervisord_tree_sigkilled_postgres(pg_chaos: Cluster) -> None:
    scenarios.supervisord_kill(pg_chaos, jobs=80, everything=True).report.ok()


def test_jobs_ignoring_sigterm_with_grandchildren_leave_nothing(sqlite_chaos: Cluster) -> None:
    res = scenarios.stubborn_timeouts(sqlite_chaos, jobs=30, stubborn=4)
    res.report.ok()


def test_a_database_held_busy_makes_workers_wait_not_die(chaos: Cluster) -> None:
    scenarios.busy_database(chaos, jobs=120, hold=4.0).report.ok()


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_restarted_mid_drain(pg_chaos: Cluster) -> None:
    if scenarios.pg_cluster_version() is None:
        pytest.skip("restarting PostgreSQL needs root and Debian's pg_ctlcluster")
    res = scenarios.pg_restart(pg_chaos, jobs=120)
    res.report.ok()
    assert res.faults == 1 and res.report.lost == 0


@pytest.mark.postgres
def test_pg_terminate_backend_of_the_workers(pg_chaos: Cluster) -> None:
    res = scenarios.pg_terminate(pg_chaos, jobs=120, every=1.0)
    res.report.ok()
    assert res.faults >= 2
