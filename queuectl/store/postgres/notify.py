"""Waiting for a change to the queue: LISTEN on a second, autocommit connection for
the pg_notify that enqueue and `dlq retry` send in their transaction.  The claim
stays the truth: a missed notification costs one poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import time
from typing import Any

import psycopg
from psycopg import sql

from queuectl.errors import QueuectlError
from queuectl.store.postgres.connection import Connection

Conn = psycopg.Connection[Any]


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one queue (one schema of one database)."""
    name = f"queuectl.{schema}"
    if len(name.encode()) <= 63:
        return name
    return "queuectl." + hashlib.sha256(schema.encode()).hexdigest()[:32]


class Listener:
    """The listening connection of one store, opened on first wait."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        self._listener: Conn | None = None
        #: The queue's channel (set once the schema is known).
        self.channel = ""

    def wait(self, timeout: float, wakeup_fd: int | None = None) -> None:
        """Wait for a NOTIFY on this queue's channel, the timeout, or wakeup_fd.

        Never raises: without a listening connection it just waits (the caller polls).
        A listener that was (re)opened just now returns at once, because whatever was
        enqueued before its LISTEN took effect sent no notification it could see."""
        deadline = time.monotonic() + max(0.0, timeout)
        listener, fresh = self._listen()
        if fresh:
            return
        fds = [] if wakeup_fd is None else [wakeup_fd]
        if listener is not None:
            fds.append(listener.fileno())
        while (left := deadline - time.monotonic()) > 0:
            if not fds:
                time.sleep(left)
                return
            ready, _, _ = select.select(fds, [], [], left)
            if not ready or wakeup_fd in ready:
                return
            if listener is None or self._drained(listener):
                return

    def _listen(self) -> tuple[Conn | None, bool]:
        if self._listener is not None and not self._listener.closed:
            return self._listener, False
        self._close_listener()
        try:
            conn = self._db.connect(tries=1)
        except QueuectlError:
            return None, False
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error:
            conn.close()
            return None, False
        self._listener = conn
        return conn, True

    def _drained(self, listener: Conn) -> bool:
        """Read what arrived on the listener; True if it holds a notification (or the
        connection went, which is worth a look at the queue too)."""
        try:
            return any(True for _ in listener.notifies(timeout=0))
        except psycopg.Error:
            self._close_listener()
            return True

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._close_listener()
