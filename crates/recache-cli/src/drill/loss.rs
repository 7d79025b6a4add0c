//! Data destroyed on purpose, as a loss drill makes it. Each function acts on
//! the stores directly (unguarded where that matters: a loss is not a call
//! the breaker should refuse) and returns what it destroyed.

use futures_util::StreamExt;

use recache_storage::roles::{ArtifactId, Roles};

/// Every pointer and the generation marker, as a Redis restarting empty would lose them.
pub(crate) async fn wipe_index(roles: &Roles) -> anyhow::Result<u64> {
    Ok(roles.index.wipe().await?)
}

/// Deletes `fraction` of the artifacts (every `1/fraction`-th by id, so the
/// choice is spread evenly). Returns (deleted, listed).
pub(crate) async fn delete_artifacts(roles: &Roles, fraction: f64) -> anyhow::Result<(u64, u64)> {
    let listed = roles.artifacts.list().await?;
    let total = listed.len() as u64;
    let picked: Vec<ArtifactId> = listed
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let per_million = (fraction.clamp(0.0, 1.0) * 1e6).round() as u64;
            (*i as u64 + 1) * per_million / 1_000_000 > *i as u64 * per_million / 1_000_000
        })
        .map(|(_, a)| a.id)
        .collect();
    let deleted = futures_util::stream::iter(picked)
        .map(|id| async move { roles.artifacts.delete(id).await.unwrap_or(false) })
        .buffer_unordered(32)
        .filter(|d| std::future::ready(*d))
        .count()
        .await;
    Ok((deleted as u64, total))
}

/// Every entry row, in one statement (the audit log and the job queue stay,
/// so recovery jobs can run).
pub(crate) async fn wipe_metadata(roles: &Roles) -> anyhow::Result<u64> {
    Ok(roles.metadata.purge_expired(i64::MAX).await?.len() as u64)
}

/// Every vector of the entries metadata knows (call before wiping metadata).
pub(crate) async fn wipe_vectors(roles: &Roles) -> anyhow::Result<u64> {
    if !roles.vectors.enabled() {
        return Ok(0);
    }
    let mut after = None;
    let mut n = 0;
    loop {
        let page = roles.metadata.entries_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        n += roles.vectors.delete(page.iter().map(|e| e.key).collect()).await?;
    }
    Ok(n)
}
