//! The QA summary as Markdown: what a person reads in a pull request, a run
//! report or a release note. Plain tables and lists, no HTML.

use std::fmt::Write;

use super::Summary;
use super::junit::Case;

/// `heading` is the level of the top heading (`#` for a file of its own,
/// `##` inside a run report).
pub fn render(s: &Summary, heading: &str) -> String {
    let sub = format!("{heading}#");
    let mut md = String::new();
    let t = &s.totals;
    let _ = writeln!(md, "{heading} Tests\n");
    let verdict = if t.failed == 0 {
        "all passed"
    } else {
        "FAILED"
    };
    let _ = writeln!(
        md,
        "**{verdict}**: {} tests, {} passed, {} failed, {} skipped{}; pass rate {} (skipped tests left out); {} in the tests' own time.\n",
        t.tests,
        t.passed,
        t.failed,
        t.skipped,
        if t.flaky > 0 {
            format!(", {} flaky", t.flaky)
        } else {
            String::new()
        },
        s.pass_rate
            .map_or_else(|| "n/a".to_string(), |r| format!("{r:.1}%")),
        seconds(Some(t.time)),
    );
    let _ = writeln!(
        md,
        "| suite | file | tests | passed | failed | skipped | flaky | time |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for suite in &s.suites {
        let t = &suite.totals;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&suite.name),
            cell(&suite.file.display().to_string()),
            t.tests,
            t.passed,
            t.failed,
            t.skipped,
            t.flaky,
            seconds(Some(t.time))
        );
    }
    if let Some(c) = &s.comparison {
        let _ = writeln!(md, "\n{sub} Compared with the earlier results\n");
        for (title, list) in [
            ("Regressed (passed before, fail now)", &c.regressed),
            ("Fixed (failed before, pass now)", &c.fixed),
            ("New failing tests", &c.new_failures),
        ] {
            let _ = writeln!(md, "- {title}: {}", list.len());
            for id in list {
                let _ = writeln!(md, "  - `{id}`");
            }
        }
    }
    if !s.failures.is_empty() {
        let _ = writeln!(md, "\n{sub} Failures ({})\n", s.failures.len());
        for c in &s.failures {
            let _ = writeln!(
                md,
                "- **`{}`** ({}, {}{}){}",
                c.id,
                cell(&c.suite),
                c.file.display(),
                retried(c),
                c.message
                    .as_deref()
                    .map(|m| format!(": {}", one_line(m)))
                    .unwrap_or_default()
            );
            if !c.output.is_empty() {
                let _ = writeln!(md, "\n  ```text");
                for line in &c.output {
                    let _ = writeln!(md, "  {}", line.replace("```", "'''"));
                }
                let _ = writeln!(md, "  ```\n");
            }
        }
    }
    if !s.flaky.is_empty() {
        let _ = writeln!(
            md,
            "\n{sub} Flaky: passed only on a retry ({})\n",
            s.flaky.len()
        );
        for c in &s.flaky {
            let _ = writeln!(
                md,
                "- `{}` ({}): passed on attempt {}",
                c.id,
                cell(&c.suite),
                c.attempts
            );
        }
    }
    if !s.skipped.is_empty() {
        let _ = writeln!(md, "\n{sub} Skipped ({})\n", s.skipped.len());
        for c in &s.skipped {
            let _ = writeln!(
                md,
                "- `{}` ({}){}",
                c.id,
                cell(&c.suite),
                c.message
                    .as_deref()
                    .map(|m| format!(": {}", one_line(m)))
                    .unwrap_or_default()
            );
        }
    }
    if !s.slowest.is_empty() {
        let _ = writeln!(
            md,
            "\n{sub} Slowest\n\n| test | suite | time |\n|---|---|---:|"
        );
        for c in &s.slowest {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} |",
                c.id,
                cell(&c.suite),
                seconds(c.time)
            );
        }
    }
    md
}

fn retried(c: &Case) -> String {
    if c.attempts > 1 {
        format!(", failed {} attempts", c.attempts)
    } else {
        String::new()
    }
}

fn seconds(t: Option<f64>) -> String {
    t.map_or_else(|| "-".to_string(), |t| format!("{t:.3} s"))
}

fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
