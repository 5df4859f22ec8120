//! `nova dashboard`: the dashboard alone, on this workspace's store, in one
//! command. A leaf: nothing imports it.

use crate::cli::DashboardArgs;
use crate::error::{Error, Result};
use crate::files::read_token;
use crate::output::Output;
use crate::queue::open::open_queue;
use crate::store_url::StoreUrl;
use crate::workspace::Workspace;

pub fn run(ws: &Workspace, out: &Output, args: &DashboardArgs) -> Result<()> {
    let token = read_token(args.token_file.as_deref())?;
    super::check_listen("--listen", args.listen, token.is_some())?;
    let store = StoreUrl::resolve(ws, &args.store.choice())?;
    ws.ensure_home()?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Error::Failed(format!("--listen {}: cannot listen: {e}", args.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Failed(e.to_string()))?;
        let (queue, label) = open_queue(&store).await?;
        let state = super::Dashboard::open(
            ws,
            &args.store.choice(),
            queue,
            label.clone(),
            token.clone(),
        )
        .await?;
        let url = format!("http://{addr}/");
        if out.json {
            out.json_line(
                &serde_json::json!({"url": url, "store": label, "sign_in": token.is_some()}),
            )?;
        } else {
            out.text(&format!(
                "nova dashboard at {url} on {label}{}\n(Ctrl-C stops it)\n",
                if token.is_some() {
                    " (sign in with the token)"
                } else {
                    ""
                }
            ))?;
        }
        if args.open {
            open_browser(&url);
        }
        super::serve(listener, state, crate::runtime::signal())
            .await
            .map_err(|e| Error::Failed(format!("dashboard server error: {e}")))
    })
}

/// Hand the URL to the desktop's browser, if there is one; say so if not.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        eprintln!("--open: cannot start {opener} ({e}); open {url} yourself");
    }
}
