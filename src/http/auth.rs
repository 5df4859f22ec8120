//! Who may use the dashboard and the API, and how a browser proves it.
//!
//! - **Open** (loopback, no token configured): everyone who can reach the
//!   port is the local operator. The `Host` header must name a loopback host,
//!   so a web page cannot reach the port through DNS rebinding.
//! - **Token** (`--token-file`, required off loopback): an API client sends
//!   `Authorization: Bearer TOKEN`; a browser signs in once with the token
//!   (`POST /api/v1/session`) and gets an HttpOnly, SameSite=Strict session
//!   cookie that lasts [`SESSION_TTL`].
//!
//! State-changing requests (POST, DELETE) from a browser must carry the
//! session's CSRF token in `X-CSRF-Token` and must not come from another
//! site (`Origin`, `Sec-Fetch-Site`). A bearer token is never sent by a
//! browser on its own, so bearer requests need no CSRF token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

pub const COOKIE: &str = "nova_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 1000;

/// How a request proved who it is.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Loopback without a token: the local operator.
    Open {
        csrf: String,
    },
    Session {
        csrf: String,
    },
    Bearer,
}

impl Caller {
    /// Whether a state-changing request must show a CSRF token.
    fn csrf(&self) -> Option<&str> {
        match self {
            Caller::Open { csrf } | Caller::Session { csrf } => Some(csrf),
            Caller::Bearer => None,
        }
    }
}

struct Session {
    csrf: String,
    expires: Instant,
}

pub struct Auth {
    token: Option<String>,
    /// The CSRF token of open (loopback, tokenless) mode.
    open_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// Served over TLS: the session cookie is marked Secure.
    secure: std::sync::atomic::AtomicBool,
}

pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            token,
            open_csrf: random_token(),
            sessions: Mutex::new(HashMap::new()),
            secure: Default::default(),
        }
    }

    /// The listener is TLS: browsers send the session cookie only over it.
    pub fn set_secure_cookies(&self) {
        self.secure
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn secure_cookies(&self) -> bool {
        self.secure.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether signing in is needed (a token is configured).
    pub fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given.as_bytes())))
    }

    /// Who made `headers`' request, if anyone may.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.token.is_none() {
            return Some(Caller::Open {
                csrf: self.open_csrf.clone(),
            });
        }
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.token_matches(bearer.trim()).then_some(Caller::Bearer);
        }
        let id = session_cookie(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match sessions.get(&id) {
            Some(s) if s.expires > now => Some(Caller::Session {
                csrf: s.csrf.clone(),
            }),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Sign in with `token`: a new session's id and CSRF token.
    pub fn sign_in(&self, token: &str) -> Option<(String, String)> {
        if !self.token_matches(token) {
            return None;
        }
        let (id, csrf) = (random_token(), random_token());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Some((id, csrf))
    }

    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(|c| c.ok())
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// The `Set-Cookie` value of a new session (or, with `None`, of signing out).
pub fn session_cookie_header(id: Option<&str>, secure: bool) -> String {
    let mut c = cookie::Cookie::build((COOKIE, id.unwrap_or("").to_string()))
        .http_only(true)
        .secure(secure)
        .same_site(cookie::SameSite::Strict)
        .path("/");
    c = match id {
        Some(_) => c.max_age(cookie::time::Duration::seconds(SESSION_TTL.as_secs() as i64)),
        None => c.max_age(cookie::time::Duration::ZERO),
    };
    c.build().to_string()
}

/// Whether the request comes from a page of another site.
pub fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority.is_none() || authority != host
        }
    }
}

/// Whether a `Host` header names this machine's loopback.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "localhost" | "[::1]")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// In open mode (no token), every route answers only to a loopback `Host`:
/// a page that rebinds its own name to 127.0.0.1 gets nothing, not even the
/// CSRF token.
pub async fn loopback_only(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.auth.needs_login() && !loopback_host(req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "this dashboard answers only to a loopback Host (127.0.0.1, localhost, [::1])",
        )
        .field("Host")
        .into_response();
    }
    next.run(req).await
}

/// The middleware in front of the API's protected routes: finds the caller
/// (401 when there is none), and checks CSRF on state-changing requests.
pub async fn require(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let Some(caller) = state.auth.caller(headers) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign in first: POST /api/v1/session with the server's token, or send Authorization: Bearer TOKEN",
        )
        .field("Authorization")
        .into_response();
    };
    let changes = req.method() == Method::POST || req.method() == Method::DELETE;
    if changes && let Some(expected) = caller.csrf() {
        if cross_site(headers) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-site requests may not change anything",
            )
            .field("Origin")
            .into_response();
        }
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (send the csrf_token of GET /api/v1/session as X-CSRF-Token)",
            )
            .field("X-CSRF-Token")
            .into_response();
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The operator a request acts as, for policy and audit: who, and from where.
pub fn operator(caller: &Caller, peer: SocketAddr) -> String {
    let from = peer.ip().to_string();
    match caller {
        Caller::Open { .. } => {
            let who = crate::audit::operator();
            let name = who.strip_prefix("operator:").unwrap_or(&who);
            format!("{name}@dashboard")
        }
        Caller::Session { .. } => format!("token-session@{from}"),
        Caller::Bearer => format!("token-bearer@{from}"),
    }
}

/// Who the page is signed in as, and the CSRF token its changes must carry.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// Whether this browser (or client) may use the API now.
    pub signed_in: bool,
    /// `loopback` (no sign-in needed) or `token`.
    pub mode: String,
    /// Who actions are recorded as.
    pub operator: Option<String>,
    /// Send as `X-CSRF-Token` with every POST and DELETE.
    pub csrf_token: Option<String>,
    pub version: String,
}

fn info(state: &AppState, caller: Option<&Caller>, peer: SocketAddr) -> SessionInfo {
    SessionInfo {
        signed_in: caller.is_some(),
        mode: if state.auth.needs_login() {
            "token"
        } else {
            "loopback"
        }
        .to_string(),
        operator: caller.map(|c| operator(c, peer)),
        csrf_token: caller.and_then(|c| c.csrf().map(String::from)),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Whether this browser is signed in, and its CSRF token.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = SessionInfo)))]
pub async fn session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> axum::Json<SessionInfo> {
    let caller = state.auth.caller(&headers);
    axum::Json(info(&state, caller.as_ref(), peer))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The server's token (the contents of its --token-file).
    pub token: String,
}

/// Sign in with the server's token: sets the session cookie.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SignIn,
    responses((status = 200, body = SessionInfo), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 415, body = ApiError), (status = 422, body = ApiError)))]
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    super::error::JsonBody(body): super::error::JsonBody<SignIn>,
) -> Response {
    if cross_site(&headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-site sign-in refused")
            .field("Origin")
            .into_response();
    }
    if !state.auth.needs_login() {
        let caller = state.auth.caller(&headers);
        return axum::Json(info(&state, caller.as_ref(), peer)).into_response();
    }
    let Some((id, csrf)) = state.auth.sign_in(&body.token) else {
        // Slow down guessing; the token is long enough that this is courtesy.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(log) = &state.audit {
            crate::audit::record(
                log,
                crate::audit::Event::new(
                    format!("dashboard@{}", peer.ip()),
                    "dashboard.sign_in",
                    "dashboard",
                    "refused",
                ),
            )
            .await;
        }
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong token")
            .field("token")
            .into_response();
    };
    let caller = Caller::Session { csrf };
    if let Some(log) = &state.audit {
        crate::audit::record(
            log,
            crate::audit::Event::new(
                operator(&caller, peer),
                "dashboard.sign_in",
                "dashboard",
                "ok",
            ),
        )
        .await;
    }
    (
        [(
            header::SET_COOKIE,
            session_cookie_header(Some(&id), state.auth.secure_cookies()),
        )],
        axum::Json(info(&state, Some(&caller), peer)),
    )
        .into_response()
}

/// Sign out: ends the session and clears its cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204, description = "Signed out"), (status = 403, body = ApiError)))]
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-site sign-out refused")
            .field("Origin")
            .into_response();
    }
    state.auth.sign_out(&headers);
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            session_cookie_header(None, state.auth.secure_cookies()),
        )],
    )
        .into_response()
}
