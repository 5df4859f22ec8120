//! The workspace's policy engine, opened the same way for every command and
//! front-end: OPA when a URL is set (flag, `NOVA_OPA_URL`, nova.yaml), else
//! the embedded policies with the workspace's `policies/` over the built-in ones.

use std::sync::Arc;

use super::embedded::{self, Embedded, PolicyFile};
use super::opa::Opa;
use super::{Evaluator, Policy};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

pub fn policy_files(ws: &Workspace) -> Result<Vec<PolicyFile>> {
    embedded::policy_files(&ws.policy_dir()).map_err(|e| match e {
        embedded::LoadError::Io { path, source } => Error::io(path, source),
        other => Error::usage(other.to_string()),
    })
}

pub fn compile(files: &[PolicyFile]) -> Result<Embedded> {
    Embedded::new(files).map_err(|e| Error::usage(format!("policy {e}")))
}

pub fn opa_client(ws: &Workspace, url: &str, source: &str) -> Result<Opa> {
    let token = match &ws.opa.token_file {
        Some(path) => {
            let text = crate::files::read_text(path, crate::files::limits::TOKEN)?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        }
        None => None,
    };
    Opa::new(url, token, ws.opa.timeout).map_err(|e| Error::usage(format!("{source}: {e}")))
}

/// The OPA URL in force, and where it came from (for messages).
pub fn opa_url(ws: &Workspace) -> Option<(String, &'static str)> {
    match (&ws.opa.url, &ws.config.opa_url) {
        (Some(url), _) => {
            let from_env = std::env::var("NOVA_OPA_URL").is_ok_and(|v| v == *url)
                && !std::env::args().any(|a| a == "--opa-url" || a.starts_with("--opa-url="));
            Some((
                url.clone(),
                if from_env {
                    "NOVA_OPA_URL"
                } else {
                    "--opa-url"
                },
            ))
        }
        (None, Some(url)) => Some((url.clone(), "nova.yaml opa_url")),
        (None, None) => None,
    }
}

/// The workspace's policy engine: OPA when a URL is set, otherwise the
/// embedded policies (built-in, with the workspace's `policies/` over them).
pub fn open(ws: &Workspace) -> Result<Policy> {
    match opa_url(ws) {
        Some((url, source)) => Ok(Policy::new(Evaluator::Opa(opa_client(ws, &url, source)?))),
        None => Ok(Policy::new(Evaluator::Embedded(Arc::new(compile(
            &policy_files(ws)?,
        )?)))),
    }
}
