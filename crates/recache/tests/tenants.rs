//! Tenant controls (issue 25): client keys kept in metadata. A key made with
//! `recache keys create` works at once; `keys list` never shows a key or its
//! digest; a key revoked through the CLI is refused within `[keys]
//! cache_seconds`, one revoked through the admin API at once on that
//! replica and within the window on another; a rotated key keeps the old
//! one valid for the grace only.

mod common;

use std::time::Duration;

use common::{Backends, Env};
use recache_stub_provider::StubConfig;
use serde_json::{json, Value};

const EXTRA: &str = "[keys]\ncache_seconds = 1\n[[tenants]]\nname = \"team-k\"\n";

on_both_backends!(keys_made_revoked_and_rotated);
on_both_backends!(use_against_each_limit_is_seen);

async fn status(env: &Env, base: &str, key: &str, q: &str) -> u16 {
    let r = env
        .http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&common::chat_body(q, false))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

async fn admin(env: &Env, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = env
        .http
        .request(method, format!("{}{path}", env.base))
        .bearer_auth("admin-secret");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn keys_made_revoked_and_rotated(b: Backends) {
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    // Made through the CLI: printed once, works at once.
    let (code, made) = env.cli_json(&["keys", "create", "--tenant", "team-k", "--name", "ci", "--rpm", "100"]);
    assert_eq!(code, 0, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["record"]["id"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("rk-") && made["record"].get("digest").is_none(),
        "{made}"
    );
    assert_eq!(made["record"]["limits"], json!({"rpm": 100}));
    assert_eq!(status(&env, &env.base, &key, "made by the CLI").await, 200);
    let (code, _, err) = env.cli(&["keys", "create", "--tenant", "nobody"]);
    assert!(code == 2 && err.contains("nobody"), "{err}");
    let (code, _, err) = env.cli(&["keys", "create", "--tenant", "team-k", "--rpm", "0"]);
    assert!(code == 2 && err.contains("rpm"), "{err}");

    // Listed without the key or its digest.
    let (code, out, _) = env.cli(&["keys", "list", "--tenant", "team-k"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && !out.contains(&key) && out.contains("active"),
        "{out}"
    );
    let digest = recache::keys::digest(&key);
    assert!(!out.contains(&digest));
    let (code, listed) = env.cli_json(&["keys", "list"]);
    assert_eq!(code, 0);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&digest));

    // Revoked through the CLI: refused within the cache window (1 s here).
    let (code, out, err) = env.cli(&["keys", "revoke", &id]);
    assert_eq!(code, 0, "{out}{err}");
    common::until(Duration::from_secs(4), "a revoked key refused", async || {
        status(&env, &env.base, &key, "after the revocation").await == 401
    })
    .await;
    let (_, again) = env.cli_json(&["keys", "list"]);
    assert_eq!(again["keys"][0]["state"], "revoked");
    let (code, _, _) = env.cli(&["keys", "revoke", "key_0000000000000000"]);
    assert_eq!(code, 2, "an unknown id");

    // Through the admin API: made, then revoked, refused at once here.
    let (code, v) = admin(
        &env,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "team-k", "name": "api", "limits": {"tpm": 5000}})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let (k2, id2) = (
        v["key"].as_str().unwrap().to_string(),
        v["record"]["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(status(&env, &env.base, &k2, "made by the admin API").await, 200);
    let (code, _) = admin(&env, reqwest::Method::DELETE, &format!("/admin/keys/{id2}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(
        status(&env, &env.base, &k2, "revoked here").await,
        401,
        "at once on this replica"
    );
    let (code, _) = admin(
        &env,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "nobody"})),
    )
    .await;
    assert_eq!(code, 400);

    // Rotated with a grace of 2 s: both work, then only the new one.
    let (_, v) = admin(
        &env,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"tenant": "team-k"})),
    )
    .await;
    let (old, old_id) = (
        v["key"].as_str().unwrap().to_string(),
        v["record"]["id"].as_str().unwrap().to_string(),
    );
    let (code, v) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/keys/{old_id}/rotate?grace=2s"),
        None,
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let new = v["key"].as_str().unwrap().to_string();
    assert_eq!(v["record"]["rotated_from"], old_id.as_str());
    assert_eq!(status(&env, &env.base, &new, "the new key").await, 200);
    assert_eq!(status(&env, &env.base, &old, "the old key in its grace").await, 200);
    let took = common::until(
        Duration::from_secs(6),
        "the old key refused after its grace",
        async || status(&env, &env.base, &old, "after the grace").await == 401,
    )
    .await;
    assert!(took >= Duration::from_millis(500), "not before its grace: {took:?}");
    assert_eq!(status(&env, &env.base, &new, "the new key still").await, 200);

    // Every change is in the audit log, never a key.
    let audit = env.admin_json("/admin/audit?limit=100").await;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["key.create", "key.revoke", "key.rotate"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(!audit.to_string().contains(&new) && !audit.to_string().contains(&old));
}

/// Two replicas over one Redis + S3 + PostgreSQL: a key revoked through one
/// replica's admin API is refused there at once and by the other within
/// `[keys] cache_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_other_replica_within_the_cache_window() {
    let Some(b) = Backends::real().await else { return };
    let env = Env::on(b, StubConfig::default(), EXTRA).await;
    let vars = [("RECACHE_ADMIN_TOKEN".to_string(), "admin-secret".to_string())].into();
    let second = recache::server::Gateway::start(env.config(), &vars).await.unwrap();
    let other = format!("http://{}", second.addr);
    let (code, made) = env.cli_json(&["keys", "create", "--tenant", "team-k"]);
    assert_eq!(code, 0);
    let (key, id) = (
        made["key"].as_str().unwrap().to_string(),
        made["record"]["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(status(&env, &env.base, &key, "one").await, 200);
    assert_eq!(
        status(&env, &other, &key, "two").await,
        200,
        "the other replica has read it"
    );
    let (code, _) = admin(&env, reqwest::Method::DELETE, &format!("/admin/keys/{id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(status(&env, &env.base, &key, "three").await, 401);
    let took = common::until(Duration::from_secs(4), "the other replica refuses it", async || {
        status(&env, &other, &key, "four").await == 401
    })
    .await;
    println!("revocation reached the other replica after {took:?} (cache_seconds = 1)");
    second.shutdown().await;
}

/// Use against each limit, per tenant and per key: in `/metrics`, the
/// dashboard's data (with the keys, never a digest) and `report cost`.
async fn use_against_each_limit_is_seen(b: Backends) {
    let real = !matches!(b, Backends::Embedded);
    let extra = format!("{EXTRA}[[tenants]]\nname = \"team-l\"\nrpm = 50\nbudget_usd_day = 2.0\n");
    let env = Env::on(b, StubConfig::default(), &extra).await;
    let (code, made) = env.cli_json(&["keys", "create", "--tenant", "team-l", "--name", "seen", "--rpm", "10"]);
    assert_eq!(code, 0, "{made}");
    let (key, id) = (
        made["key"].as_str().unwrap().to_string(),
        made["record"]["id"].as_str().unwrap().to_string(),
    );
    // Three requests in one minute.
    let s = (recache::roles::now_ms() / 1000) % 60;
    if s >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - s as u64)).await;
    }
    for i in 0..3 {
        assert_eq!(status(&env, &env.base, &key, &format!("seen {i}")).await, 200);
    }
    let metrics = env.metrics_text().await;
    let sample = |family: &str, key: &str, limit: &str| -> Option<f64> {
        let head = format!("{family}{{tenant=\"team-l\",key=\"{key}\",limit=\"{limit}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(head.as_str())?.trim().parse().ok())
    };
    assert_eq!(
        sample("recache_limit_used", &id, "requests_per_minute"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(sample("recache_limit_max", &id, "requests_per_minute"), Some(10.0));
    assert_eq!(sample("recache_limit_used", "", "requests_per_minute"), Some(3.0));
    assert_eq!(sample("recache_limit_max", "", "requests_per_minute"), Some(50.0));
    assert_eq!(sample("recache_limit_max", "", "usd_per_day"), Some(2.0));

    let data = env.admin_json("/dashboard/data").await;
    let keys = data["keys"].as_array().unwrap();
    assert!(
        keys.iter().any(|k| k["id"] == id.as_str() && k["state"] == "active"),
        "{data}"
    );
    assert!(
        !data.to_string().contains(&recache::keys::digest(&key)),
        "no digest on the dashboard"
    );
    let limits = data["limits"].as_array().unwrap();
    assert!(
        limits
            .iter()
            .any(|l| l["key"] == id.as_str() && l["limit"] == "requests_per_minute" && l["used"] == 3.0),
        "{limits:?}"
    );

    let (code, report) = env.cli_json(&["report", "cost"]);
    assert_eq!(code, 0, "{report}");
    let rows = report["limits"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|l| l["tenant"] == "team-l" && l["limit"] == "usd_per_day" && l["max"] == 2.0),
        "{report}"
    );
    if real {
        // On Redis the report reads the live counters.
        assert!(
            rows.iter()
                .any(|l| l["key"] == id.as_str() && l["limit"] == "requests_per_minute" && l["used"] == 3.0),
            "{report}"
        );
    } else {
        assert!(report["limits_note"].as_str().unwrap().contains("/metrics"), "{report}");
    }
}
