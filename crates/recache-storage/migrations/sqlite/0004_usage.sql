-- Usage per hour, tenant, namespace and model (recache report cost).
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    semantic_hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    tokens_saved INTEGER NOT NULL DEFAULT 0,
    usd_saved REAL NOT NULL DEFAULT 0,
    usd_spent REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, tenant, namespace, model)
)
