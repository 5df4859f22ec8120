//! The ISO/IEC 27001:2022 Annex A controls an orchestration tool touches,
//! and the audit actions that are evidence for each.
//!
//! Every record gets the ids of the controls its action evidences when it is
//! appended; `nova audit controls` counts them.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    pub id: &'static str,
    pub title: &'static str,
    /// Audit actions that evidence the control (a trailing `*` matches a prefix).
    pub actions: &'static [&'static str],
}

pub const CONTROLS: &[Control] = &[
    Control {
        id: "A.5.15",
        title: "Access control",
        actions: &["policy.decision", "policy.push", "serve.start"],
    },
    Control {
        id: "A.5.16",
        title: "Identity management",
        actions: &["user.create"],
    },
    Control {
        id: "A.5.28",
        title: "Collection of evidence",
        actions: &["audit.verify", "audit.export"],
    },
    Control {
        id: "A.8.2",
        title: "Privileged access rights",
        actions: &[
            "policy.decision",
            "package.install",
            "firewall.configure",
            "user.create",
        ],
    },
    Control {
        id: "A.8.6",
        title: "Capacity management",
        actions: &["monitor.alert", "setup.check"],
    },
    Control {
        id: "A.8.8",
        title: "Management of technical vulnerabilities",
        actions: &["package.install", "setup.check"],
    },
    Control {
        id: "A.8.9",
        title: "Configuration management",
        actions: &["setup.*", "firewall.configure", "policy.push"],
    },
    Control {
        id: "A.8.10",
        title: "Information deletion",
        actions: &["runs.prune", "queue.purge"],
    },
    Control {
        id: "A.8.13",
        title: "Information backup",
        actions: &["audit.export", "backup.*"],
    },
    Control {
        id: "A.8.15",
        title: "Logging",
        actions: &["audit.verify", "serve.start", "serve.stop"],
    },
    Control {
        id: "A.8.16",
        title: "Monitoring activities",
        actions: &["monitor.*", "serve.start", "serve.stop"],
    },
    Control {
        id: "A.8.17",
        title: "Clock synchronization",
        actions: &["setup.check"],
    },
    Control {
        id: "A.8.19",
        title: "Installation of software on operational systems",
        actions: &["package.install"],
    },
    Control {
        id: "A.8.20",
        title: "Networks security",
        actions: &["firewall.configure"],
    },
    Control {
        id: "A.8.32",
        title: "Change management",
        actions: &[
            "run.*",
            "task.*",
            "queue.cancel",
            "queue.retry",
            "package.install",
            "policy.push",
        ],
    },
];

fn matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => pattern == action,
    }
}

/// Whether `action` is evidence for `control`.
pub fn evidences(control: &Control, action: &str) -> bool {
    control.actions.iter().any(|p| matches(p, action))
}

/// The ids of the controls `action` evidences, in registry order.
pub fn for_action(action: &str) -> Vec<String> {
    CONTROLS
        .iter()
        .filter(|c| evidences(c, action))
        .map(|c| c.id.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_map_to_controls() {
        assert_eq!(
            for_action("package.install"),
            ["A.8.2", "A.8.8", "A.8.19", "A.8.32"]
        );
        assert_eq!(for_action("run.finish"), ["A.8.32"]);
        assert!(for_action("unknown.thing").is_empty());
        let ids: Vec<&str> = CONTROLS.iter().map(|c| c.id).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids, unique);
    }
}
