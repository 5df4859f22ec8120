//! `nova serve`: the queue's gRPC server on a store, with, on request, the
//! dashboard and JSON API (`--http`) and the Prometheus page (`--metrics`)
//! beside it. A leaf above the queue, the HTTP layer and the KPIs: nothing
//! imports it.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::audit::{Event, operator};
use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::files::read_token;
use crate::output::Output;
use crate::queue::any::AnyQueue;
use crate::queue::backend::QueueBackend;
use crate::queue::open::open_queue;
use crate::queue::server;
use crate::store_url::StoreUrl;
use crate::workspace::{Workspace, ensure_dir};

/// The login name of the person running nova, as the policy subject's agent.
fn operator_name() -> String {
    operator()
        .strip_prefix("operator:")
        .unwrap_or("unknown")
        .to_string()
}

pub fn run(ws: &Workspace, out: &Output, args: &ServeArgs) -> Result<()> {
    let token = read_token(args.token_file.as_deref())?;
    let tls = crate::tls::ServerTls::load(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_client_ca.as_deref(),
    )?;
    let public = !args.listen.ip().is_loopback();
    let mutual = tls.as_ref().is_some_and(|t| t.mutual());
    if public && token.is_none() && !mutual && !args.insecure {
        return Err(Error::usage(format!(
            "--listen {}: a non-loopback address needs --token-file FILE or --tls-client-ca FILE (or --insecure to serve without either)",
            args.listen
        )));
    }
    if public && tls.is_none() && !args.insecure {
        return Err(Error::usage(format!(
            "--listen {}: a non-loopback address needs TLS (--tls-cert FILE --tls-key FILE), or --insecure to send tokens and tasks in clear",
            args.listen
        )));
    }
    if public && tls.is_none() {
        eprintln!(
            "nova serve: --insecure: on {} bearer tokens and tasks cross the network in clear (no TLS)",
            args.listen
        );
    }
    if let Some(http) = args.http {
        crate::http::check_listen("--http", http, token.is_some())?;
        if !http.ip().is_loopback() && tls.is_none() && !args.insecure {
            return Err(Error::usage(format!(
                "--http {http}: a dashboard off loopback needs TLS (--tls-cert FILE --tls-key FILE), or --insecure to send its token and session cookie in clear"
            )));
        }
    }
    let store = StoreUrl::resolve(ws, &args.store.choice())?;
    let policy = crate::policy::open(ws)?;
    // Checked before listening: a schedule with nowhere to go is a usage error.
    let backups = match args.backup_every {
        Some(every) if every.is_zero() => {
            return Err(Error::usage("--backup-every 0s: give a period such as 6h"));
        }
        Some(every) => Some((
            crate::backup::repo::Repo::open(
                ws,
                args.backup_to.as_deref(),
                "--backup-to",
                None,
                true,
            )?,
            every,
        )),
        None => None,
    };
    let rt = crate::runtime::server_runtime(args.threads)?;
    rt.block_on(async {
        let input = crate::policy::input(
            &operator_name(),
            "operator",
            "serve",
            &args.listen.to_string(),
            json!({
                "loopback": args.listen.ip().is_loopback(),
                "auth": token.is_some() || mutual,
                "tls": tls.is_some(),
                "mutual_tls": mutual,
                "insecure": args.insecure,
            }),
        );
        let decision_log = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
        policy.authorize(decision_log.as_ref(), &input).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Error::Failed(format!("cannot listen on {}: {e}", args.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Failed(e.to_string()))?;
        let metrics =
            match args.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    Error::Failed(format!("--metrics: cannot listen on {addr}: {e}"))
                })?),
                None => None,
            };
        let metrics_url = match &metrics {
            Some(l) => Some(format!(
                "http://{}/metrics",
                l.local_addr().map_err(|e| Error::Failed(e.to_string()))?
            )),
            None => None,
        };
        let http = match args.http {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| Error::Failed(format!("--http: cannot listen on {at}: {e}")))?,
            ),
            None => None,
        };
        let dashboard_url = match &http {
            Some(l) => Some(format!(
                "{}://{}/",
                if tls.is_some() { "https" } else { "http" },
                l.local_addr().map_err(|e| Error::Failed(e.to_string()))?
            )),
            None => None,
        };
        let (backend, label) = open_queue(&store).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        announce(
            out,
            &format!("{scheme}://{addr}"),
            &label,
            token.is_some(),
            metrics_url.as_deref(),
            dashboard_url.as_deref(),
        )?;

        let (stopped, stop) = tokio::sync::watch::channel(false);
        let metrics_server = metrics.map(|listener| {
            let mut stop = stop.clone();
            tokio::spawn(crate::kpi::prometheus::serve(
                listener,
                crate::queue::metrics::page(backend.clone()),
                async move {
                    let _ = stop.changed().await;
                },
            ))
        });
        let dashboard = match http {
            Some(listener) => {
                let state = crate::http::Dashboard::open(
                    ws,
                    &args.store.choice(),
                    backend.clone(),
                    label.clone(),
                    token.clone(),
                )
                .await?;
                let mut stop = stop.clone();
                let stopped = async move {
                    let _ = stop.changed().await;
                };
                Some(match &tls {
                    Some(tls) => {
                        state.auth.set_secure_cookies();
                        let listener = crate::http::tls_listener::TlsListener::new(
                            listener,
                            tls.rustls_config()?,
                        )
                        .map_err(|e| Error::Failed(format!("--http: {e}")))?;
                        tokio::spawn(crate::http::serve(listener, state, stopped))
                    }
                    None => tokio::spawn(crate::http::serve(listener, state, stopped)),
                })
            }
            None => None,
        };
        let db = ws.db_path();
        let saver = tokio::spawn(save_kpis_every(db.clone()));
        let purger = args
            .keep_finished
            .map(|keep| tokio::spawn(purge_every(backend.clone(), keep)));
        let backup_every = args
            .backup_every
            .map(|d| humantime::format_duration(d).to_string());
        let backuper = backups.map(|(repo, every)| {
            tokio::spawn(backup_on_schedule(
                ws.clone(),
                args.store.choice(),
                repo,
                every,
            ))
        });
        let audit = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
        let details = json!({
            "listen": addr.to_string(),
            "store": label,
            "auth": token.is_some(),
            "metrics": metrics_url,
            "dashboard": dashboard_url,
            "backup_every": backup_every,
        });
        if let Some(log) = &audit {
            crate::audit::record(
                log,
                Event::new(
                    operator(),
                    "serve.start",
                    format!("{scheme}://{addr}"),
                    "ok",
                )
                .details(details.clone()),
            )
            .await;
        }

        let served = server::serve_audited(
            backend,
            listener,
            token,
            tls.as_ref().map(|t| t.config()),
            audit.clone(),
            server::signal(),
        )
        .await;
        if let Some(log) = &audit {
            let outcome = if served.is_ok() { "ok" } else { "failed" };
            crate::audit::record(
                log,
                Event::new(
                    operator(),
                    "serve.stop",
                    format!("{scheme}://{addr}"),
                    outcome,
                )
                .details(details),
            )
            .await;
        }
        let _ = stopped.send(true);
        // As the queue's listener: connections get a while to close, not
        // forever (a browser on a host that vanished never closes its own).
        let drain = tokio::time::sleep(std::time::Duration::from_secs(10));
        tokio::pin!(drain);
        for listener in [metrics_server, dashboard].into_iter().flatten() {
            tokio::select! {
                _ = listener => {}
                () = &mut drain => break,
            }
        }
        saver.abort();
        if let Some(p) = purger {
            p.abort();
        }
        // A backup cut short here is not listed: its manifest is written last.
        if let Some(b) = backuper {
            b.abort();
        }
        let _ = tokio::task::spawn_blocking(move || save_kpis(&db)).await;
        served.map_err(|e| Error::Failed(format!("server error: {e}")))?;
        tracing::info!("server stopped");
        Ok(())
    })
}

/// How often `nova serve` writes its KPI snapshot to the workspace database.
const KPI_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn save_kpis(db: &Path) {
    let saved = db
        .parent()
        .map_or(Ok(()), ensure_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::store::Store::open(db).map_err(|e| e.to_string()))
        .and_then(|store| {
            crate::kpi::store::save(store.connection(), "serve", &crate::kpi::snapshot())
                .map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save the KPI snapshot");
    }
}

/// Back up every `every` (the first one `every` after the start), applying
/// nova.yaml's `backup.keep` after each; a failure is logged (and audited
/// and counted by `take`) and the schedule goes on.
async fn backup_on_schedule(
    ws: Workspace,
    store: crate::store_url::StoreChoice,
    repo: crate::backup::repo::Repo,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match crate::backup::ops::take(&ws, &store, &repo, false).await {
            Ok((done, _)) => {
                tracing::info!(id = %done.manifest.id, target = %repo.label(), bytes = done.uploaded_bytes, "scheduled backup taken");
                if let Some(keep) = ws.config.backup.keep
                    && let Err(e) = crate::backup::ops::prune(&ws, &store, &repo, keep).await
                {
                    tracing::warn!(error = %e, "scheduled backup: pruning failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, target = %repo.label(), "scheduled backup failed"),
        }
    }
}

async fn save_kpis_every(db: PathBuf) {
    let mut tick = tokio::time::interval(KPI_SNAPSHOT_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let db = db.clone();
        let _ = tokio::task::spawn_blocking(move || save_kpis(&db)).await;
    }
}

fn announce(
    out: &Output,
    url: &str,
    store: &str,
    auth: bool,
    metrics: Option<&str>,
    dashboard: Option<&str>,
) -> Result<()> {
    if out.json {
        return out.json_line(&json!({
            "listening": url,
            "store": store,
            "auth": auth,
            "metrics": metrics,
            "dashboard": dashboard,
        }));
    }
    out.text(&format!(
        "nova queue server listening on {url} (store {store}{}){}{}\n",
        if auth { ", bearer token required" } else { "" },
        metrics
            .map(|m| format!("; metrics at {m}"))
            .unwrap_or_default(),
        dashboard
            .map(|d| format!("; dashboard at {d}"))
            .unwrap_or_default()
    ))
}

/// Every minute, delete the tasks that finished longer ago than `keep`.
async fn purge_every(backend: AnyQueue, keep: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        match backend.purge(crate::clock::ms_ago(keep), None).await {
            Ok(0) => {}
            Ok(n) => {
                crate::counter!("queue.purged").add(n);
                tracing::info!(deleted = n, "purged finished tasks");
            }
            Err(e) => tracing::warn!(error = %e, "could not purge finished tasks"),
        }
    }
}
