//! The commented blueprint template `nova blueprints new` writes.
//!
//! When the role matches a built-in agent's role or name, its skills and
//! definition of done seed the template, so a new "tester" starts from what
//! nova's own tester promises. The template always parses and validates.

use super::catalog::Catalog;

pub struct TemplateInput<'a> {
    pub name: &'a str,
    pub role: &'a str,
    /// `None` for the workspace plan (no `plan:` key is written).
    pub plan: Option<&'a str>,
    pub phase: &'a str,
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

pub fn render(catalog: &Catalog, input: &TemplateInput) -> String {
    let model = catalog.agents.iter().find(|a| {
        a.spec.role.eq_ignore_ascii_case(input.role) || a.name().eq_ignore_ascii_case(input.role)
    });
    let skills: Vec<String> = model
        .map(|a| a.spec.skills.clone())
        .unwrap_or_else(|| vec!["describe-a-skill".into()]);
    let done: Vec<String> = model
        .map(|a| a.spec.definition_of_done.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            vec!["Say what must be true when this agent's work is finished.".into()]
        });

    let mut t = String::new();
    t.push_str(&format!(
        "# Blueprint of the agent `{}` (role: {}).\n",
        input.name, input.role
    ));
    if let Some(model) = model {
        t.push_str(&format!(
            "# Skills and definition of done start from the built-in agent `{}`.\n",
            model.name()
        ));
    }
    t.push_str("# Check it with `nova blueprints validate`; see README.md, \"Blueprints\", for every field.\n\n");
    t.push_str(&format!("name: {}\n", quote(input.name)));
    t.push_str(&format!("role: {}\n", quote(input.role)));
    match input.plan {
        Some(plan) => t.push_str(&format!("plan: {}\n", quote(plan))),
        None => t.push_str(
            "# plan: delivery        # absent: the workspace plan (phases from nova.yaml)\n",
        ),
    }
    t.push_str(&format!("phase: {}\n", quote(input.phase)));
    t.push_str("description: >-\n  What this agent is responsible for, in a sentence or two.\n");
    t.push_str("skills:\n");
    for skill in &skills {
        t.push_str(&format!("  - {}\n", quote(skill)));
    }
    t.push_str("# Agents that must finish first: same plan, same or an earlier phase.\n");
    t.push_str("depends_on: []\n");
    t.push_str("# Limits for each task of this agent; a task that passes one is stopped.\n");
    t.push_str("# Keys: memory (512MiB, 2GB), wall_time (90s, 1h), gpus (whole GPUs each task holds while it runs).\n");
    t.push_str("resources: {}\n");
    t.push_str("definition_of_done:\n");
    for item in &done {
        t.push_str(&format!("  - {}\n", quote(item)));
    }
    t.push_str(
        r#"tasks:
  - id: readme-present
    title: The repository has a README
    # `check` exits 0 when the step is already done; `run` does the step, and
    # only runs with `nova orchestrate --apply`. Commands are argv lists; a
    # shell line needs an explicit `shell:` key.
    check: [test, -s, README.md]
    run:
      shell: "printf '# Project\n' > README.md"
    # when:                # the task applies only if all of these hold
    #   file: [Cargo.toml, package.json]   # any of these paths exists
    #   command: [git]                     # every program is on PATH
    #   env: [CI]                          # every variable is set
    #   os: [linux]                        # the OS is one of these
    # env: {RUST_LOG: info}
    # cwd: .
    # timeout: 10m
    # retries: 2
    # run_as_root: true    # needs root (as nova root: else the service user runs it)
"#,
    );
    t
}
