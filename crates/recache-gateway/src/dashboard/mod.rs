//! The operator dashboard: `GET /dashboard`, one page embedded in the binary
//! (no CDN, no network), over `GET /dashboard/data` (JSON). Both need the
//! admin token: as a bearer header, or through the login form, which opens a
//! server-side session ([`session`]): the cookie is a random id, ended by
//! logout, by its expiry and by a change of the admin token; failed logins
//! are throttled per client address.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::Extension;

use crate::gateway::AppState;
use recache_engine::error::ApiError;

pub mod data;
pub mod history;
pub mod session;

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
/// The session cookie's name.
pub const COOKIE: &str = "recache_session";
/// How long a login lasts in the browser.
const SESSION_SECONDS: u64 = 12 * 3600;

/// What the dashboard keeps: the history ring and the last backup/drill status.
#[derive(Default)]
pub struct Dashboard {
    pub history: history::History,
    pub ops: recache_ops::status::OpsStatusCache,
    /// The backends' health, reused for 2 s: many open pages cost one check.
    pub backends: std::sync::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
    /// Login sessions and failed-login counts.
    pub sessions: session::Sessions,
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/data", get(data_json))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
}

/// The session ids in the request's cookies.
fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The admin token as a bearer header, or a live session.
fn authorized(s: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.admin_token else {
        return false;
    };
    crate::gateway::ops::bearer_is(headers, token)
        || session_ids(headers).any(|id| s.dashboard.sessions.valid(id, token))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"err\" id=\"login-error\">{message}</p>")
    };
    html(status, LOGIN.replace("<!--MESSAGE-->", &note))
}

/// `GET /dashboard`: the page, or the login form (401) without a session.
async fn page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if s.admin_token.is_none() {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "The dashboard needs an admin token: set the variable named by server.admin_token_env.",
        );
    }
    if !authorized(&s, &headers) {
        return login_page(StatusCode::UNAUTHORIZED, "");
    }
    html(StatusCode::OK, PAGE.to_string())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /dashboard/login` (form field `token`): opens a session and sets its cookie.
async fn login(
    State(s): State<Arc<AppState>>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(token) = &s.admin_token else {
        return login_page(StatusCode::UNAUTHORIZED, "No admin token is configured.");
    };
    let addr = client.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0 .0.ip());
    let sessions = &s.dashboard.sessions;
    if let Err(wait) = sessions.may_try(addr) {
        tracing::warn!(client = %addr, "dashboard login refused (too many failed attempts)");
        let mut resp = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins from this address; try again later.",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let given = form.map(|f| f.0.token).unwrap_or_default();
    if !crate::gateway::ops::constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        sessions.failed(addr);
        tracing::warn!(client = %addr, "dashboard login refused (wrong token)");
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    sessions.succeeded(addr);
    let id = sessions.open(token, Duration::from_secs(SESSION_SECONDS));
    let cookie = format!(
        "{COOKIE}={id}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
        if s.config.server.secure_cookies { "; Secure" } else { "" }
    );
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /dashboard/logout`: ends the session on the server and clears the cookie.
async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    for id in session_ids(&headers) {
        s.dashboard.sessions.close(id);
    }
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("recache_session=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// `GET /dashboard/data`: everything the page shows, as JSON.
async fn data_json(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return ApiError::AdminUnauthorized.into_response();
    }
    let mut resp = Json(data::build(&s).await).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Samples the counters every [`history::STEP`] and refreshes the backup and
/// drill status every minute.
pub fn spawn(state: &Arc<AppState>) -> Vec<tokio::task::JoinHandle<()>> {
    let sampler = {
        let s = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(history::STEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                s.dashboard.history.push(history::Sample::take(&s));
            }
        })
    };
    let ops = {
        let s = state.clone();
        tokio::spawn(async move {
            // Off the start-up path: the first read waits a few seconds (listing a
            // backup target and the audit log is bulk work).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                s.dashboard
                    .ops
                    .refresh(&s.config, s.cache.roles.metadata.as_ref())
                    .await;
            }
        })
    };
    vec![sampler, ops]
}
