//! recache itself: the metadata spool, breakers of the running gateway and
//! their settings, the newest verified backup against the RPO target, the
//! last drills.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Finding;
use recache_core::config::{Config, BREAKER_BACKENDS};
use recache_ops::status::{BackupStatus, DrillStatus};
use recache_storage::roles::now_ms;

const SPOOL: &str = "recache: metadata writes wait in the spool while metadata is down; it drops them when full";
const BREAKERS: &str = "graceful degradation: a circuit breaker per cache backend";
const BACKUP: &str = "backups tested and recent enough for the RPO target";
const DRILL: &str = "DR drills: each backend quarterly, a full restore twice a year";
const DAY_MS: i64 = 86_400_000;
const LIMITS: &str = "tenant controls: every team with its own key, rate limits and a budget";
const GUARDS: &str =
    "semantic matching: near-miss guards that know synonyms (WordNet), so paraphrases hit and twists do not";
const ENCRYPTION: &str = "data protection: answers sealed at rest per tenant, keys wrapped by a master key, rotated";
const AUDIT: &str = "the audit log kept as long as audits need and no longer: a store that does not grow without bound";
/// Per-answer audit events kept forever past this many: a warning (about 420 MB in SQLite).
const AUDIT_UNBOUNDED_WARN: u64 = 1_000_000;
/// About what one per-answer event takes in SQLite (`docs/operations.md`).
const AUDIT_EVENT_BYTES: u64 = 420;

pub fn spool(config: &Config) -> Finding {
    let path = &config.metadata.spool_path;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let max = config.metadata.spool_max_mb * 1024 * 1024;
    let detail = format!(
        "{} KiB waiting in {} (limit {} MiB)",
        size / 1024,
        path.display(),
        config.metadata.spool_max_mb
    );
    if max > 0 && size as f64 >= 0.8 * max as f64 {
        Finding::fail(
            "recache.spool",
            detail,
            "bring metadata back; past the limit registrations are dropped (reconcile-metadata restores them)",
            SPOOL,
        )
    } else if size > 0 {
        Finding::warn(
            "recache.spool",
            detail,
            "metadata was unreachable: check it; the spool replays by itself once it answers",
            SPOOL,
        )
    } else {
        Finding::ok("recache.spool", "empty", SPOOL)
    }
}

/// The breakers of a running gateway, from its detailed `/health/ready`
/// (`token`: the metrics token, when the gateway needs one).
pub async fn breakers(url: &str, token: Option<&str>) -> Finding {
    let ready = format!("{}/health/ready", url.trim_end_matches('/'));
    let got = async {
        let mut req = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?
            .get(&ready);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        r.json::<Value>().await.map_err(|e| e.to_string())
    };
    match got.await {
        Ok(v) => breakers_from(&v),
        Err(e) => Finding::warn(
            "recache.breakers",
            format!("no gateway at {url} ({e}): breaker states unknown"),
            "pass --url of a running gateway",
            BREAKERS,
        ),
    }
}

pub(crate) fn breakers_from(ready: &Value) -> Finding {
    if ready.get("roles").is_none() {
        return Finding::warn(
            "recache.breakers",
            "the gateway showed only its status: its breakers need the metrics token",
            "set RECACHE_METRICS_TOKEN, or run doctor with the gateway's config (server.metrics_token_env or the admin token)",
            BREAKERS,
        );
    }
    let mut open = Vec::new();
    let mut half = Vec::new();
    for r in ready["roles"].as_array().into_iter().flatten() {
        let role = r["role"].as_str().unwrap_or("?");
        match r["breaker"]["state"].as_str() {
            Some("open") | Some("forced_open") => open.push(role.to_string()),
            Some("half_open") => half.push(role.to_string()),
            _ => {}
        }
    }
    if !open.is_empty() {
        Finding::fail(
            "recache.breakers",
            format!("open: {} (requests skip them and go to the provider)", open.join(", ")),
            "fix the backend (see its checks above); the breaker probes and closes by itself",
            BREAKERS,
        )
    } else if !half.is_empty() {
        Finding::warn(
            "recache.breakers",
            format!("half-open (probing): {}", half.join(", ")),
            "wait for the probes; check the backend if it stays so",
            BREAKERS,
        )
    } else {
        Finding::ok("recache.breakers", "every breaker closed", BREAKERS)
    }
}

/// The breaker settings in force, one line.
pub(crate) fn breaker_settings(config: &Config) -> Finding {
    let parts: Vec<String> = BREAKER_BACKENDS
        .iter()
        .map(|b| {
            let s = config.breaker.for_backend(b);
            if s.enabled {
                format!(
                    "{b} {}/{}s/{}",
                    s.failure_threshold, s.open_seconds, s.close_after_successes
                )
            } else {
                format!("{b} off")
            }
        })
        .collect();
    let off: Vec<&str> = BREAKER_BACKENDS
        .iter()
        .copied()
        .filter(|b| !config.breaker.for_backend(b).enabled)
        .collect();
    let detail = format!("failures/open/probes: {}", parts.join(", "));
    if off.is_empty() {
        Finding::ok("recache.breaker_settings", detail, BREAKERS)
    } else {
        Finding::warn(
            "recache.breaker_settings",
            detail,
            format!(
                "breakers off for {}: a hung backend costs a timeout on every request",
                off.join(", ")
            ),
            BREAKERS,
        )
    }
}

/// Tenants with no limit at all, and per-minute limits that `local-share`
/// cannot split among `replicas` live replicas (each then admits at least 1).
/// Sealing at rest: off, or on with every live data key under the current
/// master key (a rotation left half done, or a previous key no longer needed,
/// is a warning; sealed data without a master key is a failure).
/// The semantic guards: off, strict, or lexical with or without WordNet.
pub fn semantic_guards(config: &Config) -> Option<Finding> {
    let s = &config.semantic;
    if !s.enabled && !s.rules.iter().any(|r| r.enabled == Some(true)) {
        return None;
    }
    if s.guards == "strict" {
        return Some(Finding::warn(
            "recache.semantic_guards",
            "strict guards: every substituted word is another question (about 25 % of paraphrases hit)",
            "set [semantic] guards = \"lexical\" (docs/semantic.md, \"The lexical guards\")",
            GUARDS,
        ));
    }
    let dir = &s.lexicon;
    let ok = ["index.noun", "index.verb", "data.adj", "verb.exc"]
        .iter()
        .all(|f| dir.join(f).is_file());
    Some(match ok {
        true => Finding::ok(
            "recache.semantic_guards",
            format!("lexical guards with WordNet at {}", dir.display()),
            GUARDS,
        ),
        false => Finding::warn(
            "recache.semantic_guards",
            format!("lexical guards without WordNet (nothing at {})", dir.display()),
            "install Debian's wordnet-base (bash scripts/fetch-wordnet.sh) or set [semantic] lexicon: without it every substituted word is another question",
            GUARDS,
        ),
    })
}

pub fn encryption(config: &Config, keys: &[recache_storage::roles::data_keys::DataKeyRecord]) -> Finding {
    let live: Vec<_> = keys.iter().filter(|k| k.destroyed_at_ms.is_none()).collect();
    let Some(current) = config.encryption.keys.first().map(|k| k.fingerprint()) else {
        if live.is_empty() {
            return Finding::ok(
                "recache.encryption",
                "off: answers are stored as the provider sent them",
                ENCRYPTION,
            );
        }
        return Finding::fail(
            "recache.encryption",
            format!("metadata holds {} data key(s) and no master key is configured", live.len()),
            "set [encryption] master_key_env (or master_key_file) to the master key: gateways refuse to start without it",
            ENCRYPTION,
        );
    };
    let stale = live.iter().filter(|k| k.master_id != current).count();
    let detail = format!("on: {} live data key(s), master key {current}", live.len());
    if stale > 0 {
        return Finding::warn(
            "recache.encryption",
            detail,
            format!("{stale} data key(s) are wrapped by another master key: run recache encryption rotate-master with previous_master_key_env set"),
            ENCRYPTION,
        );
    }
    if config.encryption.previous_master_key_env.is_some() {
        return Finding::warn(
            "recache.encryption",
            detail,
            "every data key is under the current master key: drop [encryption] previous_master_key_env",
            ENCRYPTION,
        );
    }
    Finding::ok("recache.encryption", detail, ENCRYPTION)
}

pub fn limits(config: &Config, replicas: u64) -> Finding {
    let bare: Vec<&str> = config
        .tenants
        .iter()
        .filter(|t| {
            let l = t.limits();
            l.rpm.is_none() && l.tpm.is_none() && l.budget_usd_day.is_none() && l.budget_usd_month.is_none()
        })
        .map(|t| t.name.as_str())
        .collect();
    let mut unsplittable = Vec::new();
    if config.limits.on_counter_loss == recache_core::config::CounterLoss::LocalShare && replicas > 1 {
        for t in &config.tenants {
            for (what, v) in [("rpm", t.rpm), ("tpm", t.tpm), ("max_concurrent", t.max_concurrent)] {
                if v.is_some_and(|v| v < replicas) {
                    unsplittable.push(format!("{}.{what} = {}", t.name, v.unwrap_or(0)));
                }
            }
        }
    }
    let detail = format!(
        "{} tenants, {} with no rate limit or budget; on_counter_loss = {}, {replicas} live replica(s)",
        config.tenants.len(),
        bare.len(),
        config.limits.on_counter_loss.as_str()
    );
    if !unsplittable.is_empty() {
        return Finding::warn(
            "recache.limits",
            detail,
            format!(
                "{} cannot be split among {replicas} replicas while Redis is out (local-share admits at least 1 each): raise them or use on_counter_loss = \"fail-closed\"",
                unsplittable.join(", ")
            ),
            LIMITS,
        );
    }
    if !bare.is_empty() {
        return Finding::warn(
            "recache.limits",
            detail,
            format!(
                "no limits for {}: one client can spend without bound; set rpm and budget_usd_day under [[tenants]] or per key (recache keys create --rpm N --budget-usd-day X)",
                bare.join(", ")
            ),
            LIMITS,
        );
    }
    Finding::ok("recache.limits", detail, LIMITS)
}

pub fn backup(b: Option<&BackupStatus>, now: i64) -> Finding {
    let Some(b) = b else {
        return Finding::warn(
            "recache.backup",
            "no backup target configured",
            "set [backup] target (and schedule, rpo); see docs/backup.md",
            BACKUP,
        );
    };
    if let Some(e) = &b.error {
        return Finding::fail(
            "recache.backup",
            format!("cannot read {}: {e}", b.target),
            "check the backup target and its credentials",
            BACKUP,
        );
    }
    let Some(age) = b.verified_age(now) else {
        return Finding::fail(
            "recache.backup",
            format!("no verified backup in {}", b.target),
            "recache backup create && recache backup verify --level read-data",
            BACKUP,
        );
    };
    let age_s = age.as_secs();
    let detail = format!(
        "newest verified set {} is {} old{}",
        b.newest_verified_id.as_deref().unwrap_or("?"),
        human(age_s),
        b.rpo_seconds
            .map(|r| format!(" (RPO target {})", human(r)))
            .unwrap_or_default()
    );
    let dr_missing = b.dr_target.is_some() && b.dr_newest_at_ms.is_none();
    match b.rpo_seconds {
        Some(rpo) if age_s > rpo => Finding::fail(
            "recache.backup",
            detail,
            "take and verify a backup now; set [backup] schedule below the RPO target",
            BACKUP,
        ),
        None if age_s > 86_400 => Finding::warn(
            "recache.backup",
            detail,
            "set [backup] rpo and schedule; the newest verified set is over a day old",
            BACKUP,
        ),
        _ if dr_missing => Finding::warn(
            "recache.backup",
            format!("{detail}; no set on the DR target"),
            "recache backup create (copies to dr_target) and check the DR target",
            BACKUP,
        ),
        None => Finding::warn(
            "recache.backup",
            detail,
            "set [backup] rpo so the age is checked against a target",
            BACKUP,
        ),
        _ => Finding::ok("recache.backup", detail, BACKUP),
    }
}

/// Whether backup sets are signed: without a key, whoever can write to the
/// target can plant a set naming any tenant, and a restore would bring it in.
pub fn backup_signing(config: &Config) -> Option<Finding> {
    config.backup.target.as_ref()?;
    Some(match &config.backup.signing_key_env {
        None => Finding::warn(
            "recache.backup_signing",
            "backup sets are not signed: anyone who can write to the target can plant a set a restore trusts",
            "set [backup] signing_key_env to a variable holding 32+ random bytes, kept outside the target",
            BACKUP,
        ),
        Some(var) => Finding::ok(
            "recache.backup_signing",
            format!("backup manifests are signed with the key in {var}"),
            BACKUP,
        ),
    })
}

pub fn drill(d: &DrillStatus, now: i64) -> Finding {
    if let Some(e) = &d.error {
        return Finding::warn(
            "recache.drill",
            format!("cannot read past drills: {e}"),
            "check metadata",
            DRILL,
        );
    }
    let Some(pass) = d.last_pass_at_ms else {
        return Finding::warn(
            "recache.drill",
            "no passing drill on record",
            "recache drill run --scenario index-down --managed (see docs/drills.md)",
            DRILL,
        );
    };
    let days = (now - pass) / DAY_MS;
    let detail = format!(
        "last passing drill {days} day(s) ago{}",
        if d.overdue.is_empty() {
            String::new()
        } else {
            format!("; overdue: {}", d.overdue.join(", "))
        }
    );
    if days > 90 {
        Finding::warn(
            "recache.drill",
            detail,
            "run the overdue drills (recache drill schedule lists them)",
            DRILL,
        )
    } else if !d.overdue.is_empty() {
        Finding::warn(
            "recache.drill",
            detail,
            "recache drill schedule lists what is due",
            DRILL,
        )
    } else {
        Finding::ok("recache.drill", detail, DRILL)
    }
}

/// The audit log against its retention settings (`[metadata] audit_retention_days`
/// and `admin_audit_retention_days`): unbounded and large, or holding events a
/// sweep should have deleted (no gateway sweeping this metadata).
pub fn audit_retention(config: &Config, s: &recache_storage::roles::AuditSummary, now: i64) -> Finding {
    let m = &config.metadata;
    let mib = s.answers * AUDIT_EVENT_BYTES / (1024 * 1024);
    let kept = |days: u64| {
        if days == 0 {
            "forever".to_string()
        } else {
            format!("{days} days")
        }
    };
    let detail = format!(
        "{} per-answer events (about {mib} MiB) kept {}{}; {} other events kept {}",
        s.answers,
        kept(m.audit_retention_days),
        if m.audit_answer_events {
            ""
        } else {
            ", no new ones (audit_answer_events = false)"
        },
        s.operations,
        kept(m.admin_audit_retention_days)
    );
    let age = |oldest: Option<i64>| oldest.map(|t| ((now - t).max(0) / 1000) as u64);
    // A sweep runs every `sweep_interval_seconds`; two days past the cut is a sweep that is not running.
    let overdue = |oldest: Option<i64>, days: u64| {
        days > 0 && age(oldest).is_some_and(|a| a > days.saturating_mul(86_400) + 2 * 86_400)
    };
    for (what, oldest, days) in [
        ("per-answer", s.oldest_answer_ms, m.audit_retention_days),
        ("other", s.oldest_operation_ms, m.admin_audit_retention_days),
    ] {
        if overdue(oldest, days) {
            return Finding::warn(
                "recache.audit_retention",
                format!(
                    "{detail}; the oldest {what} event is {} old, past its {days}-day retention",
                    human(age(oldest).unwrap_or(0))
                ),
                "a running gateway's expiry sweep deletes them ([cache] sweep_interval_seconds): start one on this metadata",
                AUDIT,
            );
        }
    }
    if m.audit_answer_events && m.audit_retention_days == 0 && s.answers >= AUDIT_UNBOUNDED_WARN {
        let oldest = age(s.oldest_answer_ms).map(human).unwrap_or_default();
        return Finding::warn(
            "recache.audit_retention",
            format!("{detail}; the oldest is {oldest} old, and every stored answer adds one"),
            "set [metadata] audit_retention_days (for example 30); the other events keep their own retention (admin_audit_retention_days)",
            AUDIT,
        );
    }
    Finding::ok("recache.audit_retention", detail, AUDIT)
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} days", s as f64 / 86_400.0),
    }
}

/// Every recache check; `url` is a running gateway's base URL.
pub async fn check(config: &Arc<Config>, url: &str) -> Vec<Finding> {
    let token = config.metrics_token(&recache_core::config::env_map());
    let mut out = vec![
        spool(config),
        breakers(url, token.as_deref()).await,
        breaker_settings(config),
    ];
    let now = now_ms();
    out.push(backup(recache_ops::status::backup(config).await.as_ref(), now));
    out.extend(backup_signing(config));
    out.extend(semantic_guards(config));
    match recache_storage::roles::factory::open_metadata(config).await {
        Ok((meta, queue)) => {
            out.push(drill(&recache_ops::status::drills(meta.as_ref()).await, now));
            let gateways = |ws: Vec<recache_storage::queue::WorkerInfo>| {
                ws.iter()
                    .filter(|w| recache_storage::queue::worker::is_gateway(&w.owner))
                    .count()
            };
            let replicas = queue.workers(now - 30_000).await.map(gateways).unwrap_or(0).max(1);
            out.push(limits(config, replicas as u64));
            match meta.audit_summary().await {
                Ok(s) => out.push(audit_retention(config, &s, now)),
                Err(e) => out.push(Finding::warn(
                    "recache.audit_retention",
                    format!("cannot count the audit events: {e}"),
                    "check [metadata]",
                    AUDIT,
                )),
            }
            match meta.list_data_keys(None).await {
                Ok(keys) => out.push(encryption(config, &keys)),
                Err(e) => out.push(Finding::warn(
                    "recache.encryption",
                    format!("cannot list the data keys: {e}"),
                    "check [metadata]",
                    ENCRYPTION,
                )),
            }
        }
        Err(e) => out.push(Finding::warn(
            "recache.drill",
            format!("cannot open metadata: {e:#}"),
            "check [metadata]",
            DRILL,
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn audit_retention_unbounded_or_not_swept() {
        use recache_storage::roles::AuditSummary;
        let now = 400 * DAY_MS;
        let toml = "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[tenants]]\nname = \"a\"\nkeys = [\"k1\"]\n";
        let (mut config, _) = Config::from_toml_str(toml, &Default::default()).unwrap();
        let mut s = AuditSummary {
            answers: 10,
            operations: 2,
            oldest_answer_ms: Some(now - 300 * DAY_MS),
            oldest_operation_ms: Some(now - 300 * DAY_MS),
        };
        let f = audit_retention(&config, &s, now);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(
            f.detail.contains("10 per-answer events") && f.detail.contains("kept forever"),
            "{f:?}"
        );
        s.answers = AUDIT_UNBOUNDED_WARN;
        let f = audit_retention(&config, &s, now);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.fix.contains("audit_retention_days") && f.detail.contains("400 MiB"),
            "{f:?}"
        );
        // No new ones written: the log does not grow.
        config.metadata.audit_answer_events = false;
        let f = audit_retention(&config, &s, now);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.detail.contains("no new ones"), "{f:?}");
        config.metadata.audit_answer_events = true;
        // With a retention the size does not matter; events far past it mean no sweep runs.
        config.metadata.audit_retention_days = 30;
        s.oldest_answer_ms = Some(now - 31 * DAY_MS);
        assert_eq!(audit_retention(&config, &s, now).status, Status::Ok);
        s.oldest_answer_ms = Some(now - 40 * DAY_MS);
        let f = audit_retention(&config, &s, now);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("per-answer event is 40.0 days old"), "{f:?}");
        s.oldest_answer_ms = Some(now - DAY_MS);
        config.metadata.admin_audit_retention_days = 90;
        let f = audit_retention(&config, &s, now);
        assert!(f.detail.contains("other event is 300.0 days old"), "{f:?}");
        s.oldest_operation_ms = None;
        assert_eq!(audit_retention(&config, &s, now).status, Status::Ok);
    }

    #[test]
    fn backup_age_against_the_rpo() {
        let now = 10 * DAY_MS;
        let mut b = BackupStatus {
            target: "/b".into(),
            newest_verified_id: Some("x".into()),
            newest_verified_at_ms: Some(now - 600_000),
            rpo_seconds: Some(900),
            ..Default::default()
        };
        assert_eq!(backup(Some(&b), now).status, Status::Ok);
        b.rpo_seconds = Some(300);
        assert_eq!(backup(Some(&b), now).status, Status::Fail);
        b.newest_verified_at_ms = None;
        assert_eq!(backup(Some(&b), now).status, Status::Fail);
        assert_eq!(backup(None, now).status, Status::Warn);
    }

    #[test]
    fn drills_and_breakers() {
        let now = 200 * DAY_MS;
        let d = DrillStatus {
            last_pass_at_ms: Some(now - 100 * DAY_MS),
            ..Default::default()
        };
        assert_eq!(drill(&d, now).status, Status::Warn);
        let d = DrillStatus {
            last_pass_at_ms: Some(now - DAY_MS),
            ..Default::default()
        };
        assert_eq!(drill(&d, now).status, Status::Ok);
        let ready = serde_json::json!({"roles": [{"role": "index", "breaker": {"state": "open"}}, {"role": "artifacts", "breaker": {"state": "closed"}}]});
        let f = breakers_from(&ready);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("index"));
    }

    #[test]
    fn limits_are_checked() {
        let toml = "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[tenants]]\nname = \"a\"\nkeys = [\"k1\"]\nrpm = 2\n[[tenants]]\nname = \"b\"\nkeys = [\"k2\"]\n";
        let (mut config, _) = Config::from_toml_str(toml, &Default::default()).unwrap();
        let f = limits(&config, 1);
        assert_eq!(f.status, Status::Warn);
        assert!(f.fix.contains("no limits for b"), "{}", f.fix);
        let f = limits(&config, 3);
        assert!(f.fix.contains("a.rpm = 2") && f.fix.contains("3 replicas"), "{}", f.fix);
        config.tenants[1].budget_usd_day = Some(5.0);
        assert_eq!(limits(&config, 1).status, Status::Ok);
        config.limits.on_counter_loss = recache_core::config::CounterLoss::FailClosed;
        assert_eq!(limits(&config, 3).status, Status::Ok);
    }

    #[test]
    fn encryption_is_checked() {
        use recache_core::seal::Key32;
        use recache_storage::roles::data_keys::DataKeyRecord;
        let toml = "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        let (mut config, _) = Config::from_toml_str(toml, &Default::default()).unwrap();
        let (m1, m2) = (Key32::random(), Key32::random());
        let key = |master: &Key32| DataKeyRecord {
            id: "dk_1".into(),
            tenant: "t".into(),
            wrapped: "w".into(),
            master_id: master.fingerprint(),
            created_at_ms: 1,
            retired_at_ms: None,
            destroyed_at_ms: None,
        };
        assert_eq!(encryption(&config, &[]).status, Status::Ok, "off");
        assert_eq!(
            encryption(&config, &[key(&m1)]).status,
            Status::Fail,
            "sealed data, no key"
        );
        config.encryption.keys = vec![m1.clone()];
        assert_eq!(encryption(&config, &[key(&m1)]).status, Status::Ok);
        config.encryption.keys = vec![m2.clone(), m1.clone()];
        config.encryption.previous_master_key_env = Some("OLD".into());
        let f = encryption(&config, &[key(&m1)]);
        assert!(f.status == Status::Warn && f.fix.contains("rotate-master"), "{}", f.fix);
        let f = encryption(&config, &[key(&m2)]);
        assert!(f.status == Status::Warn && f.fix.contains("drop"), "{}", f.fix);
        let mut gone = key(&m1);
        gone.destroyed_at_ms = Some(2);
        config.encryption.keys = vec![m2];
        config.encryption.previous_master_key_env = None;
        assert_eq!(
            encryption(&config, &[gone]).status,
            Status::Ok,
            "a destroyed key needs no master"
        );
    }

    #[test]
    fn semantic_guards_are_checked() {
        let toml = "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
        let (mut config, _) = Config::from_toml_str(toml, &Default::default()).unwrap();
        assert!(semantic_guards(&config).is_none(), "semantic matching off");
        config.semantic.enabled = true;
        let dir = tempfile::tempdir().unwrap();
        config.semantic.lexicon = dir.path().to_path_buf();
        let f = semantic_guards(&config).unwrap();
        assert!(f.status == Status::Warn && f.fix.contains("wordnet-base"), "{}", f.fix);
        for name in ["index.noun", "index.verb", "data.adj", "verb.exc"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(semantic_guards(&config).unwrap().status, Status::Ok);
        config.semantic.guards = "strict".into();
        assert_eq!(semantic_guards(&config).unwrap().status, Status::Warn);
    }
}
