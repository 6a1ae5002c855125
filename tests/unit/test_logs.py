"""A log write to a closed or broken stderr never raises: the line goes to the
process's own file under logs/ (opened with O_NOFOLLOW, owner-only) or is dropped."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl import logs
from queuectl.logs import LogStream, json_logger


@pytest.fixture
def broken_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is gone (EPIPE on every write)."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


def events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_broken_pipe_falls_back_to_the_own_file(broken_pipe: int, tmp_path: Path) -> None:
    own = tmp_path / "workers_00.direct.log"
    stream = LogStream(broken_pipe, own)
    log = json_logger(stream, worker_id="w1")
    log.info("first", n=1)
    log.warning("second")
    assert stream.target == "own_file"
    assert events(own) == ["first", "second"]
    assert json.loads(own.read_text().splitlines()[0])["worker_id"] == "w1"
    assert stat.S_IMODE(own.stat().st_mode) == 0o600
    stream.close()


def test_lines_go_to_the_descriptor_while_it_works(tmp_path: Path) -> None:
    r, w = os.pipe()
    own = tmp_path / "own.log"
    stream = LogStream(w, own)
    json_logger(stream).info("hello")
    assert json.loads(os.read(r, 4096))["event"] == "hello"
    assert stream.target == "fd" and not own.exists()
    # Told its reader is gone: the next line goes to its own file, none to the pipe.
    stream.use_own_file()
    json_logger(stream).info("after")
    os.close(w)
    assert os.read(r, 4096) == b""
    os.close(r)
    assert events(own) == ["after"]
    stream.close()


def test_closed_descriptor_and_no_own_file_drop_the_line(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # EBADF from now on
    stream = LogStream(w, None)
    json_logger(stream).info("lost")  # must not raise
    assert stream.target == "nowhere"


def test_a_planted_symlink_is_refused(broken_pipe: int, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    own = tmp_path / "monitor.direct.log"
    own.symlink_to(victim)
    stream = LogStream(broken_pipe, own)
    json_logger(stream).info("event")  # refused by O_NOFOLLOW: dropped, not raised
    assert victim.read_text() == "untouched\n"
    assert stream.target == "nowhere"


def test_a_planted_fifo_neither_blocks_nor_receives(broken_pipe: int, tmp_path: Path) -> None:
    own = tmp_path / "fifo.log"
    os.mkfifo(own)
    stream = LogStream(broken_pipe, own)
    json_logger(stream).info("event")  # a blocking open would wait for a reader forever
    assert stream.target == "nowhere"


def test_a_process_whose_stderr_reader_is_gone_logs_to_its_file_and_exits_0(tmp_path: Path) -> None:
    """The real thing: a process started with a stderr pipe whose reader is gone."""
    own = tmp_path / "own.log"
    code = (
        "from queuectl import logs\n"
        "logs.install()\n"
        "log = logs.json_logger(component='t')\n"
        "log.info('one')\n"
        "log.info('two')\n"
    )
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, logs.OWN_FILE_ENV: str(own)},
            stdout=subprocess.DEVNULL,
            stderr=w,
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert events(own) == ["one", "two"]
