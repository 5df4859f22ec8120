//! The dashboard and the JSON API: nova watched and steered from a browser.
//!
//! One axum router serves the pages (a single page, its script and style,
//! compiled into the binary: no CDN, no build step), the JSON API under
//! `/api/v1` (described by `/api/v1/openapi.json`), its live event stream,
//! and the Prometheus `/metrics`. It runs beside the gRPC queue in
//! `nova serve --http ADDR`, or alone in `nova dashboard`. The routes call
//! the same library functions as the CLI; who may call them is `auth`'s job,
//! and every control action is policy-checked and audited (`control`).

pub mod api;
pub mod assets;
pub mod auth;
pub mod command;
pub mod control;
pub mod error;
pub mod live;
pub mod openapi;
pub mod tls_listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::routing::{get, post};

use crate::audit::AuditLog;
use crate::policy::Policy;
use crate::queue::any::AnyQueue;
use crate::store_url::StoreChoice;
use crate::workspace::Workspace;

/// What every route works on, opened once when the server starts.
pub struct Dashboard {
    pub ws: Workspace,
    /// Where new runs keep their state (the server's own store).
    pub store: StoreChoice,
    pub queue: AnyQueue,
    /// Where the queue lives, in words.
    pub queue_label: String,
    pub policy: Policy,
    pub audit: Option<AuditLog>,
    /// The audit chain's verification, kept up to date between requests.
    pub chain: crate::audit::watch::ChainWatch,
    pub auth: auth::Auth,
    pub live: live::Live,
    /// Each run's agent graph, once resolved.
    pub graphs: std::sync::Mutex<std::collections::HashMap<String, Vec<api::AgentNode>>>,
}

pub type AppState = Arc<Dashboard>;

impl Dashboard {
    /// The dashboard over `queue`, with the workspace's policy engine and
    /// audit log; `token` set means signing in is required.
    pub async fn open(
        ws: &Workspace,
        store: &StoreChoice,
        queue: AnyQueue,
        queue_label: String,
        token: Option<String>,
    ) -> crate::error::Result<AppState> {
        Ok(Arc::new(Dashboard {
            ws: ws.clone(),
            store: store.clone(),
            queue,
            queue_label,
            policy: crate::policy::open(ws)?,
            audit: crate::audit::workspace_log(ws, store, true).await?,
            chain: Default::default(),
            auth: auth::Auth::new(token),
            live: live::Live::default(),
            graphs: Default::default(),
        }))
    }
}

/// Why an HTTP address cannot be served as asked, if it cannot: off loopback
/// the dashboard needs a token (there is no --insecure for a web page).
pub fn check_listen(flag: &str, addr: SocketAddr, token: bool) -> crate::error::Result<()> {
    if !addr.ip().is_loopback() && !token {
        return Err(crate::error::Error::usage(format!(
            "{flag} {addr}: a dashboard off loopback needs --token-file FILE (browsers sign in with that token)"
        )));
    }
    Ok(())
}

/// The Content-Security-Policy of every answer: nothing inline, nothing from
/// elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every route.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/runs", get(api::list_runs).post(control::start_run))
        .route("/runs/{id}", get(api::get_run))
        .route("/runs/{id}/messages", get(api::run_messages))
        .route("/runs/{id}/log", get(api::task_log))
        .route("/runs/{id}/cancel", post(control::cancel_run))
        .route("/runs/{id}/resume", post(control::resume_run))
        .route("/plans", get(api::plans))
        .route("/queues", get(api::queues))
        .route("/workers", get(api::workers))
        .route("/queues/{queue}/tasks", get(api::queue_tasks))
        .route("/queues/{queue}/pause", post(control::pause_queue))
        .route("/queues/{queue}/resume", post(control::resume_queue))
        .route("/tasks/{id}", get(api::get_task))
        .route("/tasks/{id}/retry", post(control::retry_task))
        .route("/tasks/{id}/cancel", post(control::cancel_task))
        .route("/host", get(api::host))
        .route("/audit", get(api::audit))
        .route("/policy/decisions", get(api::decisions))
        .route("/controls", get(api::controls))
        .route("/events", get(live::events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));
    let metrics = {
        let page = crate::queue::metrics::page(state.queue.clone());
        move || {
            let page = page.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    page().await,
                )
            }
        }
    };
    let api = Router::new()
        .route(
            "/session",
            get(auth::session)
                .post(auth::sign_in)
                .delete(auth::sign_out),
        )
        .route("/openapi.json", get(openapi::document))
        .merge(protected)
        .fallback(|| async {
            error::ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API route (see /api/v1/openapi.json)",
            )
        });
    // Prometheus sends the bearer token (`authorization` in its scrape config).
    let metrics = Router::new().route("/metrics", get(metrics)).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), auth::require),
    );
    Router::new()
        .nest("/api/v1", api)
        .merge(metrics)
        .merge(assets::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::loopback_only,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Serve the dashboard on `listener` until `shutdown`, with the change
/// watcher running beside it.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let watcher = tokio::spawn(live::watch(state.clone()));
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Through tap_io, any listener whose addresses are socket addresses
    // (plain TCP, or TLS over it) gives handlers the peer's address.
    let served = axum::serve(listener.tap_io(|_| {}), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.live.close();
        })
        .await;
    watcher.abort();
    served
}
