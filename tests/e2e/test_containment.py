"""Jobs that try to outlive their attempt, under the real supervisord."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import Home, wait_until
from tests.helpers import alive


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_daemon_a_supervised_job_detached_does_not_survive_its_attempt(
    home: Home, tmp_path: Path, mode: str
) -> None:
    # Without its environment the monitor's orphan sweep cannot tell it from any
    # other process: only the worker's containment can kill it.
    pidfile = tmp_path / "daemon.pid"
    home.fast()
    home.configure(job_cgroup=mode)
    job = home.enqueue(
        f"setsid -f env -i sh -c 'echo $$ > {pidfile}; exec sleep 303'; "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done"
    )
    home.run("worker", "start", "--detach", "--count", "1")
    pid = None
    try:
        wait_until(lambda: home.job(job)["state"] == "completed", 30, "the job to complete")
        pid = int(pidfile.read_text())
        wait_until(lambda: not alive(pid), 5, "the daemon to be killed with its attempt")
        home.run("shutdown")
        assert not alive(pid)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
