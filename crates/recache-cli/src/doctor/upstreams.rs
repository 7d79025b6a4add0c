//! The providers: each upstream answers HTTP at its `base_url`. One `GET` of
//! the base URL, through the same proxy settings and TLS checks as provider
//! calls; any status counts as an answer (a provider's API root answers 401 or
//! 404), and no model is called, so the check costs nothing.

use std::time::{Duration, Instant};

use super::Finding;
use recache_core::config::{Config, UpstreamConfig};
use recache_engine::upstream::error_chain;

const ADVICE: &str = "every miss goes to a provider: each upstream reachable from the gateway's host";

/// One finding per upstream, `upstream.<name>`.
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for u in &config.upstreams {
        out.push(check_one(u).await);
    }
    out
}

async fn check_one(u: &UpstreamConfig) -> Finding {
    let name = format!("upstream.{}", u.name);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(u.connect_timeout_ms))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => return Finding::fail(&name, format!("no HTTP client: {e}"), "report this", ADVICE),
    };
    // Scheme, host and port only: a base URL may carry credentials or a key.
    let target = reqwest::Url::parse(&u.base_url)
        .ok()
        .and_then(|url| {
            let host = url.host_str()?.to_string();
            Some(match url.port() {
                Some(p) => format!("{}://{host}:{p}", url.scheme()),
                None => format!("{}://{host}", url.scheme()),
            })
        })
        .unwrap_or_else(|| "its base_url".into());
    let started = Instant::now();
    match client.get(&u.base_url).send().await {
        Ok(r) => Finding::ok(
            &name,
            format!(
                "{target} answers (HTTP {}, {} ms)",
                r.status().as_u16(),
                started.elapsed().as_millis()
            ),
            ADVICE,
        ),
        Err(e) => {
            let why = if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "cannot connect".to_string()
            } else {
                "no HTTP answer".to_string()
            };
            Finding::fail(
                &name,
                format!("{target}: {why} ({})", error_chain(&e)),
                format!(
                    "check upstreams.{}.base_url, DNS, proxy and firewall from this host; meanwhile every miss fails with 502 (hits are still served)",
                    u.name
                ),
                ADVICE,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config(base_url: &str) -> Config {
        let toml = format!(
            "[[upstreams]]\nname = \"p\"\nbase_url = \"{base_url}\"\nconnect_timeout_ms = 2000\n\
             [[tenants]]\nname = \"a\"\nkeys = [\"k1\"]\n"
        );
        Config::from_toml_str(&toml, &Default::default()).unwrap().0
    }

    #[tokio::test]
    async fn an_answering_upstream_is_ok_and_a_closed_port_fails() {
        // A provider root that answers 401 to a GET, as real ones do.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let f = check(&config(&format!("http://{addr}/v1"))).await;
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].check.as_str(), f[0].status), ("upstream.p", Status::Ok), "{f:?}");
        assert!(f[0].detail.contains("HTTP 401"), "{f:?}");

        // A port nothing listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let f = check(&config(&format!("http://127.0.0.1:{port}/v1"))).await;
        assert_eq!(f[0].status, Status::Fail, "{f:?}");
        assert!(f[0].detail.contains("cannot connect"), "{f:?}");
        assert!(f[0].fix.contains("upstreams.p.base_url"), "{f:?}");
    }
}
