-- Per-tenant data keys for sealing answers at rest, each wrapped by the master key (never stored plain).
CREATE TABLE IF NOT EXISTS data_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    wrapped TEXT NOT NULL,
    master_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    retired_at_ms BIGINT,
    destroyed_at_ms BIGINT
);
CREATE INDEX IF NOT EXISTS data_keys_tenant ON data_keys (tenant)
