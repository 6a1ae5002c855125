"""ParentWatch: a process whose parent (supervisord) dies gets a warm stop, by the
kernel's SIGHUP at once or, without it, by its changed parent pid; its log lines
then go to its own file, never to the pipe the dead parent used to read.

Real processes: a parent (a small Python process) starts the watched child, prints
its pid, and is SIGKILLed by the test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import alive, wait_until

#: The watched child: waits (select() on the wake-up pipe) until `signals.warm`,
#: then logs and writes what it saw to argv[1].
CHILD = """
import json, os, select, sys
from queuectl import logs
from queuectl.signals import ParentWatch, StopSignals

logs.install()
log = logs.json_logger(role="child")
signals = StopSignals()
signals.install()
install = sys.argv[2] == "install"
if install:
    watch = signals.watch_parent()
else:  # the parent pid alone (no PR_SET_PDEATHSIG, no SIGHUP)
    watch = signals.parent = ParentWatch()
log.info("before")
print("ready", flush=True)
while not signals.warm:
    select.select([signals.fd], [], [], 0.05 if not install else 30)
    signals.drain()
log.info("after")
with open(sys.argv[1], "w") as f:
    json.dump({"hup": watch._hup, "start_parent": watch.pid, "parent": os.getppid()}, f)
"""

#: The parent: starts the child with stdout to our pipe, prints the child's pid, waits.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
child.wait()
"""


def _run(tmp_path: Path, mode: str) -> tuple[dict[str, object], int, Path]:
    """Start parent -> child, kill the parent, wait for the child to stop by itself;
    (what the child saw, the stderr pipe's read end, the child's own log file)."""
    out = tmp_path / "seen.json"
    own = tmp_path / "own.log"
    r, w = os.pipe()  # the child's stderr: we hold the read end and never drain it
    env = {**os.environ, "QUEUECTL_LOG_FILE": str(own)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(out), mode],
        stdout=subprocess.PIPE,
        stderr=w,
        env=env,
        text=True,
    )
    os.close(w)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: not alive(child), 15, "the child to stop by itself")
    finally:
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        with contextlib.suppress(Exception):
            assert parent.stdout is not None
            parent.stdout.close()
    return json.loads(out.read_text()), r, own


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def _drain(fd: int) -> list[str]:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    os.close(fd)
    return [json.loads(line)["event"] for line in data.decode().splitlines()]


def test_the_kernels_sighup_stops_a_child_whose_parent_was_killed(tmp_path: Path) -> None:
    seen, r, own = _run(tmp_path, "install")
    assert seen["hup"] is True  # woken by PR_SET_PDEATHSIG, not by a timeout
    assert seen["parent"] != seen["start_parent"]
    # Before: to stderr.  After: to its own file, not to the pipe nobody reads now.
    assert _drain(r) == ["before"]
    assert _events(own) == ["after"]


def test_a_changed_parent_pid_alone_stops_the_child(tmp_path: Path) -> None:
    seen, r, own = _run(tmp_path, "poll")
    assert seen["hup"] is False
    assert seen["parent"] != seen["start_parent"]
    assert _drain(r) == ["before"]
    assert _events(own) == ["after"]


def test_a_sighup_with_the_parent_alive_is_a_warm_stop_that_keeps_stderr(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    own = tmp_path / "own.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), "install"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "QUEUECTL_LOG_FILE": str(own)},
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    seen = json.loads(out.read_text())
    assert seen["hup"] is True and seen["parent"] == seen["start_parent"] == os.getpid()
    assert [json.loads(line)["event"] for line in err.splitlines()] == ["before", "after"]
    assert not own.exists()
