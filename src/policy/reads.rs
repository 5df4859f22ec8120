//! Which parts of the policy input the loaded Rego can read, so that a
//! decision can be cached under those parts alone.
//!
//! Every task of a run asks the policy about an input that names the task
//! (`resource`) and its agent, so a cache keyed by the whole input never
//! hits, although the shipped policy decides a task's run from its role, its
//! action and a few context flags. This walks the syntax tree of every
//! module the decision can reach (from `data.nova.authz` and nova's own
//! decision rule, through `data.` references and imports) and collects each
//! reference into `input`: its static part (`input.context.as_root`), or
//! the whole input for a reference it cannot follow (`input[x]`, `input`
//! passed on whole). Two inputs that agree on every collected path get the
//! same decision from the same policies, so the cache key is those paths'
//! values.
//!
//! One refinement: a rule of one body whose first statement is
//! `input.action == "<action>"` cannot hold for any other action, so what
//! it reads is only collected for that action (the shipped install and serve
//! rules). That stops being true where some `with` replaces part of the
//! input, and is then not used.
//!
//! The walk matches every kind of expression regorus has by name, so a kind
//! added by a later regorus fails to build here instead of being skipped.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead};
use serde_json::Value;

/// A path into the input: `["context", "as_root"]`; empty for all of it.
type Path = Vec<String>;

/// What the reachable policies can read of the input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputReads {
    /// Read whatever the action.
    always: BTreeSet<Path>,
    /// Read only when `input.action` is the key.
    for_action: BTreeMap<String, BTreeSet<Path>>,
}

impl InputReads {
    /// The reads of the modules that a decision at `data.<entry>` for each
    /// entry can reach.
    pub fn of(modules: &[Ref<Module>], entries: &[&[&str]]) -> InputReads {
        let reachable = reachable_modules(modules, entries);
        let replaces_input = reachable
            .iter()
            .any(|m| module_rules(m).any(rule_replaces_input));
        let mut reads = InputReads::default();
        for module in &reachable {
            for import in &module.imports {
                let mut walk = Walk::default();
                walk.expr(&import.refr);
                reads.always.extend(walk.input);
            }
            for rule in module_rules(module) {
                let mut walk = Walk::default();
                walk.rule(rule);
                match action_guard(rule).filter(|_| !replaces_input) {
                    Some(action) => reads
                        .for_action
                        .entry(action)
                        .or_default()
                        .extend(walk.input),
                    None => reads.always.extend(walk.input),
                }
            }
        }
        reads
    }

    /// The paths that decide `input` (its action's and the others), the
    /// shortest of any two where one contains the other.
    fn paths_for(&self, input: &Value) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self.always.iter().collect();
        if let Some(Value::String(action)) = input.get("action")
            && let Some(more) = self.for_action.get(action)
        {
            paths.extend(more);
        }
        paths.sort();
        paths.dedup();
        let mut kept: Vec<&Path> = Vec::with_capacity(paths.len());
        for path in paths {
            // Sorted, so a path's prefixes come before it.
            if !kept.iter().any(|k| path.starts_with(k)) {
                kept.push(path);
            }
        }
        kept
    }

    /// The cache key of `input`: `input.action`, then each path read with its
    /// value, or without one where the input has nothing there (in Rego an
    /// undefined value is not `null`).
    pub fn key(&self, input: &Value) -> String {
        let mut entries = vec![input.get("action").cloned().unwrap_or(Value::Null)];
        for path in self.paths_for(input) {
            let value = path
                .iter()
                .try_fold(input, |v, field| v.as_object().and_then(|o| o.get(field)));
            let mut entry = vec![Value::from(path.clone())];
            entry.extend(value.cloned());
            entries.push(Value::Array(entry));
        }
        crate::audit::record::canonical_json(&Value::Array(entries))
    }

    /// The paths read for `action`, written `input.a.b`.
    #[cfg(test)]
    fn paths(&self, action: &str) -> Vec<String> {
        let input = serde_json::json!({ "action": action });
        self.paths_for(&input)
            .into_iter()
            .map(|p| {
                std::iter::once("input")
                    .chain(p.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect()
    }
}

fn module_rules(module: &Module) -> impl Iterator<Item = &Rule> {
    module.policy.iter().map(|r| &**r)
}

/// The static names of a reference chain rooted at the variable `root`
/// (`data.nova.authz` gives `["nova", "authz"]` for `data`), up to the first
/// part that is not a string; `None` when the chain has another root.
fn static_path(expr: &Expr, root: &str) -> Option<Path> {
    match expr {
        Expr::Var { value, .. } => (value.as_string().ok()?.as_ref() == root).then(Vec::new),
        Expr::RefDot { refr, field, .. } => {
            let mut path = static_path(refr, root)?;
            if path.len() == chain_len(refr) {
                path.push(field.1.as_string().ok()?.to_string());
            }
            Some(path)
        }
        Expr::RefBrack { refr, index, .. } => {
            let mut path = static_path(refr, root)?;
            if path.len() == chain_len(refr)
                && let Expr::String { value, .. } | Expr::RawString { value, .. } = &**index
            {
                path.push(value.as_string().ok()?.to_string());
            }
            Some(path)
        }
        _ => None,
    }
}

/// How many names follow the root in a chain of references.
fn chain_len(expr: &Expr) -> usize {
    match expr {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => chain_len(refr) + 1,
        _ => 0,
    }
}

/// The package of a module as a path under `data`.
fn package_path(module: &Module) -> Path {
    fn names(expr: &Expr, out: &mut Path) {
        match expr {
            Expr::Var { value, .. } | Expr::String { value, .. } => {
                if let Ok(s) = value.as_string() {
                    out.push(s.to_string());
                }
            }
            Expr::RefDot { refr, field, .. } => {
                names(refr, out);
                if let Ok(s) = field.1.as_string() {
                    out.push(s.to_string());
                }
            }
            Expr::RefBrack { refr, index, .. } => {
                names(refr, out);
                names(index, out);
            }
            _ => {}
        }
    }
    let mut path = Vec::new();
    names(&module.package.refr, &mut path);
    if path.first().is_some_and(|p| p == "data") {
        path.remove(0);
    }
    path
}

/// The modules a decision at the entries can evaluate: their packages',
/// and every module whose package a reached one refers to under `data`.
fn reachable_modules<'m>(modules: &'m [Ref<Module>], entries: &[&[&str]]) -> Vec<&'m Module> {
    let packages: Vec<Path> = modules.iter().map(|m| package_path(m)).collect();
    let overlaps = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let mut wanted: Vec<Path> = entries
        .iter()
        .map(|e| e.iter().map(|s| s.to_string()).collect())
        .collect();
    let mut reached = vec![false; modules.len()];
    loop {
        let mut grew = false;
        for (i, module) in modules.iter().enumerate() {
            if reached[i] || !wanted.iter().any(|w| overlaps(w, &packages[i])) {
                continue;
            }
            reached[i] = true;
            grew = true;
            let mut walk = Walk::default();
            for import in &module.imports {
                walk.expr(&import.refr);
            }
            for rule in module_rules(module) {
                walk.rule(rule);
            }
            wanted.extend(walk.data);
        }
        if !grew {
            break;
        }
    }
    modules
        .iter()
        .zip(reached)
        .filter(|(_, r)| *r)
        .map(|(m, _)| &**m)
        .collect()
}

/// `"<action>"` when the rule has one body that starts with
/// `input.action == "<action>"` (either way round).
fn action_guard(rule: &Rule) -> Option<String> {
    let Rule::Spec { bodies, .. } = rule else {
        return None;
    };
    let [body] = bodies.as_slice() else {
        return None;
    };
    let first = body.query.stmts.first()?;
    if !first.with_mods.is_empty() {
        return None;
    }
    let Literal::Expr { expr, .. } = &first.literal else {
        return None;
    };
    let Expr::BoolExpr {
        op: BoolOp::Eq,
        lhs,
        rhs,
        ..
    } = &**expr
    else {
        return None;
    };
    let action = |side: &Expr| static_path(side, "input").filter(|p| p == &["action"]);
    let literal = |side: &Expr| match side {
        Expr::String { value, .. } | Expr::RawString { value, .. } => {
            value.as_string().ok().map(|s| s.to_string())
        }
        _ => None,
    };
    match (action(lhs), action(rhs)) {
        (Some(_), None) => literal(rhs),
        (None, Some(_)) => literal(lhs),
        _ => None,
    }
}

/// Whether a `with` in the rule replaces the input or part of it.
fn rule_replaces_input(rule: &Rule) -> bool {
    let mut walk = Walk::default();
    walk.rule(rule);
    walk.replaces_input
}

/// One pass over rules and expressions, collecting references.
#[derive(Default)]
struct Walk {
    /// Paths into `input`.
    input: BTreeSet<Path>,
    /// Paths under `data`.
    data: Vec<Path>,
    /// A `with input...` was seen.
    replaces_input: bool,
}

impl Walk {
    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr);
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr);
                        if let Some(k) = key {
                            self.expr(k);
                        }
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        self.expr(refr);
                        args.iter().for_each(|a| self.expr(a));
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                }
                for body in bodies {
                    if let Some(a) = &body.assign {
                        self.expr(&a.value);
                    }
                    self.query(&body.query);
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                self.expr(refr);
                args.iter().for_each(|a| self.expr(a));
                self.expr(value);
            }
        }
    }

    fn query(&mut self, query: &Query) {
        query.stmts.iter().for_each(|s| self.stmt(s));
    }

    fn stmt(&mut self, stmt: &LiteralStmt) {
        for with in &stmt.with_mods {
            if static_path(&with.refr, "input").is_some() {
                self.replaces_input = true;
            }
            self.expr(&with.refr);
            self.expr(&with.r#as);
        }
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => self.membership(key.as_deref(), value, collection),
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
            Literal::Every { domain, query, .. } => {
                self.expr(domain);
                self.query(query);
            }
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => self.reference(expr),
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.expr(i))
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::Call { fcn, params, .. } => {
                self.expr(fcn);
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.membership(key.as_deref(), value, collection),
        }
    }

    /// `key, value in collection`, as an expression or after `some`.
    fn membership(&mut self, key: Option<&Expr>, value: &Expr, collection: &Expr) {
        if let Some(k) = key {
            self.expr(k);
        }
        self.expr(value);
        self.expr(collection);
    }

    /// A variable or a chain of references: a read of `input` or `data` at
    /// its static part, and whatever its brackets read.
    fn reference(&mut self, expr: &Expr) {
        if let Some(path) = static_path(expr, "input") {
            self.input.insert(path);
        } else if let Some(path) = static_path(expr, "data") {
            self.data.push(path);
        }
        let mut part = expr;
        loop {
            match part {
                Expr::RefDot { refr, .. } => part = refr,
                Expr::RefBrack { refr, index, .. } => {
                    self.expr(index);
                    part = refr;
                }
                Expr::Var { .. } => break,
                other => {
                    self.expr(other);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_of(policies: &[&str]) -> InputReads {
        let mut engine = regorus::Engine::new();
        for (i, p) in policies.iter().enumerate() {
            engine
                .add_policy(format!("p{i}.rego"), p.to_string())
                .unwrap();
        }
        InputReads::of(engine.get_modules(), &[&["nova", "authz"]])
    }

    fn shipped() -> InputReads {
        let texts: Vec<&str> = crate::policy::embedded::BUILTIN
            .iter()
            .map(|(_, t)| *t)
            .collect();
        reads_of(&texts)
    }

    #[test]
    fn the_shipped_policy_decides_a_run_by_role_action_and_context_flags() {
        assert_eq!(
            shipped().paths("run"),
            [
                "input.action",
                "input.context.apply",
                "input.context.as_root",
                "input.context.blueprint_allows_root",
                "input.context.service_user",
                "input.subject.role",
            ]
        );
    }

    #[test]
    fn rules_that_start_by_naming_an_action_read_only_for_that_action() {
        let reads = shipped();
        assert!(
            reads
                .paths("install")
                .contains(&"input.resource".to_string())
        );
        let serve = reads.paths("serve");
        for flag in ["loopback", "auth", "tls", "insecure"] {
            assert!(
                serve.contains(&format!("input.context.{flag}")),
                "{serve:?}"
            );
        }
        assert!(!reads.paths("run").iter().any(|p| p.ends_with("loopback")));
    }

    #[test]
    fn the_key_holds_the_values_read_and_tells_missing_from_null() {
        let reads = shipped();
        let task = |id: &str, agent: &str| {
            crate::policy::input(
                agent,
                "testing",
                "run",
                id,
                serde_json::json!({"as_root": false}),
            )
        };
        assert_eq!(reads.key(&task("t1", "a")), reads.key(&task("t2", "b")));
        let other_role = crate::policy::input("a", "planning", "run", "t1", serde_json::json!({}));
        assert_ne!(reads.key(&task("t1", "a")), reads.key(&other_role));
        let missing = serde_json::json!({"action": "run", "subject": {"role": "x"}, "context": {}});
        let null = serde_json::json!({"action": "run", "subject": {"role": "x"}, "context": {"apply": null}});
        assert_ne!(reads.key(&missing), reads.key(&null));
    }

    #[test]
    fn a_rule_that_reads_the_resource_for_any_action_keeps_it_in_the_key() {
        let reads = reads_of(&[
            "package nova.authz\nimport rego.v1\ndeny contains 1 if input.resource == \"secret\"\n",
        ]);
        assert_eq!(reads.paths("run"), ["input.resource"]);
    }

    #[test]
    fn what_cannot_be_followed_reads_the_whole_input() {
        for rule in [
            "allow if input[input.field] == 1",
            "allow if count(input) > 0",
            "allow if { x := input; x.resource == 1 }",
        ] {
            let reads = reads_of(&[&format!("package nova.authz\nimport rego.v1\n{rule}\n")]);
            assert_eq!(reads.paths("run"), ["input"], "{rule}");
        }
        let reads = reads_of(&[
            "package nova.authz\nimport rego.v1\nallow if input.context[input.action] == 1\n",
        ]);
        assert_eq!(reads.paths("run"), ["input.action", "input.context"]);
    }

    #[test]
    fn reads_follow_data_references_and_imports_to_other_packages() {
        let reads = reads_of(&[
            "package nova.authz\nimport rego.v1\nimport data.helpers\nallow if helpers.ok\n",
            "package helpers\nimport rego.v1\nok if input.subject.agent == \"a\"\n",
            "package elsewhere\nimport rego.v1\nx if input.resource == 1\n",
            "package nova.authz_test\nimport rego.v1\ntest_x if data.nova.authz.allow with input as {}\n",
        ]);
        assert_eq!(reads.paths("run"), ["input.subject.agent"]);
        let reads = reads_of(&[
            "package nova.authz\nimport rego.v1\nallow if data.lib.f(1)\n",
            "package lib\nimport rego.v1\nf(x) := input.resource\n",
        ]);
        assert_eq!(reads.paths("run"), ["input.resource"]);
    }

    #[test]
    fn an_action_guard_is_not_trusted_where_a_with_replaces_the_input() {
        let policy = "package nova.authz\nimport rego.v1\n\
            deny contains 1 if { input.action == \"install\"; input.resource == 1 }\n\
            allow if { not deny with input.action as \"install\" }\n";
        let reads = reads_of(&[policy]);
        assert!(reads.paths("run").contains(&"input.resource".to_string()));
        let guarded = "package nova.authz\nimport rego.v1\n\
            deny contains 1 if { input.action == \"install\"; input.resource == 1 }\n\
            x := 2 if { \"serve\" == input.action } else := 3\n";
        let reads = reads_of(&[guarded]);
        assert_eq!(reads.paths("run"), ["input.action"]);
        assert_eq!(reads.paths("install"), ["input.action", "input.resource"]);
    }

    /// Every input of a grid through the cache gets the decision the
    /// policy gives it uncached, and the grid does hit the cache.
    #[tokio::test]
    async fn a_decision_from_the_cache_is_the_one_the_policy_gives() {
        use crate::policy::{Evaluator, Policy, embedded};
        use serde_json::json;
        let files = embedded::policy_files(std::path::Path::new("/nonexistent")).unwrap();
        let engine = std::sync::Arc::new(embedded::Embedded::new(&files).unwrap());
        let policy = Policy::new(Evaluator::Embedded(engine.clone()));
        let contexts = [
            json!({}),
            json!({"as_root": true}),
            json!({"as_root": true, "blueprint_allows_root": true}),
            json!({"as_root": true, "apply": false}),
            json!({"as_root": true, "service_user": "root"}),
            json!({"loopback": false}),
            json!({"loopback": false, "auth": true, "tls": true}),
            json!({"loopback": false, "insecure": true}),
        ];
        let (mut asked, mut hits) = (0, 0);
        for role in ["operator", "testing", "security", "stranger"] {
            for action in ["run", "install", "serve", "enqueue", "bogus"] {
                for resource in [json!("t1"), json!("t2"), json!(5), Value::Null] {
                    for context in &contexts {
                        for agent in ["a", "b"] {
                            let mut input = json!({
                                "subject": {"agent": agent, "role": role},
                                "action": action,
                                "context": context,
                            });
                            if !resource.is_null() {
                                input["resource"] = resource.clone();
                            }
                            let direct = engine.decide(&input);
                            let via = policy.decide(&input).await;
                            assert_eq!(
                                (direct.allow, &direct.reasons),
                                (via.allow, &via.reasons),
                                "{input}"
                            );
                            asked += 1;
                            hits += usize::from(via.cached);
                        }
                    }
                }
            }
        }
        assert!(hits > asked / 2, "{hits} hits of {asked}");
    }
}
