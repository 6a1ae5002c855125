"""The PostgreSQL connection of one store: opened on first use (and migrated, by the
caller's hook), checked before each call, dropped when it breaks and opened again on
the next call with capped, jittered backoff; each call optionally bounded in time.

Reads are retried once on a fresh connection; a write whose connection broke
mid-statement is not (it may have committed): it raises StoreUnavailable and the
caller decides (the worker retries its fenced finish).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from queuectl.errors import StoreError, StoreUnavailable
from queuectl.store.postgres.errors import Redactor, is_lost, transient

T = TypeVar("T")
Conn = psycopg.Connection[Any]

#: Connection attempts per call before StoreUnavailable, and the backoff between
#: them: doubling from BACKOFF_FIRST up to BACKOFF_CAP, each scaled by a random
#: 0.5-1.0 so that many workers do not reconnect in lockstep (2.5-5 s in all,
#: enough to ride out a server restart).
CONNECT_TRIES = 7
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
#: Connection settings applied unless the URL gives its own: fail fast when the
#: server is gone, and notice a silently dead peer (network cut) within ~30 s.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "queuectl",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

#: The call guard's shortest tick (it looks at the call in flight every eighth of the bound).
GUARD_TICK = 0.05


def _usable(conn: Conn | None) -> bool:
    """An idle connection whose socket is readable has been told something we did
    not ask for: in practice the server closing it (restart, pg_terminate_backend).
    Checking first means a write is not sent down a dead connection."""
    if conn is None or conn.closed:
        return False
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not ready


class _CallGuard:
    """Bounds the calls of one store: a daemon thread shuts down the socket of a call
    still in flight past its deadline, so a connection that hangs (a black-holed
    network: the peer's kernel, or a proxy, still acknowledges, so neither keepalives
    nor tcp_user_timeout fire) fails like a reset one, and the caller's thread is
    never held longer than the bound.  The call sees a broken connection and the
    store reconnects on the next call."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: (deadline, socket fd) of the call in flight, or None; replaced whole, so a
        #: reader sees one call's pair, never a mix of two.
        self.current: tuple[float, int] | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="queuectl-call-guard", daemon=True).start()

    def _watch(self) -> None:
        # A tick of an eighth of the bound: a hung call is cut within 1.125x the
        # bound, and an idle worker's guard wakes only a few times a second.
        tick = max(GUARD_TICK, self.timeout / 8)
        while not self._closed.wait(tick):
            call = self.current
            if call is None or time.monotonic() < call[0]:
                continue
            if self.current is call:  # still the same call: cut it off
                self.current = None
                with contextlib.suppress(OSError):
                    # A duplicate of the descriptor, so closing it leaves the
                    # connection's own descriptor to psycopg; the shutdown reaches the
                    # socket both name.
                    sock = socket.socket(fileno=os.dup(call[1]))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()

    def close(self) -> None:
        self._closed.set()


class Connection:
    """One store's connection to PostgreSQL; `on_open(conn)` runs on every new one
    (the schema's migration)."""

    def __init__(self, url: str, on_open: Callable[[Conn], None], connect_tries: int = CONNECT_TRIES) -> None:
        self._url = url
        self.redactor = Redactor(url)
        #: The URL without its password: the only form that may be shown.
        self.url = self.redactor.url
        self._on_open = on_open
        self._tries = max(1, connect_tries)
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL URL {self.url}: {self.redactor.reason(exc)}") from None
        self._kwargs: dict[str, Any] = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        self._conn: Conn | None = None
        self._guard: _CallGuard | None = None
        #: With a call timeout: when the call in flight must have ended (monotonic).
        self._deadline: float | None = None

    def open(self) -> None:
        """Connect now (the store's constructor: a bad URL or server fails at once)."""
        self._conn = self._open()

    def connect(self, tries: int | None = None) -> Conn:
        """A new autocommit connection; transient failures are retried with capped,
        jittered backoff, then reported as StoreUnavailable."""
        tries = self._tries if tries is None else tries
        delay = BACKOFF_FIRST
        for attempt in range(tries):
            try:
                return psycopg.connect(self._url, autocommit=True, **self._kwargs)
            except psycopg.Error as exc:
                if not transient(exc):
                    raise StoreError(
                        f"cannot use PostgreSQL at {self.url}: {self.redactor.reason(exc)}"
                    ) from None
                pause = delay * random.uniform(0.5, 1.0)
                # A bounded call never backs off past its deadline.
                late = self._deadline is not None and time.monotonic() + pause > self._deadline
                if attempt + 1 >= tries or late:
                    raise StoreUnavailable(
                        f"cannot reach PostgreSQL at {self.url}: {self.redactor.reason(exc)}"
                    ) from None
            time.sleep(pause)
            delay = min(delay * 2, BACKOFF_CAP)
        raise AssertionError("unreachable")

    def _open(self) -> Conn:
        conn = self.connect()
        try:
            self._on_open(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self.redactor.translate(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _ready(self) -> Conn:
        if not _usable(self._conn):
            self._drop()
            self._conn = self._open()
        assert self._conn is not None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run(self, fn: Callable[[Conn], T], *, read: bool = False) -> T:
        """Run fn on a healthy connection, translating errors.  A read that finds the
        connection broken is retried once on a new one; a write is not, since it may
        have committed before the connection went."""
        guard = self._guard
        if guard is not None:
            self._deadline = time.monotonic() + guard.timeout
        try:
            for attempt in range(2 if read else 1):
                conn = self._ready()
                if guard is not None and self._deadline is not None:
                    guard.current = (self._deadline, conn.fileno())
                try:
                    return fn(conn)
                except psycopg.Error as exc:
                    if not is_lost(conn, exc):
                        raise self.redactor.translate(exc) from None
                    self._drop()
                    if attempt == 1 or not read:
                        raise self.redactor.translate(exc) from None
                finally:
                    if guard is not None:
                        guard.current = None
            raise AssertionError("unreachable")
        finally:
            self._deadline = None

    def read(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.run(lambda conn: conn.execute(query, params).fetchall(), read=True)

    def set_call_timeout(self, seconds: float | None) -> None:
        """Bound every later call to about `seconds` (None: unbounded).  libpq's
        connect_timeout is whole seconds and at least 2: a connection attempt to a
        black hole takes that long, and the next attempt is not made past the call's
        deadline."""
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        if seconds is not None:
            self._guard = _CallGuard(seconds)

    def close(self) -> None:
        self.set_call_timeout(None)
        self._drop()
