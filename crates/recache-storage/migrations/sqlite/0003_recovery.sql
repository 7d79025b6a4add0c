-- Recovery (SQLite): stored requests for refetch, a missing-artifact mark,
-- the job queue's lease tokens, uniqueness, retries and retention, workers and warmer spend.
ALTER TABLE entries ADD COLUMN request_json TEXT;
ALTER TABLE entries ADD COLUMN artifact_missing INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS entries_missing ON entries (artifact_missing) WHERE artifact_missing = 1;
ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 5;
ALTER TABLE jobs ADD COLUMN lease_token TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat_at_ms INTEGER;
ALTER TABLE jobs ADD COLUMN unique_key TEXT;
ALTER TABLE jobs ADD COLUMN namespace TEXT;
ALTER TABLE jobs ADD COLUMN started_at_ms INTEGER;
ALTER TABLE jobs ADD COLUMN finished_at_ms INTEGER;
ALTER TABLE jobs ADD COLUMN updated_at_ms INTEGER;
ALTER TABLE jobs ADD COLUMN result TEXT;
DROP INDEX IF EXISTS jobs_ready;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, kind, priority DESC, run_after_ms);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running', 'failed');
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at_ms);
CREATE TABLE IF NOT EXISTS workers (
    owner       TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    seen_at_ms  INTEGER NOT NULL,
    paused      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS warmer_spend (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    job_id  INTEGER,
    usd     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS warmer_spend_at ON warmer_spend (at_ms);
