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
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionPattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}
