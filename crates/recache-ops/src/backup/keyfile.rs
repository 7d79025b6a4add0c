//! The tenants' data keys on a backup target: one file per target
//! (`keys/data-keys.jsonl`), beside the sets rather than in them, so that an
//! erasure can reach every older set by rewriting one file ("Data
//! protection" in `docs/operations.md`). Keys are only ever there wrapped by
//! the master key. A destroyed key stays as a row without its wrapped key,
//! and a destroyed row always wins a merge, so a key once erased never comes
//! back from a metadata or a file that still held it.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::target::Target;
use super::{codec, BResult, BackupError};
use recache_storage::roles::data_keys::DataKeyRecord;

pub const KEY_FILE: &str = "keys/data-keys.jsonl";

/// The keys a target holds (none when it has no key file yet).
pub async fn read(target: &Target) -> BResult<Vec<DataKeyRecord>> {
    let Some(bytes) = target.get(KEY_FILE).await? else {
        return Ok(Vec::new());
    };
    codec::parse_json_lines(&bytes).map_err(|e| BackupError::Invalid(format!("{KEY_FILE} on {}: {e}", target.label)))
}

/// `a` and `b` by key id; of two rows for one id the destroyed one wins,
/// then the one with the newer state (retired over active).
pub fn merge(a: Vec<DataKeyRecord>, b: Vec<DataKeyRecord>) -> Vec<DataKeyRecord> {
    let mut by_id: BTreeMap<String, DataKeyRecord> = BTreeMap::new();
    for k in a.into_iter().chain(b) {
        match by_id.get(&k.id) {
            Some(have) if rank(have) >= rank(&k) => {}
            _ => {
                by_id.insert(k.id.clone(), k);
            }
        }
    }
    let mut out: Vec<DataKeyRecord> = by_id.into_values().collect();
    out.sort_by(|x, y| (x.created_at_ms, &x.id).cmp(&(y.created_at_ms, &y.id)));
    out
}

fn rank(k: &DataKeyRecord) -> u8 {
    if k.destroyed_at_ms.is_some() || k.wrapped.is_empty() {
        2
    } else if k.retired_at_ms.is_some() {
        1
    } else {
        0
    }
}

/// Merges `keys` (metadata's) into the target's file and writes it back
/// (one object put: readers see the old file or the new one). Answers the
/// rows the file holds and how many of them are destroyed.
pub async fn write_merged(target: &Target, keys: Vec<DataKeyRecord>) -> BResult<(u64, u64)> {
    let merged = merge(read(target).await?, keys);
    let destroyed = merged.iter().filter(|k| rank(k) == 2).count() as u64;
    let mut out = Vec::new();
    codec::json_lines(&merged, &mut out);
    target.put(KEY_FILE, Bytes::from(out)).await?;
    Ok((merged.len() as u64, destroyed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, wrapped: &str, retired: Option<i64>, destroyed: Option<i64>) -> DataKeyRecord {
        DataKeyRecord {
            id: id.into(),
            tenant: "t".into(),
            wrapped: wrapped.into(),
            master_id: "m".into(),
            created_at_ms: 1,
            retired_at_ms: retired,
            destroyed_at_ms: destroyed,
        }
    }

    #[test]
    fn a_destroyed_key_wins_every_merge() {
        let live = key("dk_1", "w", None, None);
        let retired = key("dk_1", "w", Some(5), None);
        let gone = key("dk_1", "", Some(5), Some(9));
        for (a, b) in [
            (vec![live.clone()], vec![gone.clone()]),
            (vec![gone.clone()], vec![live.clone()]),
            (vec![retired.clone(), gone.clone()], vec![live.clone()]),
        ] {
            assert_eq!(merge(a, b), vec![gone.clone()]);
        }
        assert_eq!(merge(vec![live.clone()], vec![retired.clone()]), vec![retired]);
        let other = key("dk_2", "x", None, None);
        assert_eq!(merge(vec![live.clone()], vec![other.clone()]).len(), 2);
    }
}
