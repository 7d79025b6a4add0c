//! recache-gateway: the HTTP side (ARCHITECTURE.md, "Request path"): the
//! proxy and its admin API, the dashboard, the HTTP/1 serve loop, and
//! `server`, which opens the stores and composes the routers in one place.
//!
//! Above `recache-ops`; below the command line.

pub mod dashboard;
pub mod gateway;
pub mod http;
pub mod routes;
pub mod server;
