//! S3 (the artifacts): bucket reachable, read/write/delete permissions,
//! versioning.

use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};

use super::Finding;
use recache_core::config::Config;
use recache_storage::roles::artifacts_object_store::ObjectStoreArtifacts;
use recache_storage::roles::{ArtifactId, Artifacts};

const ACCESS: &str = "S3 recovery: verify bucket access; the service needs object read and write";
const VERSIONING: &str = "S3 prevention: enable versioning on the cache bucket, so deleted objects can be recovered";

/// Reachability and permissions: a probe artifact written, read back, deleted.
pub async fn check(config: &Config) -> Vec<Finding> {
    let c = &config.artifacts;
    let bucket = c.bucket.clone().unwrap_or_default();
    let store = match ObjectStoreArtifacts::s3(
        &bucket,
        c.endpoint.as_deref(),
        c.region.as_deref(),
        &c.prefix,
        Duration::from_secs(5),
    ) {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::fail(
                "s3.reachable",
                format!("cannot set up the S3 client: {e}"),
                "check artifacts.bucket, endpoint, region and the AWS_* credentials",
                ACCESS,
            )]
        }
    };
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), store.check()).await {
        Ok(Ok(_)) => out.push(Finding::ok("s3.reachable", format!("bucket {bucket} answers"), ACCESS)),
        Ok(Err(e)) => {
            out.push(Finding::fail(
                "s3.reachable",
                format!("bucket {bucket}: {e}"),
                "check the endpoint, the bucket name and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                ACCESS,
            ));
            return out;
        }
        Err(_) => {
            out.push(Finding::fail(
                "s3.reachable",
                format!("bucket {bucket}: no answer within 10 s"),
                "check the endpoint and the network path to it",
                ACCESS,
            ));
            return out;
        }
    }
    out.push(permissions(&store).await);
    out.push(versioning(config).await);
    out
}

async fn permissions(store: &ObjectStoreArtifacts) -> Finding {
    let body = Bytes::from(format!("recache doctor probe {}", recache_storage::roles::now_ms()));
    let id = ArtifactId::of(&body);
    let step = async {
        store.put(id, body.clone()).await.map_err(|e| format!("write: {e}"))?;
        let back = store.get(id).await.map_err(|e| format!("read: {e}"))?;
        if back.as_deref() != Some(&body[..]) {
            return Err("read: the probe came back different".to_string());
        }
        store.delete(id).await.map_err(|e| format!("delete: {e}"))?;
        if store
            .get(id)
            .await
            .map_err(|e| format!("read after delete: {e}"))?
            .is_some()
        {
            return Err("delete: the probe is still there".to_string());
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(15), step).await {
        Ok(Ok(())) => Finding::ok(
            "s3.permissions",
            "write, read and delete of a probe object work",
            ACCESS,
        ),
        Ok(Err(e)) => Finding::fail(
            "s3.permissions",
            format!("probe object {e}"),
            "grant s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket on the bucket to this identity",
            ACCESS,
        ),
        Err(_) => Finding::fail(
            "s3.permissions",
            "the probe object took over 15 s",
            "check the store's health",
            ACCESS,
        ),
    }
}

/// What `GET ?versioning` answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    Suspended,
    /// Never enabled (an empty configuration).
    Off,
    /// The server does not say (not implemented, not allowed, unreachable).
    Unknown(String),
}

/// Parses a `VersioningConfiguration` document.
pub(crate) fn parse_versioning(xml: &str) -> Versioning {
    match xml
        .split("<Status>")
        .nth(1)
        .and_then(|r| r.split("</Status>").next())
        .map(str::trim)
    {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        Some(other) => Versioning::Unknown(format!("status {other}")),
        None if xml.contains("VersioningConfiguration") => Versioning::Off,
        None => Versioning::Unknown("not a versioning document".into()),
    }
}

pub(crate) async fn read_versioning(config: &Config) -> Versioning {
    let c = &config.artifacts;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(access_key), Some(secret_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
        return Versioning::Unknown("no AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY to sign with".into());
    };
    let credential = AwsCredential {
        key_id: access_key,
        secret_key,
        token: env("AWS_SESSION_TOKEN"),
    };
    let region = c.region.clone().unwrap_or_else(|| "us-east-1".into());
    let bucket = c.bucket.clone().unwrap_or_default();
    let base = c
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let Ok(url) = reqwest::Url::parse(&base) else {
        return Versioning::Unknown(format!("bad endpoint {base}"));
    };
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Versioning::Unknown(format!("bad endpoint {base}")),
    };
    // Path-style, as the artifact store addresses the bucket.
    let path = format!("{}/{bucket}", url.path().trim_end_matches('/'));
    let address = format!("{}://{host}{path}?versioning", url.scheme());
    // Signed by object_store's SigV4 signer, the one the artifact store itself uses.
    let mut signed: HttpRequest = match http::Request::get(&address).body(HttpRequestBody::from(Vec::new())) {
        Ok(r) => r,
        Err(e) => return Versioning::Unknown(format!("bad endpoint {base}: {e}")),
    };
    AwsAuthorizer::new(&credential, "s3", &region).authorize(&mut signed, None);
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => return Versioning::Unknown(e.to_string()),
    };
    let mut req = client.get(&address);
    for (k, v) in signed.headers().iter().filter(|(k, _)| *k != http::header::HOST) {
        req = req.header(k.as_str(), v.as_bytes());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => parse_versioning(&r.text().await.unwrap_or_default()),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let code = body
                .split("<Code>")
                .nth(1)
                .and_then(|x| x.split("</Code>").next())
                .unwrap_or("");
            Versioning::Unknown(format!("the server answered {status} {code}").trim().to_string())
        }
        Err(e) => Versioning::Unknown(e.to_string()),
    }
}

async fn versioning(config: &Config) -> Finding {
    let fix = "aws s3api put-bucket-versioning --bucket <bucket> --versioning-configuration Status=Enabled (with a lifecycle rule expiring noncurrent versions)";
    match read_versioning(config).await {
        Versioning::Enabled => Finding::ok("s3.versioning", "versioning enabled", VERSIONING),
        Versioning::Suspended => Finding::warn(
            "s3.versioning",
            "versioning suspended: deleted artifacts cannot be recovered (only bought again from the provider)",
            fix,
            VERSIONING,
        ),
        Versioning::Off => Finding::warn(
            "s3.versioning",
            "versioning off: deleted artifacts cannot be recovered (only bought again from the provider)",
            fix,
            VERSIONING,
        ),
        Versioning::Unknown(why) => Finding::warn(
            "s3.versioning",
            format!("versioning cannot be known ({why})"),
            "check the bucket's versioning in the storage provider's console; enable it if you can",
            VERSIONING,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioning_documents() {
        let doc = |inner: &str| {
            format!("<?xml version=\"1.0\"?><VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{inner}</VersioningConfiguration>")
        };
        assert_eq!(parse_versioning(&doc("<Status>Enabled</Status>")), Versioning::Enabled);
        assert_eq!(
            parse_versioning(&doc("<Status>Suspended</Status>")),
            Versioning::Suspended
        );
        assert_eq!(parse_versioning(&doc("")), Versioning::Off);
        assert!(matches!(parse_versioning("<Error/>"), Versioning::Unknown(_)));
    }
}
