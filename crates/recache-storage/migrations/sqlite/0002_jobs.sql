-- Job queue for warmers and repairs (SQLite). Claimed by lease.
CREATE TABLE IF NOT EXISTS jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL DEFAULT 'queued',
    attempts       INTEGER NOT NULL DEFAULT 0,
    run_after_ms   INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_until_ms INTEGER,
    last_error     TEXT,
    created_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, priority DESC, run_after_ms);
