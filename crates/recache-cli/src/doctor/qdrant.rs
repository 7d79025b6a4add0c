//! Qdrant (the vectors, when configured): reachable, recache's collections
//! with their dimension and points, replication factor.

use std::time::Duration;

use super::Finding;
use recache_core::config::Config;
use recache_storage::roles::vectors_qdrant::QdrantVectors;
use recache_storage::roles::Vectors;

const REPLICAS: &str = "Qdrant prevention: replication factor of 2 or more";
const REACH: &str = "Qdrant recovery: check cluster health and the collection first";

/// The dimension an embedder fingerprint puts in a collection's name
/// (`kind:model:dimension:...`, with `:` written `_`): its first all-digit part.
pub(crate) fn named_dimension(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?
        .split('_')
        .skip(2)
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

pub async fn check(config: &Config) -> Vec<Finding> {
    let url = config.vectors.url.clone().unwrap_or_default();
    let q = match QdrantVectors::new(&url, Duration::from_secs(10), &config.vectors.collection_prefix) {
        Ok(q) => q,
        Err(e) => {
            return vec![Finding::fail(
                "qdrant.reachable",
                format!("cannot set up the Qdrant client: {e}"),
                "check vectors.url (the gRPC port, 6334 by default)",
                REACH,
            )]
        }
    };
    let mut out = Vec::new();
    let collections = match tokio::time::timeout(Duration::from_secs(10), q.collections()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return vec![Finding::fail(
                "qdrant.reachable",
                format!("{url}: {e}"),
                "start Qdrant or fix vectors.url; exact matching goes on meanwhile",
                REACH,
            )]
        }
        Err(_) => {
            return vec![Finding::fail(
                "qdrant.reachable",
                format!("{url}: no answer within 10 s"),
                "check Qdrant's health and the network path",
                REACH,
            )]
        }
    };
    out.push(Finding::ok("qdrant.reachable", format!("{url} answers"), REACH));
    out.push(if collections.is_empty() {
        Finding::warn(
            "qdrant.collections",
            format!("no collection with prefix '{}' yet", config.vectors.collection_prefix),
            "recache vectors init --collection NAME --dimension N (or let the gateway create it on first use)",
            REACH,
        )
    } else if let Some((bad, want)) = collections.iter().find_map(|c| {
        let want = named_dimension(&c.name, &config.vectors.collection_prefix)?;
        (want != c.dimension).then_some((c, want))
    }) {
        Finding::fail(
            "qdrant.collections",
            format!(
                "collection {} holds vectors of dimension {}, its embedder's fingerprint says {want}",
                bad.name, bad.dimension
            ),
            "delete it and let recache recreate it (rebuild-vectors refills it from metadata)",
            REACH,
        )
    } else if let Some(bad) = collections.iter().find(|c| c.dimension == 0) {
        Finding::fail(
            "qdrant.collections",
            format!("collection {} has no single dense vector configuration", bad.name),
            "recreate it with recache vectors init --collection NAME --dimension N",
            REACH,
        )
    } else {
        Finding::ok(
            "qdrant.collections",
            collections
                .iter()
                .map(|c| format!("{} (dimension {}, {} points)", c.name, c.dimension, c.points))
                .collect::<Vec<_>>()
                .join("; "),
            REACH,
        )
    });
    if let Ok(Ok(reps)) = tokio::time::timeout(Duration::from_secs(10), q.replication()).await {
        let single: Vec<String> = reps
            .iter()
            .filter(|(_, r, _)| *r < 2)
            .map(|(n, r, _)| format!("{n} (replication factor {r})"))
            .collect();
        if !reps.is_empty() {
            out.push(if single.is_empty() {
                Finding::ok(
                    "qdrant.replication",
                    "every collection has 2 replicas or more",
                    REPLICAS,
                )
            } else {
                Finding::warn(
                    "qdrant.replication",
                    format!(
                        "{}: a node loss loses these vectors until they are rebuilt from metadata",
                        single.join(", ")
                    ),
                    "run a Qdrant cluster and raise replication_factor to 2 (PATCH /collections/NAME)",
                    REPLICAS,
                )
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dimension_from_the_collection_name() {
        let local = recache_engine::semantic::embedder::collection_for("recache-", "local:all-MiniLM-L6-v2:384:l2:256");
        assert_eq!(super::named_dimension(&local, "recache-"), Some(384));
        let provider = recache_engine::semantic::embedder::collection_for(
            "recache-",
            "provider:stub:text-embedding-3-small:1536:l2",
        );
        assert_eq!(super::named_dimension(&provider, "recache-"), Some(1536));
        assert_eq!(super::named_dimension("other", "recache-"), None);
    }
}
