//! recache-core: the types every layer of recache shares, and nothing that
//! reaches a network or a store: the configuration (typed, validated), cache
//! keys, the artifact envelope, circuit breakers, the provider endpoints and
//! their prices, and time. See `ARCHITECTURE.md` ("Crates") for the layers
//! above it.

pub mod artifact;
pub mod breaker;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod key;
pub mod prom;
pub mod seal;
pub mod time;
