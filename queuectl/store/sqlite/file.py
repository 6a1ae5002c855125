"""Whether the path of an open SQLite database still names the file that is open,
whole.

SQLite keeps working on the file it opened: deleted, it lives on unseen (every
other process opens a new file at the path); replaced, the path names a file this
process never reads; truncated, its pages read back as zeros.  One stat tells each
apart, cheaply enough for every heartbeat.

No descriptor of our own is opened on the file: closing any descriptor of a file
drops every POSIX lock the process holds on it, SQLite's included.
"""

from __future__ import annotations

import contextlib
import os

from queuectl.errors import StoreCorrupt, StoreGone


class DatabaseFile:
    """The identity (st_dev, st_ino) of the database file as it was opened, and the
    largest size seen.  queuectl never vacuums, so the file never shrinks: a file
    smaller than it was, or not whole pages, was cut by someone else."""

    def __init__(self, path: str, page_size: int) -> None:
        self.path = path
        self.page_size = page_size
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)
        self._largest = st.st_size
        # The connection keeps its WAL open (and no one deletes a WAL in use), so
        # this is the WAL's identity for the connection's whole life.
        self._wal = _identity(path + "-wal")
        self._shm = _identity(path + "-shm")

    def gone(self) -> bool:
        """The path names no file, or another one."""
        return _identity(self.path) != self._identity

    def remove_own_wal(self) -> None:
        """Delete the path's -wal and -shm if they are still the ones this (closed)
        connection used: after the file was deleted or replaced they are stale, and a
        process opening the new file would take their pages for its own."""
        for suffix, identity in (("-wal", self._wal), ("-shm", self._shm)):
            if identity is not None and _identity(self.path + suffix) == identity:
                with contextlib.suppress(OSError):
                    os.unlink(self.path + suffix)

    def check(self) -> None:
        """Raise StoreGone if the path is missing or names another file, StoreCorrupt
        if the file was truncated."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StoreGone(
                f"database file {self.path} was deleted while in use: stopping (a restart opens a new one)"
            ) from None
        except OSError as exc:
            raise StoreGone(f"database file {self.path} cannot be reached: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise StoreGone(
                f"database file {self.path} was replaced by another file while in use:"
                " stopping (a restart opens the new one)"
            )
        if st.st_size < self._largest or st.st_size % self.page_size:
            raise StoreCorrupt(
                f"database {self.path} is corrupt: the file was truncated while in use"
                f" ({st.st_size} bytes, was {self._largest}; check it with sqlite3 '.recover')"
            )
        self._largest = st.st_size


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
