"""`queuectl top` on a real home with a real worker running a job: one plain frame
(--once, or stdout not a terminal), and the live view on a pseudo-terminal, which q
ends."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import time

from tests.helpers import QHome, wait_until


def test_once_prints_one_plain_frame_with_the_running_job_and_its_worker(qhome: QHome) -> None:
    qhome.enqueue("true", "--queue", "mail")
    qhome.invoke("recover")
    job = qhome.enqueue("echo '\x1b[31m'; sleep 30")
    qhome.spawn_worker()
    wait_until(lambda: qhome.job(job)["state"] == "processing", 15, "the job to start")
    for args in (("top", "--once"), ("top",)):  # a pipe is not a terminal: one frame too
        r = qhome.run(*args)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout  # no screen control, and the command's escape escaped
        text = r.stdout
        assert "running jobs: 1" in text and job in text and "\\x1b[31m" in text
        assert "workers: 1" in text
        (worker_row,) = [ln for ln in text.splitlines() if ln.endswith(job) and not ln.startswith(job)]
        assert worker_row.split()[4].endswith("s")  # its heartbeat age
        assert "recovery: last pass" in text
        rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.startswith(("mail", "total"))}
        assert rows["mail"][2] == "1"  # mail: 1 completed
        assert rows["total"][1] == "1"  # 1 processing


def test_the_live_view_redraws_until_q(qhome: QHome) -> None:
    qhome.enqueue("true")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        qhome.cmd("top", "--interval", "0.2"), env=qhome.env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    seen = b""

    def read() -> bytes:
        nonlocal seen
        if select.select([master], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):  # EIO: the process ended, closing the terminal
                seen += os.read(master, 65536)
        return seen

    try:
        wait_until(lambda: read().count(b"\x1b[H\x1b[2J") >= 2, 15, "two redraws")
        assert b"queuectl top" in seen and b"default" in seen
        os.write(master, b"q")
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            read()
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_an_interval_out_of_range_is_one_line_and_exit_2(qhome: QHome) -> None:
    for bad in ("1e12", "0", "-1", "soon"):
        r = qhome.run("top", "--interval", bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (bad, r)
