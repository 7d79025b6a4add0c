-- recache metadata schema, version 1 (PostgreSQL). Kept in step with migrations/sqlite.
CREATE TABLE IF NOT EXISTS entries (
    cache_key         TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    namespace         TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    model             TEXT NOT NULL,
    artifact_sha256   TEXT NOT NULL,
    request_bytes     BIGINT NOT NULL,
    response_bytes    BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at_ms     BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    last_hit_at_ms    BIGINT,
    hit_count         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant, namespace);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires_at_ms);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created_at_ms);
CREATE INDEX IF NOT EXISTS entries_artifact ON entries (artifact_sha256);

CREATE TABLE IF NOT EXISTS audit_log (
    seq        BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    at_ms      BIGINT NOT NULL,
    tenant     TEXT,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    cache_key  TEXT,
    detail     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit_log (at_ms);
