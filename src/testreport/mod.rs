//! QA summaries of test runs: JUnit XML results in, a Markdown report (or
//! JSON) out, with totals, each suite, every failure, the skipped, the
//! slowest and the flaky tests, and what changed against earlier results.
//!
//! [`junit`] reads the files; [`Summary`] is what a report says, built once
//! and rendered by [`markdown`] or serialized for `--json`, so the run
//! report's Tests section and `nova report tests` never disagree.

pub mod command;
pub mod junit;
pub mod markdown;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use junit::{Case, Outcome, Suite};

/// How many of the slowest tests a report lists.
pub const SLOWEST: usize = 5;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub tests: usize,
    pub passed: usize,
    /// Failures and errors.
    pub failed: usize,
    pub skipped: usize,
    /// Passed, but only on a retry.
    pub flaky: usize,
    /// Sum of the tests' own times, in seconds.
    pub time: f64,
}

impl Totals {
    fn of<'a>(cases: impl IntoIterator<Item = &'a Case>) -> Self {
        let mut t = Totals::default();
        for c in cases {
            t.tests += 1;
            match c.outcome {
                Outcome::Passed => t.passed += 1,
                Outcome::Failed | Outcome::Error => t.failed += 1,
                Outcome::Skipped => t.skipped += 1,
            }
            if c.flaky() {
                t.flaky += 1;
            }
            t.time += c.time.unwrap_or(0.0);
        }
        t
    }

    /// Passed among the tests that ran (skipped ones left out), in percent.
    pub fn pass_rate(&self) -> Option<f64> {
        let ran = self.passed + self.failed;
        (ran > 0).then(|| 100.0 * self.passed as f64 / ran as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteSummary {
    pub name: String,
    pub file: PathBuf,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Against earlier results: what broke and what was mended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// Passed before, fail now.
    pub regressed: Vec<String>,
    /// Failed before, pass now.
    pub fixed: Vec<String>,
    /// Fail now and were not there before.
    pub new_failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub files: Vec<PathBuf>,
    pub totals: Totals,
    pub pass_rate: Option<f64>,
    pub suites: Vec<SuiteSummary>,
    pub failures: Vec<Case>,
    pub flaky: Vec<Case>,
    pub skipped: Vec<Case>,
    pub slowest: Vec<Case>,
    pub comparison: Option<Comparison>,
}

impl Summary {
    pub fn all_passed(&self) -> bool {
        self.totals.failed == 0
    }
}

/// Read `files` (and `earlier`, to compare with) into a summary.
pub fn summarize(files: &[PathBuf], earlier: &[PathBuf]) -> Result<Summary> {
    let mut suites = Vec::new();
    for f in files {
        suites.extend(junit::read(f)?);
    }
    let comparison = if earlier.is_empty() {
        None
    } else {
        let mut before = Vec::new();
        for f in earlier {
            before.extend(junit::read(f)?);
        }
        Some(compare(&before, &suites))
    };
    Ok(build(files.to_vec(), &suites, comparison))
}

fn build(files: Vec<PathBuf>, suites: &[Suite], comparison: Option<Comparison>) -> Summary {
    let cases: Vec<&Case> = suites.iter().flat_map(|s| &s.cases).collect();
    let totals = Totals::of(cases.iter().copied());
    let pick = |keep: &dyn Fn(&Case) -> bool| -> Vec<Case> {
        cases
            .iter()
            .filter(|c| keep(c))
            .map(|c| (*c).clone())
            .collect()
    };
    let mut slowest = pick(&|c| c.time.is_some() && c.outcome != Outcome::Skipped);
    slowest.sort_by(|a, b| {
        b.time
            .unwrap_or(0.0)
            .total_cmp(&a.time.unwrap_or(0.0))
            .then_with(|| a.id.cmp(&b.id))
    });
    slowest.truncate(SLOWEST);
    Summary {
        files,
        pass_rate: totals.pass_rate(),
        totals,
        suites: suites
            .iter()
            .filter(|s| !s.cases.is_empty())
            .map(|s| SuiteSummary {
                name: s.name.clone(),
                file: s.file.clone(),
                totals: Totals::of(&s.cases),
            })
            .collect(),
        failures: pick(&|c| c.outcome.failed()),
        flaky: pick(&|c| c.flaky()),
        skipped: pick(&|c| c.outcome == Outcome::Skipped),
        slowest,
        comparison,
    }
}

/// Tests are matched by suite and id across the two sets.
fn compare(before: &[Suite], now: &[Suite]) -> Comparison {
    let key = |c: &Case| format!("{} / {}", c.suite, c.id);
    let earlier: std::collections::BTreeMap<String, Outcome> = before
        .iter()
        .flat_map(|s| &s.cases)
        .map(|c| (key(c), c.outcome))
        .collect();
    let mut out = Comparison::default();
    for c in now.iter().flat_map(|s| &s.cases) {
        let k = key(c);
        match (earlier.get(&k), c.outcome) {
            (Some(Outcome::Passed), o) if o.failed() => out.regressed.push(k),
            (Some(o), Outcome::Passed) if o.failed() => out.fixed.push(k),
            (None, o) if o.failed() => out.new_failures.push(k),
            _ => {}
        }
    }
    out
}

/// The JUnit files the tasks of a run left in their results folders
/// (`runs/<run>/<agent>/results/<task>/*.xml`, the task's `NOVA_RESULTS`).
pub fn run_results(run_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(agents) = std::fs::read_dir(run_dir) else {
        return out;
    };
    for agent in agents.flatten() {
        let Ok(tasks) = std::fs::read_dir(agent.path().join("results")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(files) = std::fs::read_dir(task.path()) else {
                continue;
            };
            out.extend(
                files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "xml")),
            );
        }
    }
    out.sort();
    out
}

/// The summary of the files that read as JUnit, and why each other one did
/// not: a task's broken results file must not lose the rest of a run's report.
pub fn summarize_found(files: &[PathBuf]) -> (Option<Summary>, Vec<String>) {
    let mut suites = Vec::new();
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    for f in files {
        match junit::read(f) {
            Ok(s) => {
                suites.extend(s);
                read.push(f.clone());
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let summary = (!read.is_empty()).then(|| build(read, &suites, None));
    (summary, unreadable)
}

/// The Tests section of a run's report (`heading` as in [`markdown::render`]).
pub fn run_section(run_dir: &Path, heading: &str) -> Option<(String, Option<Summary>)> {
    let files = run_results(run_dir);
    if files.is_empty() {
        return None;
    }
    let (mut summary, unreadable) = summarize_found(&files);
    // Within a run, `agent/results/task/file.xml` says all there is to say.
    if let Some(s) = summary.as_mut() {
        let short = |p: &mut PathBuf| {
            if let Ok(rel) = p.strip_prefix(run_dir) {
                *p = rel.to_path_buf();
            }
        };
        s.files.iter_mut().for_each(short);
        s.suites.iter_mut().for_each(|x| short(&mut x.file));
        for list in [
            &mut s.failures,
            &mut s.flaky,
            &mut s.skipped,
            &mut s.slowest,
        ] {
            list.iter_mut().for_each(|c| short(&mut c.file));
        }
    }
    let mut md = match &summary {
        Some(s) => markdown::render(s, heading),
        None => format!("{heading} Tests\n\n"),
    };
    for why in &unreadable {
        md.push_str(&format!("\n- results not read: {why}\n"));
    }
    Some((md, summary))
}
