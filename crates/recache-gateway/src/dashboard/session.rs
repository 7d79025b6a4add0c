//! Dashboard sessions, kept on the server: a login gets a random 256-bit id
//! (the cookie), the server keeps only its SHA-256 with an expiry and a digest
//! of the admin token it was opened with. Logout deletes it; changing the
//! admin token ends every session; nothing in the cookie says anything about
//! the token. Failed logins are counted per client address: past
//! [`MAX_FAILURES`] in [`FAILURE_WINDOW`], that address is refused (429) until
//! the window ends. Sessions live in this process: behind a load balancer,
//! route `/dashboard` to one replica, or use the bearer header
//! (`docs/operations.md`, "Security").

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Failed logins an address may make within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Sessions kept at most (the oldest is dropped past it).
const MAX_SESSIONS: usize = 1024;
/// Addresses tracked for failed logins at most.
const MAX_ADDRESSES: usize = 16_384;

type Digest32 = [u8; 32];

fn digest(parts: &[&[u8]]) -> Digest32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    h.finalize().into()
}

struct Session {
    expires: Instant,
    /// Which admin token opened it.
    token: Digest32,
}

struct Failures {
    since: Instant,
    count: u32,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Digest32, Session>,
    failures: HashMap<IpAddr, Failures>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// A fresh random session id (64 hex characters), from the OS's generator.
fn random_id() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the OS random number generator is available");
    hex::encode(b)
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `token`, valid for `ttl`; returns its id (the cookie's value).
    pub fn open(&self, token: &str, ttl: Duration) -> String {
        let id = random_id();
        let now = Instant::now();
        let mut g = self.lock();
        g.sessions.retain(|_, s| s.expires > now);
        if g.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = g.sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                g.sessions.remove(&oldest);
            }
        }
        g.sessions.insert(
            digest(&[b"session", id.as_bytes()]),
            Session {
                expires: now + ttl,
                token: digest(&[b"token", token.as_bytes()]),
            },
        );
        id
    }

    /// Whether `id` is a live session opened with the current `token`.
    pub fn valid(&self, id: &str, token: &str) -> bool {
        let now = Instant::now();
        let key = digest(&[b"session", id.as_bytes()]);
        let g = self.lock();
        g.sessions
            .get(&key)
            .is_some_and(|s| s.expires > now && s.token == digest(&[b"token", token.as_bytes()]))
    }

    /// Ends a session (logout).
    pub fn close(&self, id: &str) {
        let key = digest(&[b"session", id.as_bytes()]);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sessions
            .remove(&key);
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        let g = self.lock();
        g.sessions.values().filter(|s| s.expires > now).count()
    }

    /// `Err(wait)` when `addr` has failed too often lately.
    pub(crate) fn may_try(&self, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let g = self.lock();
        match g.failures.get(&addr) {
            Some(f) if f.count >= MAX_FAILURES && now < f.since + FAILURE_WINDOW => Err(f.since + FAILURE_WINDOW - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut g = self.lock();
        if g.failures.len() >= MAX_ADDRESSES {
            g.failures.retain(|_, f| now < f.since + FAILURE_WINDOW);
        }
        if g.failures.len() >= MAX_ADDRESSES && !g.failures.contains_key(&addr) {
            // Full of live entries: the oldest one goes.
            if let Some(oldest) = g.failures.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k) {
                g.failures.remove(&oldest);
            }
        }
        let f = g.failures.entry(addr).or_insert(Failures { since: now, count: 0 });
        if now >= f.since + FAILURE_WINDOW {
            *f = Failures { since: now, count: 0 };
        }
        f.count += 1;
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&self, addr: IpAddr) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
            .remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_revocable_and_bound_to_the_token() {
        let s = Sessions::default();
        let a = s.open("tok", Duration::from_secs(60));
        let b = s.open("tok", Duration::from_secs(60));
        assert_ne!(a, b, "every login gets its own id");
        assert_eq!(a.len(), 64);
        assert!(s.valid(&a, "tok") && s.valid(&b, "tok"));
        assert!(!s.valid(&a, "rotated"), "a new admin token ends old sessions");
        s.close(&a);
        assert!(!s.valid(&a, "tok"), "logout ends the session on the server");
        assert!(s.valid(&b, "tok"), "and only that one");
        let c = s.open("tok", Duration::ZERO);
        assert!(!s.valid(&c, "tok"), "expired");
        assert!(!s.valid("00ff", "tok"));
    }

    #[test]
    fn failed_logins_are_throttled_per_address() {
        let s = Sessions::default();
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert!(s.may_try(x).is_ok());
            s.failed(x);
        }
        let wait = s.may_try(x).unwrap_err();
        assert!(wait > Duration::from_secs(250) && wait <= FAILURE_WINDOW, "{wait:?}");
        assert!(s.may_try(y).is_ok(), "another address is not affected");
        s.succeeded(x);
        assert!(s.may_try(x).is_ok());
    }
}
