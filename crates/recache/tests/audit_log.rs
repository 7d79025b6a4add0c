//! The audit log through the gateway: per-answer events turned off, and each
//! kind of event pruned by its own retention ("Audit log retention" in
//! `docs/operations.md`; the SQL of both engines is held to the same by the
//! conformance suite).

mod common;

use std::time::Duration;

use common::{Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;

/// `[metadata] audit_answer_events = false`: a stored answer writes its entry
/// and no `entry.store` event; it is a hit all the same, and the operations
/// record is still written (an admin delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_audit_events_can_be_turned_off() {
    let vars = [("RECACHE_METADATA__AUDIT_ANSWER_EVENTS", "false")];
    let env = Env::on_with(Backends::Embedded, StubConfig::default(), "", &vars).await;
    let first = env.chat(KEY_A, "not audited").await;
    assert_eq!(first.cache(), "MISS");
    env.settle().await;
    assert_eq!(env.chat(KEY_A, "not audited").await.cache(), "HIT");
    assert_eq!(env.metadata_count("entries").await, 1);
    assert_eq!(env.metadata_count("audit_log WHERE action = 'entry.store'").await, 0);
    let r = env
        .http
        .delete(format!("{}/admin/entries/{}", env.base, first.header("x-recache-key")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    common::until(Duration::from_secs(10), "the admin event", async || {
        env.metadata_count("audit_log WHERE action = 'entry.delete'").await == 1
    })
    .await;
}

/// `[metadata] audit_retention_days` and `admin_audit_retention_days`: the
/// gateway's sweep deletes each class of audit event older than its retention
/// and keeps the newer ones (the conformance suite holds both SQL engines to
/// the query; this is the gateway's side of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_audit_events_are_pruned() {
    let vars = [
        ("RECACHE_METADATA__AUDIT_RETENTION_DAYS", "1"),
        ("RECACHE_METADATA__ADMIN_AUDIT_RETENTION_DAYS", "2"),
        ("RECACHE_CACHE__SWEEP_INTERVAL_SECONDS", "1"),
    ];
    let env = Env::on_with(Backends::Embedded, StubConfig::default(), "", &vars).await;
    assert_eq!(env.chat(KEY_A, "audited and kept").await.cache(), "MISS");
    // Events from days ago, as a gateway writing them then would have left them.
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", env.path("metadata.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let day = 86_400_000;
        let now = recache::roles::now_ms();
        let old = [
            ("entry.store", now - 3 * day),
            ("entry.store", now - 3 * day + 1),
            ("entry.store", now - day - day / 2),
            ("purge", now - 3 * day),
            ("erase", now - 3 * day + 1),
            ("key.create", now - day - day / 2),
        ];
        for (i, (action, at)) in old.into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO audit_log (event_id, at_ms, tenant, actor, action, cache_key, detail) \
                 VALUES (?, ?, 'team-a', 'old', ?, NULL, '{}')",
            )
            .bind(format!("old-{i}"))
            .bind(at)
            .bind(action)
            .execute(&mut c)
            .await
            .unwrap();
        }
    }
    common::until(Duration::from_secs(15), "the old events pruned", async || {
        env.metric("cache_audit_events_pruned_total").await >= 5.0
    })
    .await;
    assert_eq!(env.metric("cache_audit_events_pruned_total").await, 5.0);
    assert_eq!(
        env.metadata_count("audit_log WHERE actor = 'old' AND action = 'key.create'")
            .await,
        1,
        "an admin event within its own retention is kept"
    );
    assert_eq!(env.metadata_count("audit_log WHERE actor = 'old'").await, 1);
    assert_eq!(
        env.metadata_count("audit_log WHERE action = 'entry.store'").await,
        1,
        "the new answer's event is kept"
    );
}
