-- Usage per dialect too (recache report cost --by dialect). SQLite cannot
-- change a primary key in place, so the table is rebuilt; rows counted
-- before this migration were all OpenAI's dialect.
CREATE TABLE usage_hourly_v5 (
    hour_ms INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    model TEXT NOT NULL,
    dialect TEXT NOT NULL DEFAULT 'openai',
    hits INTEGER NOT NULL DEFAULT 0,
    semantic_hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    tokens_saved INTEGER NOT NULL DEFAULT 0,
    usd_saved REAL NOT NULL DEFAULT 0,
    usd_spent REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, tenant, namespace, model, dialect)
);
INSERT INTO usage_hourly_v5 (hour_ms, tenant, namespace, model, dialect, hits, semantic_hits, misses,
    prompt_tokens, completion_tokens, tokens_saved, usd_saved, usd_spent)
SELECT hour_ms, tenant, namespace, model, 'openai', hits, semantic_hits, misses,
    prompt_tokens, completion_tokens, tokens_saved, usd_saved, usd_spent FROM usage_hourly;
DROP TABLE usage_hourly;
ALTER TABLE usage_hourly_v5 RENAME TO usage_hourly;
