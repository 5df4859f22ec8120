//! One audit record: its fields, canonical form and hash, and the scrubbing
//! that keeps secrets out of it.
//!
//! A record's hash is SHA-256 over the previous record's hash, a newline, and
//! the record's canonical form: compact JSON of `seq`, `at`, `actor`,
//! `action`, `target`, `outcome`, `details` and `controls`, every object's
//! keys sorted. The first record's previous hash is [`GENESIS`].

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: Value,
    /// ISO/IEC 27001:2022 Annex A control ids this record evidences.
    pub controls: Vec<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// What a caller records; the log adds the sequence number, time, controls and hashes.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: Value,
}

impl Event {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Event {
        Event {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            details: Value::Object(Map::new()),
        }
    }

    pub fn details(mut self, details: Value) -> Event {
        self.details = details;
        self
    }

    /// The record that follows `prev` (sequence number and hash), scrubbed.
    pub fn seal(self, prev_seq: u64, prev_hash: &str, at: i64) -> Record {
        let mut record = Record {
            seq: prev_seq + 1,
            at,
            actor: scrub_text(&self.actor),
            controls: super::controls::for_action(&self.action),
            action: self.action,
            target: scrub_text(&self.target),
            outcome: self.outcome,
            details: scrub_value(self.details),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        record.hash = record.expected_hash();
        record
    }
}

/// Compact JSON with sorted keys. serde_json keeps insertion order when its
/// `preserve_order` feature is on somewhere in the build, so the keys are
/// written in order by hand rather than trusted to the map type.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// A JSON string, escaped as serde_json escapes it.
fn write_canonical_str(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"))
}

/// [`canonical_json`] into one buffer (it is on every audited step's path).
fn write_canonical(value: &Value, out: &mut String) {
    let string = write_canonical_str;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

impl Record {
    /// The canonical form, written field by field in key order (the same
    /// bytes as [`canonical_json`] of the fields as one object, without
    /// building that object: every audited step pays for this).
    pub fn canonical(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(256 + self.target.len() + self.actor.len());
        let string = |s: &str, out: &mut String| write_canonical_str(s, out);
        out.push_str("{\"action\":");
        string(&self.action, &mut out);
        out.push_str(",\"actor\":");
        string(&self.actor, &mut out);
        let _ = write!(out, ",\"at\":{},\"controls\":[", self.at);
        for (i, control) in self.controls.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            string(control, &mut out);
        }
        out.push_str("],\"details\":");
        write_canonical(&self.details, &mut out);
        out.push_str(",\"outcome\":");
        string(&self.outcome, &mut out);
        let _ = write!(out, ",\"seq\":{},\"target\":", self.seq);
        string(&self.target, &mut out);
        out.push('}');
        out
    }

    /// The hash this record must carry, given its contents and `prev_hash`.
    pub fn expected_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(self.canonical().as_bytes());
        crate::digest::hex(&h.finalize())
    }
}

/// Keys whose values are secrets, whatever they hold.
static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(passw(or)?d|passphrase|secret|token|api[_-]?key|private[_-]?key|credential|authorization|cookie|session[_-]?id)")
        .expect("valid regex")
});

/// Secrets inside free text: `password=...`, `--token ...`, `Bearer ...`,
/// URL credentials; each pattern with its replacement, applied in turn.
const SECRET_TEXT_PATTERNS: [(&str, &str); 3] = [
    (
        r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+",
        "$1 [redacted]",
    ),
    (
        r"(?i)((?:passw(?:or)?d|passphrase|secret|token|api[_-]?key)[A-Za-z_-]*)(\s*[=:]\s*|\s+)([^\s,;&]+)",
        "$1$2[redacted]",
    ),
    (
        r"([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@",
        "$1:[redacted]@",
    ),
];

static SECRET_TEXT: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    SECRET_TEXT_PATTERNS
        .iter()
        .map(|(pattern, replacement)| (Regex::new(pattern).expect("valid regex"), *replacement))
        .collect()
});

/// Whether any of [`SECRET_TEXT_PATTERNS`] occurs: one pass over a string
/// that holds no secret (nearly all do not) instead of one per pattern.
static ANY_SECRET_TEXT: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(SECRET_TEXT_PATTERNS.iter().map(|(pattern, _)| pattern)).expect("valid regexes")
});

pub fn scrub_text(text: &str) -> String {
    scrubbed(text).into_owned()
}

/// `text` with secrets replaced, copied only when one was found (most
/// strings hold none, and every audited step scrubs several).
fn scrubbed(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    // No pattern matches the text as it is, so none of the replacements,
    // applied in turn, would change it.
    if !ANY_SECRET_TEXT.is_match(text) {
        return out;
    }
    for (pattern, replacement) in SECRET_TEXT.iter() {
        if let Cow::Owned(replaced) = pattern.replace_all(&out, *replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// `value` with secrets replaced by [`REDACTED`]: the values of keys that name
/// a secret, and secrets spotted inside strings.
pub fn scrub_value(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if SECRET_KEY.is_match(&k) && !v.is_null() {
                        (k, Value::String(REDACTED.into()))
                    } else {
                        (k, scrub_value(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_value).collect()),
        Value::String(s) => match scrubbed(&s) {
            Cow::Borrowed(_) => Value::String(s),
            Cow::Owned(clean) => Value::String(clean),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    /// The canonical form written field by field is byte for byte the one
    /// the chain has always hashed: the fields as one JSON object, keys
    /// sorted at every depth.
    #[test]
    fn canonical_form_is_the_sorted_object_of_the_fields() {
        let record = Event::new("agent:nøva \"q\"", "task.start", "a/b\n\u{1}", "started")
            .details(json!({
                "zeta": [3, {"y": true, "b": null}, "x"],
                "alpha": {"k2": -1.5, "k1": "tab\there"},
                "run": "r-1",
            }))
            .seal(41, GENESIS, -17);
        let reference = canonical_json(&json!({
            "seq": record.seq,
            "at": record.at,
            "actor": record.actor,
            "action": record.action,
            "target": record.target,
            "outcome": record.outcome,
            "details": record.details,
            "controls": record.controls,
        }));
        assert!(!record.controls.is_empty());
        assert_eq!(record.canonical(), reference);
        let empty = Event::new("a", "b.c", "", "").seal(0, GENESIS, 0);
        assert_eq!(
            empty.canonical(),
            canonical_json(&json!({
                "seq": 1, "at": 0, "actor": "a", "action": "b.c", "target": "",
                "outcome": "", "details": {}, "controls": empty.controls,
            }))
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn the_canonical_form_sorts_keys_at_every_depth() {
        let a = Event::new("me", "x", "t", "ok")
            .details(json!({"b": 1, "a": {"d": 2, "c": [ {"z": 1, "y": 2} ]}}))
            .seal(0, GENESIS, 5);
        assert_eq!(
            a.canonical(),
            r#"{"action":"x","actor":"me","at":5,"controls":[],"details":{"a":{"c":[{"y":2,"z":1}],"d":2},"b":1},"outcome":"ok","seq":1,"target":"t"}"#
        );
        assert_eq!(a.hash, a.expected_hash());
        // SHA-256 of GENESIS, a newline and the line above, as any tool
        // computes it (here Python's hashlib): chains written by earlier
        // novas must keep verifying.
        assert_eq!(
            a.hash,
            "95853094683c62ed1f2f0f2976aae6f0596ae2e936b9c09224b3d7ffa2175311"
        );
        let mut changed = a.clone();
        changed.outcome = "denied".into();
        assert_ne!(changed.expected_hash(), a.hash);
    }

    #[test]
    fn secrets_never_enter_a_record() {
        let r = Event::new(
            "ops",
            "package.install",
            "curl -H 'Authorization: Bearer abc.def' https://user:hunter2@example.com --token s3cr3t",
            "ok",
        )
        .details(json!({
            "password": "hunter2",
            "nested": {"api_key": "k-123", "note": "password=hunter2 and more"},
            "list": [{"GITHUB_TOKEN": "ghp_x"}],
            "count": 3,
        }))
        .seal(0, GENESIS, 0);
        let text = serde_json::to_string(&r).unwrap();
        for secret in ["hunter2", "abc.def", "s3cr3t", "k-123", "ghp_x"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(r.details["count"], 3);
        assert!(
            r.target.contains("https://user:[redacted]@example.com"),
            "{}",
            r.target
        );
    }
}
