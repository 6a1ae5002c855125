"""executor.py with the real /bin/sh: exit codes, output capture, the job's own
session, and timeouts that kill the whole process group."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl import executor
from tests.helpers import alive, group_members, wait_until


@pytest.fixture
def files() -> Iterator[executor.OutputFiles]:
    f = executor.OutputFiles()
    try:
        yield f
    finally:
        f.close()


def run(files: executor.OutputFiles, command: str, timeout: float = 10.0, **kw: object) -> executor.Outcome:
    job = executor.Command(
        command=command,
        timeout=timeout,
        env={"PATH": os.environ["PATH"], "QUEUECTL_JOB_ID": "j1"},
        kill_grace=float(kw.pop("kill_grace", 5.0)),  # type: ignore[arg-type]
        output_limit=int(kw.pop("output_limit", 64 * 1024)),  # type: ignore[call-overload]
    )
    return executor.run(job, files, **kw)  # type: ignore[arg-type]


def test_success_captures_both_streams(files: executor.OutputFiles) -> None:
    out = run(files, 'echo "hi $QUEUECTL_JOB_ID"; echo oops >&2')
    assert out.ok
    assert (out.exit_code, out.error, out.timed_out) == (0, None, False)
    assert out.stdout == "hi j1\n"
    assert out.stderr == "oops\n"


def test_output_files_are_reset_between_jobs(files: executor.OutputFiles) -> None:
    run(files, "echo first")
    assert run(files, "echo second").stdout == "second\n"


def test_quiet_jobs_skip_the_truncate_and_output_never_leaks(files: executor.OutputFiles) -> None:
    # A job that printed nothing leaves nothing to truncate; the files are still empty
    # for the next job, and a job that prints after quiet ones is captured alone.
    for command, expected in [("true", ""), ("true", ""), ("echo late >&2", ""), ("true", "")]:
        out = run(files, command)
        assert out.stdout == expected
    assert run(files, "echo a; echo b >&2").stderr == "b\n"
    assert (run(files, "true").stdout, run(files, "true").stderr) == ("", "")


def test_an_attempt_that_raised_still_resets_the_next(files: executor.OutputFiles) -> None:
    # check() raising stops the wait (the job is killed in the finally); what the job
    # printed must not reach the next attempt.
    def boom() -> str | None:
        raise RuntimeError("check failed")

    with pytest.raises(RuntimeError):
        run(files, "echo leaked; sleep 5", check=boom, check_interval=0.05)
    assert run(files, "true").stdout == ""


def test_nonzero_exit_is_a_failure(files: executor.OutputFiles) -> None:
    out = run(files, "exit 3")
    assert not out.ok
    assert out.exit_code == 3
    assert out.error == "exited with code 3"


def test_command_not_found_is_a_failure(files: executor.OutputFiles) -> None:
    out = run(files, "no-such-command-queuectl-test")
    assert not out.ok
    assert out.exit_code == 127
    assert out.error is not None and "command not found" in out.error
    assert "not found" in out.stderr


def test_only_the_tail_of_large_output_is_kept(files: executor.OutputFiles) -> None:
    out = run(files, "head -c 300000 /dev/zero | tr '\\0' a; printf END", output_limit=1024)
    assert out.ok
    assert len(out.stdout) == 1024
    assert out.stdout.endswith("aaaEND")


def test_the_job_runs_in_its_own_session_without_stdin(files: executor.OutputFiles, tmp_path: Path) -> None:
    info = tmp_path / "info"
    # Fields 5 and 6 of /proc/PID/stat: process group, session.  `cat` would hang on a
    # terminal or a pipe: stdin is /dev/null.
    out = run(files, f"read -r _ _ _ _ pgid sid _ < /proc/$$/stat; echo $sid $pgid > {info}; cat")
    assert out.ok
    sid, pgid = (int(x) for x in info.read_text().split())
    assert sid == pgid != os.getsid(0)


def test_children_left_behind_by_a_finished_job_are_killed(
    files: executor.OutputFiles, tmp_path: Path
) -> None:
    pidfile = tmp_path / "bg.pid"
    out = run(files, f"sleep 60 & echo $! > {pidfile}")
    assert out.ok
    wait_until(lambda: not alive(int(pidfile.read_text())), 5, "the background child to die")


def test_timeout_kills_the_whole_process_group(files: executor.OutputFiles, tmp_path: Path) -> None:
    """The job forks a grandchild that ignores SIGTERM; after the timeout, SIGTERM then
    SIGKILL reach the whole group, so nothing of the job survives."""
    gc_pid = tmp_path / "grandchild.pid"
    sh_pid = tmp_path / "shell.pid"
    command = (
        f"echo $$ > {sh_pid}; sh -c 'trap \"\" TERM; echo $$ > {gc_pid}; exec sleep 60' & sleep 60; wait"
    )
    started: list[int] = []
    t = time.monotonic()
    out = run(files, command, timeout=0.5, kill_grace=0.3, on_start=started.append)
    elapsed = time.monotonic() - t
    assert out.timed_out
    assert not out.ok
    assert out.error == "timeout after 0.5s"
    assert 0.5 <= elapsed < 5
    pgid = started[0]
    assert int(sh_pid.read_text()) == pgid
    grandchild = int(gc_pid.read_text())
    assert grandchild != pgid
    wait_until(lambda: not group_members(pgid), 5, "every process of the job's group to be gone")
    assert not alive(grandchild)


def test_check_callback_stops_the_job(files: executor.OutputFiles) -> None:
    calls = []

    def check() -> str | None:
        calls.append(1)
        return "lease lost" if len(calls) >= 2 else None

    t = time.monotonic()
    out = run(files, "sleep 30", check=check, check_interval=0.05)
    assert time.monotonic() - t < 5
    assert out.error == "lease lost"
    assert out.exit_code == 137  # SIGKILL
    assert not out.ok
    assert not out.timed_out


def test_a_leftover_process_writes_only_into_its_own_attempts_output(
    files: executor.OutputFiles, tmp_path: Path
) -> None:
    """A process of job A that outlives it (here nothing contains it: no worker)
    keeps A's descriptors; job B's output must not get a line of it."""
    pidfile = tmp_path / "leftover.pid"
    leaker = f"echo $$ > {pidfile}; while :; do echo LEAK; echo LEAK >&2; sleep 0.02; done"
    a = run(files, f"setsid sh -c '{leaker}' & while [ ! -s {pidfile} ]; do sleep 0.01; done; echo a")
    pid = wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, "the leftover")
    try:
        assert a.stdout.endswith("a\n")  # its own leftover may write here, and only here
        for _ in range(3):
            b = run(files, "echo b; sleep 0.3")
            assert (b.stdout, b.stderr) == ("b\n", "")
    finally:
        os.kill(int(pid), 9)


def test_stdin_reads_as_empty_and_is_not_writable(files: executor.OutputFiles) -> None:
    out = run(files, "cat; wc -c; echo x >&0 2>/dev/null || echo refused")
    assert out.stdout == "0\nrefused\n"


def test_output_before_the_kept_tail_is_given_back_while_the_job_runs(files: executor.OutputFiles) -> None:
    # Only the tail is kept: memory for the rest is freed as the job goes on, however
    # much it prints.
    seen: list[tuple[int, int]] = []

    def check() -> None:
        st = os.fstat(files.out)
        seen.append((st.st_size, st.st_blocks * 512))

    command = "head -c 4000000 /dev/zero | tr '\\0' a; sleep 0.8; printf END"
    out = run(files, command, output_limit=1024, check=check, check_interval=0.1)
    assert out.ok
    assert len(out.stdout) == 1024 and out.stdout.endswith("aaaEND")
    assert any(size >= 4_000_000 and used < 2_000_000 for size, used in seen), seen
