"""structlog set-up: JSON events, one object per line, no global configuration.

Workers and the monitor log their events to stderr (supervisord writes them to
files under logs/); recovery logs for auditors are separate files (recovery_log.py).
Those two processes write through a LogStream: when nobody reads their stderr any
more (supervisord died, a terminal closed), a log line goes to the process's own
file under logs/ instead, or is dropped; it never raises, so a log line can never
take a process down or cut its bookkeeping short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any, TextIO


def _import_structlog() -> Any:
    """structlog, imported without rich.  structlog's package imports structlog.dev,
    which imports rich when it is installed: tens of milliseconds and megabytes for
    every worker, for a console renderer queuectl never uses.  A None in sys.modules
    makes that one import fail as if rich were absent; it is taken out again at once,
    so a command that wants rich (`queuectl top`) still imports it."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as found

        return found
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog as found
    finally:
        del sys.modules["rich"]
    return found


TYPE_CHECKING = False
if TYPE_CHECKING:
    import structlog as structlog  # re-exported: recovery_log imports it from here
else:
    structlog = _import_structlog()

#: QUEUECTL_LOG_LEVEL=debug also logs every completed job (not at info: a line per
#: job slows a busy worker, and the history has every attempt).
LEVEL_ENV = "QUEUECTL_LOG_LEVEL"

#: The file a worker or the monitor logs to once its stderr is gone (the home's
#: conf/supervisord.conf names one per program).
OWN_FILE_ENV = "QUEUECTL_LOG_FILE"

#: The process's LogStream, once install() made one (worker and monitor processes).
_process: LogStream | None = None


def log_level() -> int:
    name = os.environ.get(LEVEL_ENV, "info").strip().upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def json_logger(stream: TextIO | LogStream | None = None, **bound: Any) -> Any:
    """A structlog logger writing JSON lines (ISO-8601 UTC timestamps) to `stream`
    (default: the process's LogStream if install() made one, else stderr); events
    below QUEUECTL_LOG_LEVEL (default info) cost next to nothing."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or _process or sys.stderr),  # type: ignore[arg-type]
        wrapper_class=structlog.make_filtering_bound_logger(log_level()),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(**bound)


class LogStream:
    """A text stream for structlog's PrintLogger that never raises.

    Each complete line is one write(2) to `fd` (no buffer that a broken pipe could
    leave half-flushed for the interpreter's exit).  The first failure (EPIPE: the
    reader is gone; EBADF: the descriptor was closed; any other OSError) ends the
    use of `fd` for good, and that line and every later one go to `own_file`,
    opened on first use; if it cannot be opened or written, the line is dropped.
    """

    def __init__(self, fd: int | None, own_file: str | os.PathLike[str] | None = None) -> None:
        self._fd = fd
        self._own_path = os.fspath(own_file) if own_file else None
        self._own: int | None = None
        self._own_failed = False
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        """Where the next line goes: "fd", "own_file" or "nowhere"."""
        if self._fd is not None:
            return "fd"
        if self._own is not None or (self._own_path and not self._own_failed):
            return "own_file"
        return "nowhere"

    def write(self, text: str) -> int:
        # print() writes the line and its newline apart: emit whole lines only.
        with self._lock:
            self._partial += text
            if "\n" in self._partial:
                head, _, self._partial = self._partial.rpartition("\n")
                self._emit((head + "\n").encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                data, self._partial = self._partial, ""
                self._emit(data.encode("utf-8", "replace"))

    def use_own_file(self) -> None:
        """Stop writing to `fd` (its reader is gone, or may never read again: a pipe
        nobody drains would block the process once it is full)."""
        with self._lock:
            self._fd = None

    def close(self) -> None:
        with self._lock:
            if self._own is not None:
                with contextlib.suppress(OSError):
                    os.close(self._own)
                self._own = None

    def _emit(self, data: bytes) -> None:
        if self._fd is not None:
            try:
                _write_all(self._fd, data)
                return
            except OSError:
                self._fd = None
        own = self._own_fd()
        if own is not None:
            with contextlib.suppress(OSError):  # a full disk: the line is dropped
                _write_all(own, data)

    def _own_fd(self) -> int | None:
        if self._own is None and self._own_path and not self._own_failed:
            self._own = open_own_file(self._own_path)
            self._own_failed = self._own is None
        return self._own


def open_own_file(path: str) -> int | None:
    """`path` opened for appending, created owner-only; None if it cannot be, or if
    it is not a regular file of ours (a symlink planted there is refused by
    O_NOFOLLOW, a FIFO by the check after a non-blocking open)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def install(default_own_file: Path | None = None) -> LogStream:
    """For a worker or monitor process: log through a LogStream on stderr whose own
    file is $QUEUECTL_LOG_FILE (or `default_own_file`); json_logger() uses it."""
    global _process
    if _process is None:
        try:
            fd: int | None = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        own = os.environ.get(OWN_FILE_ENV) or default_own_file
        _process = LogStream(fd, own)
    return _process


def log_to_own_file() -> None:
    """This process's supervisor is gone: its log lines go to its own file from now
    on (or nowhere), not to the pipe the supervisor used to read."""
    if _process is not None:
        _process.use_own_file()
