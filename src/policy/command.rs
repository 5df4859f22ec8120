//! `nova policy eval|test|list|push`, and [`open`], which gives every command
//! the policy engine the workspace and flags call for.

use std::io::Read;

use serde_json::{Value, json};

use super::embedded::PolicyFile;
use super::open::{compile, opa_client, opa_url, open, policy_files};
use crate::audit::Event;
use crate::audit::{operator, workspace_log};
use crate::cli::{PolicyAction, PolicyArgs};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::Workspace;

fn read_input(path: &std::path::Path) -> Result<Value> {
    let (text, name) = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::io("stdin", e))?;
        (text, "stdin".to_string())
    } else {
        (
            crate::files::read_text(path, crate::files::limits::POLICY_INPUT)?,
            path.display().to_string(),
        )
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        Error::usage(format!(
            "--input {name}: not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })?;
    if !value.is_object() {
        return Err(Error::usage(format!(
            "--input {name}: the policy input must be a JSON object (subject, action, resource, context)"
        )));
    }
    Ok(value)
}

pub fn run(ws: &Workspace, out: &Output, args: &PolicyArgs) -> Result<()> {
    match &args.action {
        PolicyAction::Eval { input } => {
            let input = read_input(input)?;
            let policy = open(ws)?;
            crate::runtime::runtime()?.block_on(async {
                let audit = workspace_log(ws, &args.store.choice(), true).await?;
                let decision = policy.decide(&input).await;
                if let Some(log) = &audit
                    && let Err(e) = log.append(super::decision_event(&input, &decision)).await
                {
                    // Evaluating changes nothing, so it is answered; but it says so.
                    eprintln!("note: this decision was not recorded in the audit log ({e})");
                }
                if out.json {
                    out.json(&decision)?;
                } else {
                    let verdict = if decision.allow { "allowed" } else { "denied" };
                    let mut text = format!("{verdict} ({})\n", decision.evaluator);
                    for r in &decision.reasons {
                        text.push_str(&format!("  - {r}\n"));
                    }
                    out.text(&text)?;
                }
                if decision.allow {
                    Ok(())
                } else {
                    Err(Error::Denied(if decision.reasons.is_empty() {
                        "denied by policy".to_string()
                    } else {
                        format!("denied by policy: {}", decision.reasons.join("; "))
                    }))
                }
            })
        }
        PolicyAction::Test => test(ws, out),
        PolicyAction::List => {
            let files = policy_files(ws)?;
            if out.json {
                let list: Vec<_> = files
                    .iter()
                    .map(|f| json!({"name": f.name, "id": f.id(), "origin": f.origin()}))
                    .collect();
                return out.json(&list);
            }
            let mut table = out.table(&["policy", "opa id", "from"]);
            for f in &files {
                table.add_row(vec![f.name.clone(), f.id(), f.origin()]);
            }
            out.print_table(&table)
        }
        PolicyAction::Push => {
            let Some((url, source)) = opa_url(ws) else {
                return Err(Error::usage(
                    "nova policy push needs an OPA server: --opa-url URL, NOVA_OPA_URL or opa_url in nova.yaml",
                ));
            };
            let files = policy_files(ws)?;
            compile(&files)?; // never upload what does not compile here
            let opa = opa_client(ws, &url, source)?;
            let url = opa.url();
            crate::runtime::runtime()?.block_on(async {
                let audit = workspace_log(ws, &args.store.choice(), true).await?;
                for f in &files {
                    let pushed = opa.push(f).await;
                    if let Some(log) = &audit {
                        crate::audit::record(
                            log,
                            Event::new(
                                operator(),
                                "policy.push",
                                format!("{url} {}", f.id()),
                                if pushed.is_ok() { "ok" } else { "failed" },
                            )
                            .details(json!({"origin": f.origin(), "error": pushed.as_ref().err()})),
                        )
                        .await;
                    }
                    pushed.map_err(Error::Failed)?;
                    out.text(&format!("pushed {} ({}) to {url}\n", f.id(), f.origin()))?;
                }
                Ok(())
            })
        }
    }
}

/// Each `package` and its `test_` rules, read from the policy text.
fn tests_in(file: &PolicyFile) -> Option<(String, Vec<String>)> {
    let package = regex::Regex::new(r"(?m)^package\s+([A-Za-z0-9_.]+)")
        .expect("valid regex")
        .captures(&file.text)?[1]
        .to_string();
    let mut tests: Vec<String> = regex::Regex::new(r"(?m)^(test_[A-Za-z0-9_]*)\b")
        .expect("valid regex")
        .captures_iter(&file.text)
        .map(|c| c[1].to_string())
        .collect();
    tests.dedup();
    (!tests.is_empty()).then_some((package, tests))
}

fn test(ws: &Workspace, out: &Output) -> Result<()> {
    let files = policy_files(ws)?;
    let policies = compile(&files)?;
    let mut results = Vec::new();
    for f in &files {
        let Some((package, tests)) = tests_in(f) else {
            continue;
        };
        for t in tests {
            let mut engine = policies.engine();
            let outcome = engine.eval_rule(format!("data.{package}.{t}"));
            let (passed, detail) = match outcome {
                Ok(regorus::Value::Bool(true)) => (true, String::new()),
                Ok(regorus::Value::Undefined) | Ok(regorus::Value::Bool(false)) => {
                    (false, "not true".to_string())
                }
                Ok(other) => (false, format!("evaluated to {other:?}")),
                Err(e) => (false, format!("error: {e}")),
            };
            results.push(json!({
                "file": f.origin(),
                "test": format!("data.{package}.{t}"),
                "passed": passed,
                "detail": detail,
            }));
        }
    }
    let failed = results.iter().filter(|r| r["passed"] == false).count();
    if out.json {
        out.json(&results)?;
    } else {
        let mut text = String::new();
        for r in &results {
            let mark = if r["passed"] == true { "PASS" } else { "FAIL" };
            text.push_str(&format!("{mark} {}", r["test"].as_str().unwrap_or("")));
            if let Some(d) = r["detail"].as_str().filter(|d| !d.is_empty()) {
                text.push_str(&format!(" ({d})"));
            }
            text.push('\n');
        }
        text.push_str(&format!(
            "{} tests, {} passed, {failed} failed\n",
            results.len(),
            results.len() - failed
        ));
        out.text(&text)?;
    }
    if failed > 0 {
        return Err(Error::Failed(format!("{failed} policy tests failed")));
    }
    if results.is_empty() {
        return Err(Error::Failed(
            "no policy tests found (rules named test_*)".into(),
        ));
    }
    Ok(())
}
