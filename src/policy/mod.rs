//! The policy engine: every privileged action in nova asks it first.
//!
//! One interface, two evaluators that give the same decisions on the same
//! policies: Rego evaluated in process ([`embedded`], the default) or a
//! remote OPA over REST ([`opa`], when `--opa-url`/`NOVA_OPA_URL`/nova.yaml's
//! `opa_url` is set). Deny by default: no policy, an undefined decision, an
//! error or an unreachable OPA all deny, with a reason. Decisions are cached
//! for a short time by their canonical input, or for the embedded evaluator
//! by the parts of it that its policies read ([`reads`]); hits and misses
//! are KPIs.

pub mod command;
pub mod embedded;
pub mod opa;
pub mod open;
pub mod reads;

pub use open::open;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{AuditLog, Event};
use crate::error::{Error, Result};

pub const CACHE_CAPACITY: u64 = 10_000;
pub const CACHE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
    /// `embedded` or `opa`.
    pub evaluator: &'static str,
    /// Answered from the decision cache.
    pub cached: bool,
}

impl Decision {
    pub fn allow(evaluator: &'static str, reasons: Vec<String>) -> Decision {
        Decision {
            allow: true,
            reasons,
            evaluator,
            cached: false,
        }
    }

    pub fn deny(evaluator: &'static str, reasons: Vec<String>) -> Decision {
        Decision {
            allow: false,
            reasons,
            evaluator,
            cached: false,
        }
    }
}

#[derive(Clone)]
pub enum Evaluator {
    Embedded(Arc<embedded::Embedded>),
    Opa(opa::Opa),
}

/// An evaluator with its decision cache.
#[derive(Clone)]
pub struct Policy {
    evaluator: Evaluator,
    cache: moka::sync::Cache<String, Decision>,
}

/// The policy input of DESIGN.md.
pub fn input(agent: &str, role: &str, action: &str, resource: &str, context: Value) -> Value {
    json!({
        "subject": {"agent": agent, "role": role},
        "action": action,
        "resource": resource,
        "context": context,
    })
}

impl Policy {
    pub fn new(evaluator: Evaluator) -> Policy {
        Policy {
            evaluator,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// Decide on `input`, from the cache when the same input was decided
    /// lately. Denials caused by a fault (OPA down) are not cached.
    pub async fn decide(&self, input: &Value) -> Decision {
        let _timer = crate::timer!("policy.decide");
        // The embedded policies' decision depends only on what they read of
        // the input; OPA's policies are not known here.
        let key = match &self.evaluator {
            Evaluator::Embedded(e) => e.reads().key(input),
            Evaluator::Opa(_) => crate::audit::record::canonical_json(input),
        };
        if let Some(mut hit) = self.cache.get(&key) {
            crate::counter!("policy.cache.hits").inc();
            hit.cached = true;
            return hit;
        }
        crate::counter!("policy.cache.misses").inc();
        let (decision, cacheable) = match &self.evaluator {
            Evaluator::Embedded(e) => (e.decide(input), true),
            Evaluator::Opa(o) => {
                let d = o.decide(input).await;
                // A policy's own denial lists its reasons; a fault denies with one
                // reason of the client's making. Only the policy's answers are kept.
                let fault = !d.allow && d.reasons.len() == 1 && is_fault(&d.reasons[0]);
                (d, !fault)
            }
        };
        if decision.allow {
            crate::counter!("policy.allowed").inc();
        } else {
            crate::counter!("policy.denied").inc();
        }
        if cacheable {
            self.cache.insert(key, decision.clone());
        }
        decision
    }

    /// Decide, record the decision in `audit`, and turn a denial into
    /// [`Error::Denied`] (exit 3) naming the action and the reasons.
    pub async fn authorize(&self, audit: Option<&AuditLog>, input: &Value) -> Result<Decision> {
        let decision = self.decide_recorded(audit, input).await?;
        if decision.allow {
            tracing::debug!(action = %input["action"], "allowed by policy");
            return Ok(decision);
        }
        tracing::warn!(action = %input["action"], reasons = ?decision.reasons, "denied by policy");
        Err(Error::Denied(format!(
            "{}denied by policy: {}",
            what_of(input),
            if decision.reasons.is_empty() {
                "no rule allows it".to_string()
            } else {
                decision.reasons.join("; ")
            }
        )))
    }

    /// Decide and record the decision in `audit`, allowed or denied; an
    /// error only when the decision could not be recorded (a governance
    /// tool fails closed: what cannot be audited is not done).
    pub async fn decide_recorded(
        &self,
        audit: Option<&AuditLog>,
        input: &Value,
    ) -> Result<Decision> {
        let decision = self.decide(input).await;
        if let Some(log) = audit
            && let Err(e) = log.append(decision_event(input, &decision)).await
        {
            return Err(Error::Failed(format!(
                "{}was not done: its policy decision could not be recorded in the audit log ({e})",
                what_of(input)
            )));
        }
        Ok(decision)
    }
}

/// "install tree ", "serve ": what messages about a decision begin with.
fn what_of(input: &Value) -> String {
    format!(
        "{} {}",
        input["action"].as_str().unwrap_or("?"),
        input["resource"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!("{r} "))
            .unwrap_or_default(),
    )
}

fn is_fault(reason: &str) -> bool {
    reason.starts_with("OPA ")
        || reason.starts_with("cannot reach OPA")
        || reason.starts_with("OPA's answer")
}

/// The audit record of a decision.
pub fn decision_event(input: &Value, decision: &Decision) -> Event {
    let subject = &input["subject"];
    let actor = format!(
        "{}:{}",
        subject["role"].as_str().unwrap_or("?"),
        subject["agent"].as_str().unwrap_or("?")
    );
    let target = format!(
        "{} {}",
        input["action"].as_str().unwrap_or("?"),
        input["resource"].as_str().unwrap_or("")
    );
    Event::new(
        actor,
        "policy.decision",
        target.trim_end(),
        if decision.allow { "allowed" } else { "denied" },
    )
    .details(json!({
        "input": recorded_input(input),
        "reasons": decision.reasons,
        "evaluator": decision.evaluator,
        "cached": decision.cached,
    }))
}

/// Inputs up to this size (as JSON) are recorded whole.
pub const RECORDED_INPUT: usize = 4 * 1024;

/// What the audit log keeps of a policy input: the input itself when it is
/// small (every input nova makes is), else its digest: the fields a decision
/// turns on, cut short, with the size and SHA-256 of the whole. The audit
/// log is never pruned, so it must not grow by what a caller sends it.
pub fn recorded_input(input: &Value) -> Value {
    let whole = input.to_string();
    if whole.len() <= RECORDED_INPUT {
        return input.clone();
    }
    let short = |v: &Value| -> Value {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.len() <= 256 {
            v.clone()
        } else {
            let mut cut = 256;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            Value::String(format!("{}...", &text[..cut]))
        }
    };
    let context_keys: Vec<&str> = input["context"]
        .as_object()
        .map(|c| c.keys().map(String::as_str).take(32).collect())
        .unwrap_or_default();
    json!({
        "digest": {
            "bytes": whole.len(),
            "sha256": crate::digest::sha256_hex(whole.as_bytes()),
        },
        "subject": {"agent": short(&input["subject"]["agent"]), "role": short(&input["subject"]["role"])},
        "action": short(&input["action"]),
        "resource": short(&input["resource"]),
        "context_keys": context_keys,
    })
}
