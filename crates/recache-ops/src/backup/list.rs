//! Reading the sets of a target: their manifests (a set without a valid one
//! is unfinished and never listed as complete), verification records, and
//! the summary `backup list` prints.

use serde::Serialize;

use super::manifest::{Manifest, Signature, Verification, MANIFEST, MANIFEST_COPY};
use super::target::Target;
use super::{set_dir, BResult, BackupError};

/// A set's manifest as found: from `manifest.json`, or from its copy when the
/// first is missing or damaged (`damaged` says which problem the first had).
pub struct Found {
    pub manifest: Manifest,
    pub damaged: Option<String>,
    /// The manifest's signature, checked with the target's signing key.
    pub signature: Signature,
}

/// Loads a set's manifest. `Ok(None)`: no manifest at all (unfinished or absent).
///
/// A set's folder name must be a set id ([`super::valid_set_id`]) and its
/// manifest's `id` must be that name: anything else is `Invalid`, reported
/// and never acted on (a planted manifest naming `../..` deletes nothing).
pub async fn load(target: &Target, id: &str) -> BResult<Option<Found>> {
    if !super::valid_set_id(id) {
        return Err(BackupError::Invalid(format!(
            "set folder {id:?} is not a set id (YYYYMMDDTHHMMSSmmmZ); left alone"
        )));
    }
    let found = load_unchecked(target, id).await?;
    if let Some(f) = &found {
        if f.manifest.id != id {
            return Err(BackupError::Invalid(format!(
                "set {id}: its manifest names the set {:?}; refused",
                f.manifest.id
            )));
        }
        for p in f.manifest.files.iter().map(|f| f.path.as_str()) {
            if !super::target::safe_rel(p) {
                return Err(BackupError::Invalid(format!(
                    "set {id}: its manifest lists the file {p:?}, outside the set's folder; refused"
                )));
            }
        }
    }
    Ok(found)
}

async fn load_unchecked(target: &Target, id: &str) -> BResult<Option<Found>> {
    let dir = set_dir(id);
    let first = target.get(&format!("{dir}/{MANIFEST}")).await?;
    let key = target.signing_key.as_deref();
    let first_err = match first.as_deref().map(Manifest::decode) {
        Some(Ok(m)) => {
            return Ok(Some(Found {
                manifest: m,
                damaged: None,
                signature: Manifest::signature(first.as_deref().unwrap_or_default(), key),
            }))
        }
        Some(Err(e)) => Some(format!("{MANIFEST}: {e}")),
        None => None,
    };
    match target.get(&format!("{dir}/{MANIFEST_COPY}")).await? {
        Some(b) => match Manifest::decode(&b) {
            Ok(m) => Ok(Some(Found {
                manifest: m,
                damaged: Some(first_err.unwrap_or_else(|| format!("{MANIFEST} is missing"))),
                signature: Manifest::signature(&b, key),
            })),
            Err(e) => match first_err {
                Some(fe) => Err(BackupError::Invalid(format!(
                    "set {id}: both manifests are damaged ({fe}; {MANIFEST_COPY}: {e})"
                ))),
                // Only the copy exists: an interrupted write of the first; not complete.
                None => Ok(None),
            },
        },
        None => match first_err {
            // The first is damaged and there is no copy: present but not trustworthy.
            Some(fe) => Err(BackupError::Invalid(format!("set {id}: {fe}"))),
            None => Ok(None),
        },
    }
}

/// Every set folder's id, oldest first.
pub async fn ids(target: &Target) -> BResult<Vec<String>> {
    let mut ids = target.dirs("sets").await?;
    ids.sort();
    Ok(ids)
}

/// The sets of a target, sorted by what can be done with them.
#[derive(Default)]
pub struct Sets {
    /// Valid manifest, oldest first.
    pub complete: Vec<Found>,
    /// No manifest yet (a backup running or interrupted).
    pub unfinished: Vec<String>,
    /// Folders that cannot be trusted (not a set id, both manifests damaged,
    /// a manifest naming another set or a path outside it): folder and why.
    /// Reported, never deleted or restored.
    pub invalid: Vec<(String, String)>,
}

/// Every set folder of a target, sorted by [`Sets`].
pub async fn complete(target: &Target) -> BResult<Sets> {
    let mut out = Sets::default();
    for id in ids(target).await? {
        match load(target, &id).await {
            Ok(Some(f)) => out.complete.push(f),
            Ok(None) => out.unfinished.push(id),
            Err(BackupError::Invalid(e)) => {
                tracing::warn!(set = %id, "{e}");
                out.invalid.push((id, e))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The newest complete set (`verified`: the newest one with a passing verification).
pub async fn newest(target: &Target, verified: bool) -> BResult<Option<Manifest>> {
    let mut all = ids(target).await?;
    while let Some(id) = all.pop() {
        if let Ok(Some(f)) = load(target, &id).await {
            if !verified || last_verification(target, &id).await?.is_some_and(|v| v.ok) {
                return Ok(Some(f.manifest));
            }
        }
    }
    Ok(None)
}

/// Records a verification beside the manifest.
pub(crate) async fn record_verification(target: &Target, v: &Verification) -> BResult<()> {
    let rel = format!("{}/verify/{}.json", set_dir(&v.set), super::format_id(v.at_ms));
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    target.put(&rel, body.into()).await?;
    Ok(())
}

/// Every verification of a set, oldest first.
pub async fn verifications(target: &Target, id: &str) -> BResult<Vec<Verification>> {
    let mut files = target.list(&format!("{}/verify", set_dir(id))).await?;
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut out = Vec::new();
    for f in files {
        if let Some(b) = target.get(&f.rel).await? {
            if let Ok(v) = serde_json::from_slice::<Verification>(&b) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

pub(crate) async fn last_verification(target: &Target, id: &str) -> BResult<Option<Verification>> {
    Ok(verifications(target, id).await?.pop())
}

/// One line of `backup list`.
#[derive(Clone, Debug, Serialize)]
pub struct SetSummary {
    pub id: String,
    pub at_ms: i64,
    pub time: String,
    pub kind: String,
    pub trigger: String,
    pub parent: Option<String>,
    pub seconds: f64,
    /// Bytes of the set's own files.
    pub set_bytes: u64,
    /// Bytes of the artifacts it refers to (in the shared pool).
    pub artifact_bytes: u64,
    pub copied_bytes: u64,
    pub entries: u64,
    pub pointers: u64,
    pub artifacts: u64,
    pub missing_artifacts: u64,
    pub vectors: String,
    pub verified: Option<Verification>,
    /// `none` (no DR target), `missing`, `copied`, `verified` or `failed`.
    pub dr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_damaged: Option<String>,
    /// `valid`, `unsigned`, `wrong` or `not_checked` (no signing key configured).
    pub signature: Signature,
}

pub async fn summarize(f: &Found, primary: &Target, dr: Option<&Target>) -> BResult<SetSummary> {
    let m = &f.manifest;
    let dr_state = match dr {
        None => "none".to_string(),
        Some(t) => match load(t, &m.id).await {
            Ok(Some(_)) => match last_verification(t, &m.id).await? {
                Some(v) if v.ok => "verified".into(),
                Some(_) => "failed".into(),
                None => "copied".into(),
            },
            Ok(None) => "missing".into(),
            Err(_) => "damaged".into(),
        },
    };
    Ok(SetSummary {
        id: m.id.clone(),
        at_ms: m.started_at_ms,
        time: super::format_time(m.started_at_ms),
        kind: m.kind.clone(),
        trigger: m.trigger.clone(),
        parent: m.parent.clone(),
        seconds: (m.finished_at_ms - m.started_at_ms) as f64 / 1000.0,
        set_bytes: m.set_bytes(),
        artifact_bytes: m.roles.artifacts.bytes,
        copied_bytes: m.roles.artifacts.copied_bytes,
        entries: m.roles.metadata.entries,
        pointers: m.roles.index.pointers,
        artifacts: m.roles.artifacts.referenced,
        missing_artifacts: m.roles.artifacts.missing,
        vectors: m.roles.vectors.state.clone(),
        verified: last_verification(primary, &m.id).await?,
        dr: dr_state,
        manifest_damaged: f.damaged.clone(),
        signature: f.signature,
    })
}
