//! Data destroyed on purpose: the functions live in `recache_ops::drills::wipe`
//! (a gateway runs them as the `drill-wipe` job for `drill run --url`).

use recache_ops::drills::wipe;
use recache_storage::roles::Roles;

pub(crate) async fn wipe_index(roles: &Roles) -> anyhow::Result<u64> {
    Ok(wipe::wipe_index(roles).await?)
}

pub(crate) async fn delete_artifacts(roles: &Roles, fraction: f64) -> anyhow::Result<(u64, u64)> {
    Ok(wipe::delete_artifacts(roles, fraction).await?)
}

pub(crate) async fn wipe_metadata(roles: &Roles) -> anyhow::Result<u64> {
    Ok(wipe::wipe_metadata(roles).await?)
}

pub(crate) async fn wipe_vectors(roles: &Roles) -> anyhow::Result<u64> {
    Ok(wipe::wipe_vectors(roles).await?)
}
