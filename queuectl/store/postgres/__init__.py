"""The PostgreSQL store, through psycopg 3 (the `postgres` extra).

errors.py      driver errors translated, passwords kept out of every message
connection.py  one store's connection: reconnects, retries, the call bound
schema.py      migrations and the schema version
queries.py     the insert, claim and finish statements
notify.py      LISTEN/NOTIFY: waiting for a change to the queue
store.py       PostgresStore: the Store contract
"""

from queuectl.store.postgres.errors import redact_url
from queuectl.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from queuectl.store.postgres.store import PostgresStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore", "redact_url"]
