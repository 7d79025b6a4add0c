-- Job queue for warmers and repairs (PostgreSQL). Claimed with FOR UPDATE SKIP LOCKED.
CREATE TABLE IF NOT EXISTS jobs (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL DEFAULT 'queued',
    attempts       INTEGER NOT NULL DEFAULT 0,
    run_after_ms   BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until_ms BIGINT,
    last_error     TEXT,
    created_at_ms  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, priority DESC, run_after_ms);
