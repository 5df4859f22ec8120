//! Reading JUnit XML result files into nova's own model of a test run.
//!
//! quick-junit parses the reports. Before it does, one pass of quick-xml
//! checks that the file is well-formed XML with a JUnit root, so a broken or
//! truncated file is refused with the line where it broke (quick-junit's
//! errors name the element path, not the line). Files as the producers
//! write them are taken: a `<testsuites>` root (pytest, jest-junit,
//! go-junit-report, nextest) or a bare `<testsuite>` (Maven Surefire,
//! unittest-xml-reporting), and several documents one after another (libtest's
//! `--format junit` prints one per test binary). Character references are
//! written out as characters, which quick-junit does not resolve.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCaseStatus};
use quick_xml::events::Event;
use serde::Serialize;

use crate::error::{Error, Result};

/// The most a results file may hold.
pub const MAX_FILE: u64 = 64 * 1024 * 1024;
/// Lines of a failure's output kept for the report.
pub const OUTPUT_LINES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    /// Ended unexpectedly (JUnit's `<error>`): counted with the failures.
    Error,
    Skipped,
}

impl Outcome {
    pub fn failed(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Error)
    }
}

/// One test, after its retries.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// `classname::name` (or `name` alone): what the test is known by across runs.
    pub id: String,
    pub suite: String,
    pub file: PathBuf,
    pub outcome: Outcome,
    /// Seconds, as the producer measured them (the last attempt's).
    pub time: Option<f64>,
    /// The failure's or the skip's message.
    pub message: Option<String>,
    /// The first lines of the failure's text and the test's output.
    pub output: Vec<String>,
    /// How many times it ran (more than 1: it was retried).
    pub attempts: u32,
}

impl Case {
    /// Passed only after failing first.
    pub fn flaky(&self) -> bool {
        self.outcome == Outcome::Passed && self.attempts > 1
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    pub name: String,
    pub file: PathBuf,
    pub cases: Vec<Case>,
}

/// Read every suite of the JUnit file at `path`.
pub fn read(path: &Path) -> Result<Vec<Suite>> {
    let text = crate::files::read_limited(path, MAX_FILE)?;
    let bad = |why: String| Error::usage(format!("{}: {why}", path.display()));
    let text = std::str::from_utf8(&text)
        .map_err(|e| bad(format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    if text.trim().is_empty() {
        return Err(bad("empty file, not a JUnit report".into()));
    }
    let mut suites = Vec::new();
    for (offset, document) in documents(text) {
        let line_of = |pos: usize| {
            text[..(offset + pos).min(text.len())]
                .lines()
                .count()
                .max(1)
        };
        let (document, root) = normalize(document)
            .map_err(|(pos, why)| bad(format!("line {}: {why}", line_of(pos))))?;
        let document = match root.as_str() {
            "testsuites" => document,
            "testsuite" => wrap_in_testsuites(&document),
            other => {
                return Err(bad(format!(
                    "not a JUnit report: its root element is <{other}>, not <testsuites> or <testsuite>"
                )));
            }
        };
        let report = quick_junit::Report::deserialize_from_str(&document)
            .map_err(|e| bad(format!("not a valid JUnit report: {e}")))?;
        for suite in report.test_suites {
            suites.push(Suite {
                name: suite.name.as_str().to_string(),
                file: path.to_path_buf(),
                cases: cases(&suite, path),
            });
        }
    }
    Ok(suites)
}

/// The XML documents in `text`, with their byte offsets.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let starts: Vec<usize> = text.match_indices("<?xml").map(|(i, _)| i).collect();
    if starts.len() <= 1 {
        return vec![(0, text)];
    }
    let mut out = Vec::new();
    if !text[..starts[0]].trim().is_empty() {
        out.push((0, &text[..starts[0]]));
    }
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        out.push((start, &text[start..end]));
    }
    out
}

/// The document made ready for quick-junit, and its root element's name; or
/// where (byte offset) and why the XML breaks.
///
/// quick-junit refuses a timestamp without a time zone and a time with a
/// thousands separator, both of which real producers write (Surefire,
/// unittest-xml-reporting). nova uses neither timestamps nor anything but
/// the number of a time, so timestamps are dropped and times cleaned.
fn normalize(text: &str) -> std::result::Result<(String, String), (usize, String)> {
    use quick_xml::events::BytesStart;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(text.len()));
    let mut open: Vec<String> = Vec::new();
    let mut root = None;
    let clean = |e: &BytesStart| -> std::result::Result<BytesStart<'static>, String> {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let mut out = BytesStart::new(name);
        for attr in e.attributes() {
            let attr = attr.map_err(|err| format!("malformed XML attribute: {err}"))?;
            let key = attr.key.as_ref();
            if key == b"timestamp" {
                continue;
            }
            if key == b"time" {
                let value = String::from_utf8_lossy(&attr.value).replace(',', "");
                if value
                    .trim()
                    .parse::<f64>()
                    .is_ok_and(|t| t.is_finite() && t >= 0.0)
                {
                    out.push_attribute(("time", value.trim()));
                }
                continue;
            }
            out.push_attribute(attr);
        }
        Ok(out)
    };
    loop {
        let event = reader.read_event();
        let at = reader.buffer_position() as usize;
        let written = match event {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                root.get_or_insert_with(|| name.clone());
                open.push(name);
                let e = clean(&e).map_err(|why| (at, why))?;
                writer.write_event(Event::Start(e))
            }
            Ok(Event::Empty(e)) => {
                root.get_or_insert_with(|| String::from_utf8_lossy(e.name().as_ref()).into_owned());
                let e = clean(&e).map_err(|why| (at, why))?;
                writer.write_event(Event::Empty(e))
            }
            Ok(Event::End(e)) => {
                open.pop();
                writer.write_event(Event::End(e))
            }
            // quick-junit resolves named entities only: write character
            // references (libtest's `&#xA;`) as the characters they stand for.
            Ok(Event::GeneralRef(r)) if r.is_char_ref() => match r.resolve_char_ref() {
                Ok(Some(c)) => {
                    let mut buf = [0u8; 4];
                    writer.write_event(Event::Text(quick_xml::events::BytesText::new(
                        c.encode_utf8(&mut buf),
                    )))
                }
                _ => return Err((at, "malformed XML: a bad character reference".to_string())),
            },
            Ok(Event::Eof) => break,
            Ok(other) => writer.write_event(other),
            Err(e) => {
                return Err((
                    reader.error_position() as usize,
                    format!("malformed XML: {e}"),
                ));
            }
        };
        written.map_err(|e| (at, format!("cannot rewrite the XML: {e}")))?;
    }
    if let Some(inner) = open.last() {
        return Err((
            text.len(),
            format!("the file ends inside <{inner}>: it is truncated"),
        ));
    }
    let root = root.ok_or((0, "no XML element in it, not a JUnit report".to_string()))?;
    let text = String::from_utf8(writer.into_inner())
        .map_err(|e| (0, format!("not UTF-8 after rewriting: {e}")))?;
    Ok((text, root))
}

/// A bare `<testsuite>` document inside a `<testsuites>` root.
fn wrap_in_testsuites(document: &str) -> String {
    let body = match document.find("?>") {
        Some(end) if document.trim_start().starts_with("<?xml") => &document[end + 2..],
        _ => document,
    };
    format!("<testsuites>{body}</testsuites>")
}

fn first_lines(parts: &[Option<&str>]) -> Vec<String> {
    parts
        .iter()
        .flatten()
        .flat_map(|text| text.lines())
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.trim().is_empty())
        .take(OUTPUT_LINES)
        .collect()
}

/// The suite's tests, retries folded: a test listed more than once (as
/// pytest-rerunfailures writes it) ran that many times and ends as its last
/// entry; JUnit's `flakyFailure`/`rerunFailure` elements count as attempts.
fn cases(suite: &quick_junit::TestSuite, file: &Path) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    for tc in &suite.test_cases {
        let id = match &tc.classname {
            Some(class) if !class.is_empty() => format!("{}::{}", class.as_str(), tc.name.as_str()),
            _ => tc.name.as_str().to_string(),
        };
        let time = tc.time.map(|d: Duration| d.as_secs_f64());
        let out_text = tc.system_out.as_ref().map(|s| s.as_str());
        let err_text = tc.system_err.as_ref().map(|s| s.as_str());
        let (outcome, message, output, reruns) = match &tc.status {
            TestCaseStatus::Success { flaky_runs } => {
                (Outcome::Passed, None, Vec::new(), flaky_runs.len() as u32)
            }
            TestCaseStatus::NonSuccess {
                kind,
                message,
                description,
                reruns,
                ..
            } => (
                match kind {
                    NonSuccessKind::Failure => Outcome::Failed,
                    NonSuccessKind::Error => Outcome::Error,
                },
                message.as_ref().map(|m| m.as_str().to_string()),
                first_lines(&[description.as_ref().map(|d| d.as_str()), out_text, err_text]),
                reruns.runs.len() as u32,
            ),
            TestCaseStatus::Skipped { message, .. } => (
                Outcome::Skipped,
                message.as_ref().map(|m| m.as_str().to_string()),
                Vec::new(),
                0,
            ),
        };
        if let Some(earlier) = out.iter_mut().find(|c| c.id == id) {
            earlier.attempts += 1 + reruns;
            earlier.outcome = outcome;
            earlier.time = time;
            earlier.message = message;
            earlier.output = output;
            continue;
        }
        out.push(Case {
            id,
            suite: suite.name.as_str().to_string(),
            file: file.to_path_buf(),
            outcome,
            time,
            message,
            output,
            attempts: 1 + reruns,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_xml_breaks_is_found() {
        let (pos, why) = normalize("<testsuites>\n<testsuite>\n</testsuites>").unwrap_err();
        assert!(why.contains("malformed"), "{why}");
        assert!(pos > 12);
        let (_, why) = normalize("<testsuites>\n<testsuite name=\"a\">").unwrap_err();
        assert!(why.contains("truncated"), "{why}");
        assert_eq!(
            normalize("<?xml version=\"1.0\"?><html/>").unwrap().1,
            "html"
        );
        let (text, _) =
            normalize("<testsuite timestamp=\"2026-01-01T00:00:00\" time=\"1,234.5\"/>").unwrap();
        assert_eq!(text, "<testsuite time=\"1234.5\"/>");
    }

    #[test]
    fn concatenated_documents_are_split() {
        let text = "<?xml version=\"1.0\"?><testsuites/>\n<?xml version=\"1.0\"?><testsuites/>";
        assert_eq!(documents(text).len(), 2);
        assert_eq!(documents("<testsuites/>").len(), 1);
    }
}
