//! Which audit records a reader asks for (the dashboard's audit, decisions
//! and alerts views), in one form that both stores apply: SQLite in its
//! query, so a search that finds few records does not parse every record
//! on the way; Redis record by record.

use super::Record;

/// Each field that is set narrows the records; none set means every record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// This action; with a trailing `*`, every action that starts with what
    /// comes before it (`queue.*`).
    pub action: Option<String>,
    /// Exactly this outcome.
    pub outcome: Option<String>,
    /// An actor that contains this.
    pub actor: Option<String>,
    /// A target, or details as stored (JSON), that contain this (a run's id).
    pub mentions: Option<String>,
    /// Sealed at or after this time (milliseconds since the Unix epoch).
    pub since: Option<i64>,
}

impl Filter {
    /// Records of `action` (see [`Filter::action`]).
    pub fn action(action: impl Into<String>) -> Filter {
        Filter {
            action: Some(action.into()),
            ..Filter::default()
        }
    }

    /// The action asked for, as an exact name or a prefix.
    pub fn action_pattern(&self) -> Option<ActionPattern<'_>> {
        self.action.as_deref().map(|a| match a.strip_suffix('*') {
            Some(prefix) => ActionPattern::Prefix(prefix),
            None => ActionPattern::Exact(a),
        })
    }

    pub fn matches(&self, r: &Record) -> bool {
        let action = match self.action_pattern() {
            None => true,
            Some(ActionPattern::Exact(a)) => r.action == a,
            Some(ActionPattern::Prefix(p)) => r.action.starts_with(p),
        };
        action
            && self.outcome.as_ref().is_none_or(|o| r.outcome == *o)
            && self
                .actor
                .as_ref()
                .is_none_or(|a| r.actor.contains(a.as_str()))
            && self.mentions.as_ref().is_none_or(|m| {
                r.target.contains(m.as_str()) || r.details.to_string().contains(m.as_str())
            })
            && self.since.is_none_or(|t| r.at >= t)
    }
}

impl Filter {
    /// Whether a record stored as `json` (serde_json's compact form) may
    /// match: false only when it cannot, so that a scan skips most records
    /// without parsing them. Every text the filter looks for that holds only
    /// characters JSON never escapes nor uses between tokens must appear in
    /// the stored text as it is; a text with any other character says
    /// nothing here and is left to [`Filter::matches`].
    pub fn may_match_json(&self, json: &str) -> bool {
        self.plain_texts().iter().all(|t| json.contains(t))
    }

    /// The texts that every record this filter accepts holds as they are
    /// in its stored JSON (see [`Filter::may_match_json`]).
    pub fn plain_texts(&self) -> Vec<&str> {
        [
            self.action
                .as_deref()
                .map(|a| a.strip_suffix('*').unwrap_or(a)),
            self.outcome.as_deref(),
            self.actor.as_deref(),
            self.mentions.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|t| !t.is_empty() && t.chars().all(inside_one_token))
        .collect()
    }
}

/// A character that serde_json writes as it is inside a string and that
/// never stands between two tokens, so a text made of them is found within
/// one string, number or literal of the stored record whatever the order of
/// its keys.
fn inside_one_token(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '@' | '+' | '#' | '=' | '~' | ' ')
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionPattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Event;
    use serde_json::json;

    fn stored(
        action: &str,
        actor: &str,
        target: &str,
        details: serde_json::Value,
    ) -> (Record, String) {
        let record = Event::new(actor, action, target, "ok")
            .details(details)
            .seal(41, crate::audit::GENESIS, 1_764_800_000_000);
        let json = serde_json::to_string(&record).unwrap();
        (record, json)
    }

    /// The pre-check never turns away a record that the filter accepts,
    /// whatever the texts hold, and turns away records that lack a plain text.
    #[test]
    fn the_json_precheck_only_turns_away_records_that_cannot_match() {
        let records = [
            stored(
                "run.start",
                "operator:ann",
                "run-42",
                json!({"run": "run-42", "z": 1, "a": [1, 2]}),
            ),
            stored(
                "queue.ack",
                "worker \"w\"",
                "t:1",
                json!({"b": {"c": "x y"}, "a": true}),
            ),
            stored(
                "policy.decision",
                "agent:é",
                "quoted \"x\"",
                json!({"why": "line\nbreak"}),
            ),
        ];
        let texts = [
            "run-42",
            "run",
            "42",
            "1}",
            "2]",
            "a\":",
            ":1",
            "true",
            "x y",
            "\"w\"",
            "w",
            "é",
            "line",
            "\n",
            "queue.*",
            "queue.ack",
            "ann",
            "ok",
            "none",
            ",",
            "t:1",
        ];
        for (record, json) in &records {
            for t in texts {
                for filter in [
                    Filter::action(t),
                    Filter {
                        outcome: Some(t.into()),
                        ..Filter::default()
                    },
                    Filter {
                        actor: Some(t.into()),
                        ..Filter::default()
                    },
                    Filter {
                        mentions: Some(t.into()),
                        ..Filter::default()
                    },
                ] {
                    if filter.matches(record) {
                        assert!(filter.may_match_json(json), "{filter:?} on {json}");
                    }
                }
            }
        }
        let (_, json) = &records[0];
        let mentions = |m: &str| Filter {
            mentions: Some(m.into()),
            ..Filter::default()
        };
        assert!(!mentions("run-43").may_match_json(json));
        assert!(!Filter::action("queue.*").may_match_json(json));
        assert!(mentions("run-42").may_match_json(json));
    }
}
