"""DDL both stores' schemas share word for word.  Imports nothing: the SQLite schema
module is on the `queuectl enqueue` path."""

#: The jobs table's indexes as version 1 of both schemas creates them.  Part of a
#: migration step, so never edited: a later step changes them.
JOB_INDEXES_V1 = """
    -- The claim walks this index from its first entry: cost is flat in queue size.
    CREATE INDEX jobs_due ON jobs (priority DESC, next_run_at, id)
        WHERE state IN ('pending', 'failed');
    -- When the next retry or delayed job falls due: an idle worker sleeps until then.
    CREATE INDEX jobs_next ON jobs (next_run_at) WHERE state IN ('pending', 'failed');
    CREATE INDEX jobs_state ON jobs (state, created_at, id);
    CREATE INDEX jobs_worker ON jobs (worker_id) WHERE state = 'processing';
"""
