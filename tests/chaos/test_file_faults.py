"""The SQLite database file replaced under running supervisord, with the chaos
checker's invariants (docs/reliability.md: "database file replaced")."""

from __future__ import annotations

from tests.chaos.file_faults import database_replaced
from tests.chaos.harness import Cluster


def test_a_database_replaced_under_running_processes_keeps_every_invariant(sqlite_chaos: Cluster) -> None:
    c = sqlite_chaos
    result = database_replaced(c, jobs=60, workers=2, swaps=2)
    result.report.ok()
    assert result.faults == 2
    sv_log = (c.path / "logs" / "supervisord.log").read_text()
    # Every worker and the monitor stopped with exit 5 at each swap, and came back.
    assert sv_log.count("exit status 5") >= 2 * 3, sv_log
    assert result.report.lost == 0
    assert result.report.duplicates == result.report.explained
