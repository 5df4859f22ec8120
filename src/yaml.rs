//! Strict YAML reading with errors that point at the input.
//!
//! Every YAML file nova reads (blueprints, plans, `nova.yaml`) goes through
//! [`parse`], which reports the file, line, column and field path of the first
//! problem serde finds. Checks that run after parsing (duplicate ids, unknown
//! dependencies, cycles) use the `*_line` helpers to find the line of the key
//! they complain about; they read the text, not a second parse, and return
//! `None` rather than guess when the layout is unusual.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One problem in one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field path, as in `tasks[2].timeout`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// All the problems found in a set of inputs; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// True when a YAML text holds no document: only blanks and comments.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// Parse one YAML document into `T`, naming the file, position and field of any error.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Diagnostic> {
    if is_blank(text) {
        return Err(Diagnostic::new(file, "the file holds no YAML document"));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location();
        let mut message = inner.to_string();
        // serde_yaml appends the position and sometimes prefixes the path; both
        // are reported in their own fields.
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        if let Some((head, rest)) = message.split_once(": ")
            && !head.contains(' ')
            && (head == path || head.contains('.') || head.contains('['))
        {
            message = rest.to_string();
        }
        // bytesize's own words for a size it cannot read say nothing useful.
        message = message.replace(
            "expected parsable string",
            "expected a size such as 5GiB, 512MiB or 500MB",
        );
        // Errors raised inside a nested value point at the start of its mapping;
        // move them to the key the field path names when it follows.
        let key = path
            .rsplit('.')
            .next()
            .filter(|k| !k.contains('[') && *k != "?")
            .unwrap_or("");
        let (line, column) = match location.as_ref().map(|l| (l.line(), l.column())) {
            Some((line, column)) if !key.is_empty() => match key_line_from(text, key, line) {
                Some(found) if found != line => (Some(found), None),
                _ => (Some(line), Some(column)),
            },
            Some((line, column)) => (Some(line), Some(column)),
            None => (None, None),
        };
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            field: (path != "." && !path.is_empty()).then_some(path),
            message,
        }
    })
}

fn unquote(value: &str) -> &str {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v)
}

/// The text after `key:` when `line` (less indentation and an optional `- `)
/// starts with that key.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let body = line.trim_start();
    let body = body.strip_prefix("- ").map(str::trim_start).unwrap_or(body);
    let rest = body.strip_prefix(key)?.strip_prefix(':')?;
    let rest = rest.split(" #").next().unwrap_or(rest);
    Some(rest.trim())
}

/// The first line at or after `from` (1-based) that holds `key:` no less
/// indented than line `from`, before the block it starts in ends.
fn key_line_from(text: &str, key: &str, from: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
    let base = indent(lines.get(from.checked_sub(1)?)?);
    for (i, line) in lines.iter().enumerate().skip(from - 1) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if i + 1 > from && indent(line) < base {
            return None;
        }
        if value_of(line, key).is_some() {
            return Some(i + 1);
        }
    }
    None
}

/// Line (1-based) of the top-level `key:` in a YAML text.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| !l.starts_with([' ', '\t', '-']) && value_of(l, key).is_some())
        .map(|i| i + 1)
}

/// Line of `key:` inside the top-level mapping `section:` (as `monitor:` then
/// `  cpu_percent: 150`).
pub fn section_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let start = key_line(text, section)?;
    let lines: Vec<&str> = text.lines().collect();
    lines[start..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.starts_with([' ', '\t']) || l.starts_with('#'))
        .position(|l| value_of(l, key).is_some())
        .map(|i| start + i + 1)
}

/// Line of the `nth` (0-based) line that reads `key: value`, at any depth.
pub fn key_value_line(text: &str, key: &str, value: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| value_of(l, key).is_some_and(|v| unquote(v) == value))
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// Line of `item` in the list under the top-level `key`: the item's own line in
/// a block list, the key's line in an inline `[a, b]` list.
pub fn list_item_line(text: &str, key: &str, item: &str) -> Option<usize> {
    let start = key_line(text, key)?;
    let lines: Vec<&str> = text.lines().collect();
    if value_of(lines[start - 1], key).is_some_and(|v| !v.is_empty()) {
        return Some(start);
    }
    for (offset, line) in lines[start..].iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_prefix("- ") {
            Some(v) if unquote(v.split(" #").next().unwrap_or(v)) == item => {
                return Some(start + offset + 1);
            }
            Some(_) => {}
            None => break,
        }
    }
    Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: coder\ndepends_on:\n  - planner # first\n  - \"architect\"\ntasks:\n  - id: fmt\n    title: x\n  - id: fmt\n";

    #[test]
    fn finds_keys_and_items() {
        assert_eq!(key_line(TEXT, "depends_on"), Some(2));
        assert_eq!(key_line(TEXT, "title"), None, "title is not top-level");
        assert_eq!(list_item_line(TEXT, "depends_on", "architect"), Some(4));
        assert_eq!(list_item_line(TEXT, "depends_on", "planner"), Some(3));
        assert_eq!(key_value_line(TEXT, "id", "fmt", 1), Some(8));
        let config =
            "setup:\n  users: [a]\n# note\nmonitor:\n  history: 3\n  cpu_percent: 150\nplan: x\n";
        assert_eq!(section_key_line(config, "monitor", "cpu_percent"), Some(6));
        assert_eq!(section_key_line(config, "setup", "cpu_percent"), None);
        assert_eq!(
            list_item_line("depends_on: [a, b]\n", "depends_on", "b"),
            Some(1)
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: u32,
    }

    #[test]
    fn parse_errors_name_line_and_field() {
        let err = parse::<Doc>("x.yaml", "name: a\nitems:\n  - id: 1\n  - id: two\n").unwrap_err();
        assert_eq!(err.line, Some(4));
        assert_eq!(err.field.as_deref(), Some("items[1].id"));
        assert!(err.message.contains("invalid type"), "{}", err.message);

        let err = parse::<Doc>("x.yaml", "name: a\nitems: []\ncolour: red\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(
            err.message.contains("unknown field `colour`"),
            "{}",
            err.message
        );
        assert!(err.to_string().starts_with("x.yaml:3:"), "{err}");

        let err = parse::<Doc>("x.yaml", "# only a comment\n").unwrap_err();
        assert!(err.message.contains("no YAML document"));
    }
}

/// A duration written the human way: `500ms`, `30s`, `10m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                <D::Error as serde::de::Error>::custom(format!(
                    "{text:?} is not a duration ({e}); write it as 30s, 10m or 1h"
                ))
            })
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}
