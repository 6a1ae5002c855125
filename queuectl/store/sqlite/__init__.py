"""The SQLite store, through APSW.

    connection.py  opening and configuring a connection, error translation, the
                   write-transaction retry
    file.py        whether the path still names the file that is open, whole
    schema.py      migrations and the schema version
    counts.py      the job counts (a snapshot plus the events since)
    insert.py      the one insert of new jobs (SQLiteStore.enqueue and `queuectl enqueue`)
    queries.py     the claim, finish and recovery statements
    store.py       SQLiteStore: the Store contract

The package's names resolve on first use, so a module of it (insert.py, on the
`queuectl enqueue` path) is imported without the rest.
"""

from __future__ import annotations

# A constant of this name means to mypy what typing.TYPE_CHECKING means.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from queuectl.store.sqlite.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
    from queuectl.store.sqlite.store import SQLiteStore

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]


def __getattr__(name: str) -> object:
    if name == "SQLiteStore":
        from queuectl.store.sqlite.store import SQLiteStore

        return SQLiteStore
    if name in ("APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION"):
        from queuectl.store.sqlite import schema

        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
