//! The OPA evaluator: a remote Open Policy Agent over its REST Data API.
//!
//! `POST {url}/v1/data/nova/authz` with `{"input": ...}`; the answer's
//! `result.allow` decides and `result.reasons` explains. An absent `result`
//! (the document is undefined), a timeout, a refused connection, a non-2xx
//! status and a malformed body each deny, with a reason that says which.

use std::time::Duration;

use serde_json::{Value, json};

use super::Decision;
use super::embedded::PolicyFile;

pub const DEFAULT_TIMEOUT: Duration = crate::workspace::OPA_TIMEOUT;

#[derive(Clone)]
pub struct Opa {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

/// OPA's error body: `{"code": "...", "message": "..."}`.
fn error_text(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => match (v["code"].as_str(), v["message"].as_str()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (None, Some(message)) => message.to_string(),
            _ => body.chars().take(200).collect(),
        },
        Err(_) => body.chars().take(200).collect(),
    }
}

impl Opa {
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Opa, String> {
        let shown = crate::store_url::without_password(url);
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad OPA URL {shown:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "bad OPA URL {shown:?}: expected http:// or https://"
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Opa {
            client,
            base: url.trim_end_matches('/').to_string(),
            token,
            timeout,
        })
    }

    /// The server's URL as messages show it (without a password).
    pub fn url(&self) -> String {
        crate::store_url::without_password(&self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn transport_reason(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!(
                "OPA at {} did not answer within {} ms",
                self.url(),
                self.timeout.as_millis()
            )
        } else if e.is_connect() {
            format!("cannot reach OPA at {}: connection failed", self.url())
        } else {
            format!("OPA at {} failed: {e}", self.url())
        }
    }

    pub async fn decide(&self, input: &Value) -> Decision {
        let deny = |reason: String| Decision::deny("opa", vec![reason]);
        let response = match self
            .request(reqwest::Method::POST, "/v1/data/nova/authz")
            .json(&json!({ "input": input }))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return deny(self.transport_reason(&e)),
        };
        let status = response.status();
        let body = match response.text().await {
            Ok(b) => b,
            Err(e) => return deny(self.transport_reason(&e)),
        };
        if !status.is_success() {
            return deny(format!("OPA answered {status}: {}", error_text(&body)));
        }
        let body: Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => return deny(format!("OPA's answer is not valid JSON: {e}")),
        };
        let Some(result) = body.get("result") else {
            return deny(
                "the policy decision is undefined: OPA has no data.nova.authz (load the policies with nova policy push)"
                    .to_string(),
            );
        };
        let reasons = result["reasons"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), String::from))
                    .collect()
            })
            .unwrap_or_default();
        match result.get("allow") {
            Some(Value::Bool(true)) => Decision::allow("opa", reasons),
            Some(Value::Bool(false)) => Decision::deny("opa", reasons),
            None => deny("the policy decision is undefined: result has no allow".to_string()),
            Some(other) => deny(format!("result.allow is not a boolean: {other}")),
        }
    }

    /// Upload one policy: `PUT /v1/policies/{id}` with the Rego text.
    pub async fn push(&self, file: &PolicyFile) -> Result<(), String> {
        let response = self
            .request(reqwest::Method::PUT, &format!("/v1/policies/{}", file.id()))
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(file.text.clone())
            .send()
            .await
            .map_err(|e| self.transport_reason(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(format!(
            "OPA refused {} ({}): {status}: {}",
            file.id(),
            file.origin(),
            error_text(&body)
        ))
    }
}
