//! A TCP relay on loopback in front of one engine, so a managed drill can cut
//! the gateway off from it for real (connections reset, new ones refused)
//! without touching the engine itself, then heal it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct Relay {
    pub name: String,
    pub addr: SocketAddr,
    pub target: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on an ephemeral loopback port and forwards to `target` (`host:port`).
    pub async fn start(name: &str, target: &str) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, list, to) = (cut.clone(), conns.clone(), target.to_string());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let to = to.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
                l.retain(|h| !h.is_finished());
                l.push(task.abort_handle());
            }
        });
        Ok(Relay {
            name: name.to_string(),
            addr,
            target: target.to_string(),
            cut,
            conns,
            accept,
        })
    }

    /// The engine becomes unreachable: open connections are dropped, new ones closed at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    pub(crate) fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }
}

/// `host:port` of a URL (with the scheme's default port), or `None`
/// (a Unix socket, no host).
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.to_string();
    let port = u.port_or_known_default().or(match u.scheme() {
        "redis" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    })?;
    Some((host, port))
}

/// The URL with its host and port replaced by the relay's.
pub fn through(url: &str, relay: SocketAddr) -> Option<String> {
    let mut u = reqwest::Url::parse(url).ok()?;
    u.set_host(Some(&relay.ip().to_string())).ok()?;
    u.set_port(Some(relay.port())).ok()?;
    Some(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_through_the_relay() {
        assert_eq!(host_port("redis://127.0.0.1:7000/0"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(host_port("postgres://u@localhost/db"), Some(("localhost".into(), 5432)));
        assert_eq!(host_port("http://h:9000"), Some(("h".into(), 9000)));
        let r: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            through("postgres://u:p@db:5432/x?sslmode=disable", r).unwrap(),
            "postgres://u:p@127.0.0.1:5555/x?sslmode=disable"
        );
        assert_eq!(through("http://h:9000/v1", r).unwrap(), "http://127.0.0.1:5555/v1");
    }

    #[tokio::test]
    async fn a_cut_relay_refuses_and_a_healed_one_forwards() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 4];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start("echo", &echo_addr.to_string()).await.unwrap();
        let roundtrip = |addr| async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.ok()?;
            Some(b)
        };
        assert_eq!(roundtrip(relay.addr).await, Some(*b"ping"));
        relay.cut();
        assert_eq!(roundtrip(relay.addr).await, None);
        relay.heal();
        assert_eq!(roundtrip(relay.addr).await, Some(*b"ping"));
    }
}
