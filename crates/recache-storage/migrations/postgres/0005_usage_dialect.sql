-- Usage per dialect too (recache report cost --by dialect). Rows counted
-- before this migration were all OpenAI's dialect. (No semicolon may appear
-- in a comment here: the migration runner splits statements on it.)
ALTER TABLE usage_hourly ADD COLUMN IF NOT EXISTS dialect TEXT NOT NULL DEFAULT 'openai';
ALTER TABLE usage_hourly DROP CONSTRAINT IF EXISTS usage_hourly_pkey;
ALTER TABLE usage_hourly ADD PRIMARY KEY (hour_ms, tenant, namespace, model, dialect)
