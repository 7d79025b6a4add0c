-- Usage per hour, tenant, namespace and model (recache report cost).
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour_ms BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    hits BIGINT NOT NULL DEFAULT 0,
    semantic_hits BIGINT NOT NULL DEFAULT 0,
    misses BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    tokens_saved BIGINT NOT NULL DEFAULT 0,
    usd_saved DOUBLE PRECISION NOT NULL DEFAULT 0,
    usd_spent DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, tenant, namespace, model)
)
