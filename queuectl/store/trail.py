"""The audit trail's part of the Store contract (`Store.trail`), which both backends
implement and tests/contract holds them to.

Events are written in the transaction of the change they describe: a job's state
change by its history event (job_events), anything else as a note (audit_notes)
that the store's own method writes.  Each carries the actor: `Store.actor` for a
change a process makes on purpose, the worker id for a worker's claim and finish
(left NULL in the row: the row's worker_id says it, at no cost to the drain).

Sealing is separate and later: any process reads what waits (`pending`), makes the
lines (trail.seal) outside any transaction, and `commit`s them with a
compare-and-set on the head, so two sealers never both extend the chain.  The
chain is one per database; each home then appends the lines to its own files and
records how far it got (`set_home`), so a cut tail is told from a slow writer.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    from queuectl.trail import Sealed, Source
else:
    Protocol = object


class Mark:
    """Where a home's files end, as that home last recorded it (seq 0: nothing)."""

    __slots__ = ("at", "hash", "home", "seq")

    def __init__(self, home: str, seq: int, hash: str, at: float) -> None:
        self.home, self.seq, self.hash, self.at = home, seq, hash, at

    def __repr__(self) -> str:
        return f"Mark({self.home!r}, {self.seq}, {self.hash[:12]!r}, {self.at})"


class TrailStore(Protocol):
    def head(self) -> tuple[int, str]:
        """The chain's last sealed line: (seq, hash); (0, GENESIS) before any."""

    def pending(self, limit: int) -> tuple[tuple[int, str], tuple[object, object], list[Source]]:
        """The head, a token (the mark of what the head covers, and the mark that
        sealing these events moves it to), and up to `limit` events not
        yet sealed, in the order they committed, all read in one snapshot.  On
        PostgreSQL an event of a transaction that may still be running (at or past
        the oldest transaction running in the database) waits, so one that commits
        later is never passed over."""

    def commit(self, head: tuple[int, str], token: tuple[object, object], lines: Sequence[Sealed]) -> bool:
        """Keep `lines` (the seals of the events `pending` returned with `head` and
        `token`) and advance the head and its mark, if they are still `head` and the
        token's first mark; False: another process sealed first, nothing changed.
        With no lines it only moves the mark (PostgreSQL: past transactions that
        wrote no event)."""

    def lines(self, after: int, limit: int) -> list[tuple[int, str]]:
        """Sealed lines (seq, text) after seq `after`, in order, at most `limit`."""

    def first_kept(self) -> int | None:
        """The smallest seq the database still keeps a line of (None: none)."""

    def home(self, home: str) -> Mark | None:
        """How far `home`'s files reached when it last recorded it."""

    def homes(self) -> list[Mark]:
        """Every home that has appended lines, and how far."""

    def set_home(self, home: str, seq: int, hash: str, now: float | None = None) -> None:
        """Record that `home`'s files end at line (seq, hash); never moves back."""

    def note(self, kind: str, detail: dict[str, object], now: float | None = None) -> None:
        """A note of `kind` by Store.actor, in its own transaction (for changes made
        outside the store, such as a checkpoint)."""

    def checkpoints(self) -> list[tuple[int, str, float, str]]:
        """Recorded checkpoints (seq, hash, at, actor), oldest first: verification may
        start after any of them, once the files up to it are archived."""

    def add_checkpoint(self, seq: int, hash: str, now: float | None = None) -> None:
        """Record a checkpoint at line (seq, hash), with an `audit_checkpoint` note."""

    def history(self, after: int, limit: int) -> list[tuple[Source, bool]]:
        """Job history events with seq (id) after `after`, in seq order, each with
        whether it is sealed: what `audit verify --against-db` compares lines with."""

    def prune(self, before: float, limit: int) -> int:
        """Drop up to `limit` kept lines every home has appended, sealed before
        `before`; never the head's.  The number dropped."""
