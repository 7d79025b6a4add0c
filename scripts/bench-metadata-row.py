#!/usr/bin/env python3
"""What one stored answer's metadata costs in SQLite, next to its floor (issue #28).

Writes N entries rows the way the store path does (WAL, synchronous=NORMAL,
batches of 16 in one transaction: the SELECT of replaced artifacts, one
multi-row upsert, one multi-row audit insert), on the schema of the
migrations 0001-0008, and prints per variant: rows/s, this process's CPU
per row (user + kernel: the kernel is where WAL pages are written and
checkpointed), wall time per row and bytes on disk per row.

  floor      the same row appended in rowid order, no key index, no audit row
  shipped    the schema as shipped: 64-character hex keys, key index, audit row
  no-audit   as shipped without the `entry.store` audit row
  blob       32-byte BLOB keys and artifact ids, with the audit row
  blob-wr    BLOB keys in a WITHOUT ROWID table (rows ordered by key)
  tail       the shipped table and audit row, but each row appended to an
             unindexed tail table, and the tail merged into the keyed table
             in key order every 4,096 rows (a sketch of an append-first row;
             the tail's keys would be looked up in memory, not modelled)

Runs each variant REPS times, interleaved. Uses Python's sqlite3 module
(the system SQLite; the gateway bundles a newer one with the same B-tree and
WAL design). Usage: python3 scripts/bench-metadata-row.py [ROWS] [REPS]
(default 100000 rows, 2 reps: about a minute and 200 MB in a temporary
directory, removed at exit). See docs/benchmarks.md.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time

ENTRIES = """CREATE TABLE entries (cache_key {key} {pk}, tenant TEXT NOT NULL, namespace TEXT NOT NULL,
 endpoint TEXT NOT NULL, model TEXT NOT NULL, artifact_sha256 {key} NOT NULL, request_bytes INTEGER NOT NULL,
 response_bytes INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL DEFAULT 0,
 completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0, created_at_ms INTEGER NOT NULL,
 expires_at_ms INTEGER NOT NULL, last_hit_at_ms INTEGER, hit_count INTEGER NOT NULL DEFAULT 0, request_json TEXT,
 artifact_missing INTEGER NOT NULL DEFAULT 0){wr};
CREATE INDEX entries_tenant ON entries (tenant, namespace);
CREATE INDEX entries_expires ON entries (expires_at_ms);
CREATE INDEX entries_created ON entries (created_at_ms);
CREATE INDEX entries_missing ON entries (artifact_missing) WHERE artifact_missing = 1;
CREATE TABLE audit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, at_ms INTEGER NOT NULL,
 tenant TEXT, actor TEXT NOT NULL, action TEXT NOT NULL, cache_key TEXT, detail TEXT NOT NULL);
CREATE INDEX audit_at ON audit_log (at_ms);"""

COLUMNS = (
    "cache_key, tenant, namespace, endpoint, model, artifact_sha256, request_bytes, response_bytes, "
    "prompt_tokens, completion_tokens, cost_usd, created_at_ms, expires_at_ms, last_hit_at_ms, hit_count, "
    "request_json, artifact_missing"
)

# name: (key type, keyed, audit row, WITHOUT ROWID)
VARIANTS = {
    "floor": ("TEXT", False, False, False),
    "shipped": ("TEXT", True, True, False),
    "no-audit": ("TEXT", True, False, False),
    "blob": ("BLOB", True, True, False),
    "blob-wr": ("BLOB", True, True, True),
    "tail": ("TEXT", True, True, False),
}
BATCH = 16
MERGE_EVERY = 4096


def prepare(rows, blob):
    """The batches to write, built before the clock starts."""
    req = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 120}]})
    now = 1_700_000_000_000
    out, n = [], 0
    for b in range(rows // BATCH):
        keys, vals, audit = [], [], []
        for i in range(BATCH):
            k = hashlib.sha256(f"{b}-{i}".encode()).digest()
            a = hashlib.sha256(k).digest()
            key, art = (k, a) if blob else (k.hex(), a.hex())
            keys.append(key)
            vals += [key, "bench", "default", "/v1/chat/completions", "gpt-4o-mini", art, 200, 600, 10, 20,
                     0.001, now + n, now + n + 86_400_000, None, 0, req]
            detail = {"model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "namespace": "default",
                      "artifact": a.hex(), "bytes": 900, "expires_at_ms": now + n + 86_400_000}
            audit += [f"{now + n:x}-1a2b-{n:x}", now + n, "bench", "gateway", "entry.store", k.hex(),
                      json.dumps(detail)]
            n += 1
        out.append((keys, vals, audit))
    return out


def run(dir, name, rows):
    key, keyed, with_audit, wr = VARIANTS[name]
    path = os.path.join(dir, name + ".db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    pk = "PRIMARY KEY" if keyed else "NOT NULL"
    db.executescript(ENTRIES.format(key=key, pk=pk, wr=" WITHOUT ROWID" if wr else ""))
    tail = name == "tail"
    if tail:
        db.execute("CREATE TABLE entries_tail AS SELECT * FROM entries WHERE 0")
    batches = prepare(rows, key == "BLOB")
    select = "SELECT cache_key, artifact_sha256 FROM entries WHERE cache_key IN (%s)" % ",".join("?" * BATCH)
    insert = "INSERT INTO entries (%s) VALUES %s" % (COLUMNS, ",".join(["(" + ",".join("?" * 16) + ",0)"] * BATCH))
    if tail:
        insert = insert.replace("INTO entries ", "INTO entries_tail ")
    elif keyed:
        insert += " ON CONFLICT (cache_key) DO UPDATE SET hit_count = 0"
    merge = ("INSERT INTO entries (%s) SELECT %s FROM entries_tail WHERE true ORDER BY cache_key "
             "ON CONFLICT (cache_key) DO UPDATE SET hit_count = 0" % (COLUMNS, COLUMNS))
    audit = ("INSERT INTO audit_log (event_id, at_ms, tenant, actor, action, cache_key, detail) VALUES "
             + ",".join(["(?,?,?,?,?,?,?)"] * BATCH) + " ON CONFLICT (event_id) DO NOTHING")
    wall, cpu = time.perf_counter(), time.process_time()
    for i, (keys, vals, events) in enumerate(batches):
        db.execute("BEGIN")
        if keyed:
            db.execute(select, keys).fetchall()
        db.execute(insert, vals)
        if with_audit:
            db.execute(audit, events)
        db.execute("COMMIT")
        if tail and ((i + 1) * BATCH % MERGE_EVERY == 0 or i + 1 == len(batches)):
            db.execute("BEGIN")
            db.execute(merge)
            db.execute("DELETE FROM entries_tail")
            db.execute("COMMIT")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    db.close()
    n = len(batches) * BATCH
    size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    return n / wall, cpu / n * 1e6, wall / n * 1e6, size / n


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    dir = tempfile.mkdtemp(prefix="recache-metadata-row.")
    try:
        results = {name: [] for name in VARIANTS}
        for _ in range(reps):
            for name in VARIANTS:
                results[name].append(run(dir, name, rows))
                print("  %-9s %8.0f rows/s" % (name, results[name][-1][0]), file=sys.stderr, flush=True)
        floor_cpu = min(r[1] for r in results["floor"])
        print("\nSQLite %s, %d rows, batches of %d, best of %d\n" % (sqlite3.sqlite_version, rows, BATCH, reps))
        print("| variant | rows/s | CPU us/row | of the floor | wall us/row | bytes/row on disk |")
        print("|---|---|---|---|---|---|")
        for name, rs in results.items():
            best = min(rs, key=lambda r: r[1])
            print("| %s | %.0f | %.1f | %.1fx | %.1f | %.0f |" % (
                name, max(r[0] for r in rs), best[1], best[1] / floor_cpu, min(r[2] for r in rs), best[3]))
    finally:
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
