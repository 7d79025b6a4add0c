-- Leaner entries rows: no query looks entries up by artifact alone (the
-- primary key serves cache_key + artifact), so the artifact index only cost
-- a random B-tree insert per stored answer.
DROP INDEX IF EXISTS entries_artifact;
