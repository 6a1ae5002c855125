"""PostgreSQL errors, translated at the store's boundary, and passwords kept out of
every message: nothing `psycopg.*` escapes the postgres package, and no message
carries the URL's password (redact_url, Redactor).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg

from queuectl.errors import DuplicateJob, QueuectlError, StoreBusy, StoreError, StoreUnavailable


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print or log."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            pairs = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(pairs, safe="*", quote_via=quote)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url.split("?", 1)[0])


def _secrets(url: str) -> list[str]:
    """Every spelling of the URL's password(s), to scrub from driver messages."""
    found: set[str] = set()
    # A URL too broken for urlsplit still has its password between "user:" and "@".
    match = re.search(r"://[^:/@?#]*:([^@]*)@", url)
    if match and match.group(1):
        found.update({match.group(1), unquote(match.group(1))})
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k.lower() == "password" and v:
                found.add(v)
    return sorted(found, key=len, reverse=True)


class Redactor:
    """The URL of one store, as it may be shown, and its driver errors as one line
    with every spelling of its password scrubbed out."""

    def __init__(self, url: str) -> None:
        self._url = url
        #: The URL without its password: the only form that may be shown.
        self.url = redact_url(url)
        self._secrets = _secrets(url)

    def reason(self, exc: BaseException) -> str:
        """One line from a driver error, with every password scrubbed out."""
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        text = text.replace(self._url, self.url)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text or type(exc).__name__

    def translate(self, exc: psycopg.Error) -> QueuectlError:
        """The queuectl error for a driver error."""
        reason = self.reason(exc)
        state = exc.sqlstate or ""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return DuplicateJob()
        if state in _BUSY_STATES:
            return StoreBusy(f"PostgreSQL at {self.url} is busy: {reason}")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreUnavailable(f"lost the connection to PostgreSQL at {self.url}: {reason}")
        if isinstance(exc, psycopg.DataError):
            return StoreError(f"PostgreSQL cannot store this value: {reason}")
        return StoreError(f"database error on PostgreSQL at {self.url}: {reason}")


_TRANSIENT_FATAL = ("starting up", "shutting down", "in recovery", "too many", "terminating", "timeout")
_LOST_STATES = ("57P01", "57P02", "57P03")
_BUSY_STATES = ("40001", "40P01", "55P03", "57014")


def transient(exc: psycopg.Error) -> bool:
    """Worth connecting again: the server is unreachable or restarting, not refusing us."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    msg = str(exc).lower()
    if "invalid" in msg:  # a bad option or value in the URL: trying again cannot help
        return False
    if "fatal" in msg:
        return any(s in msg for s in _TRANSIENT_FATAL)
    return True


def is_lost(conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
    """Did this error break the connection (as opposed to failing one statement)?"""
    if conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _LOST_STATES
