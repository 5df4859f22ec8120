# Who may do what in nova. Deny by default: an action is allowed only when the
# subject's role grants it and no rule below denies it.
#
# Input (DESIGN.md): {"subject": {"agent", "role"}, "action", "resource",
# "context"}. The decision is data.nova.authz: `allow` decides, `reasons`
# explains (the denials, or the grant that allowed it).
package nova.authz

import rego.v1

# Steering from the dashboard or the API: what an operator may do to runs,
# queue tasks and queues besides starting a run ("run").
control_actions := {"cancel-run", "resume-run", "retry-task", "cancel-task", "pause-queue", "resume-queue"}

actions := {"run", "install", "enqueue", "configure-firewall", "create-user", "serve"} | control_actions

# The person at the terminal or signed in to the dashboard (or a script acting for them).
operator_actions := actions

# Agents' roles, by what their blueprints do (blueprints/*/*.yaml `role:`).
agent_actions := {"run", "enqueue"}

host_actions := {"run", "enqueue", "install", "configure-firewall", "create-user"}

role_actions := {
	"operator": operator_actions,
	"infrastructure": host_actions,
	"operations": {"run", "enqueue", "install", "serve"},
	"security": {"run", "enqueue", "configure-firewall"},
	"data-storage": {"run", "enqueue", "install"},
	"ai-software": {"run", "enqueue", "install"},
	"observability": {"run", "enqueue", "serve"},
	"workflow-automation": agent_actions,
	"avatar-interaction": agent_actions,
	"planning": agent_actions,
	"architecture": agent_actions,
	"dependency-management": {"run", "enqueue", "install"},
	"implementation": agent_actions,
	"repository-hygiene": agent_actions,
	"testing": agent_actions,
	"code-review": agent_actions,
	"type-safety": agent_actions,
	"performance": agent_actions,
	"compliance": agent_actions,
	"documentation": agent_actions,
	"integration": agent_actions,
	"release-management": agent_actions,
}

# Roles that may ever run a command as root, and only when their blueprint says so.
root_roles := {"operator", "infrastructure", "security", "data-storage"}

default allow := false

allow if {
	input.action in role_actions[input.subject.role]
	count(deny) == 0
}

deny contains msg if {
	not input.action in actions
	msg := sprintf("unknown action %q", [input.action])
}

deny contains msg if {
	not role_actions[input.subject.role]
	msg := sprintf("unknown role %q", [input.subject.role])
}

deny contains msg if {
	input.action in actions
	grants := role_actions[input.subject.role]
	not input.action in grants
	msg := sprintf("role %q may not %s", [input.subject.role, input.action])
}

# A task's fix (--apply) that would run as root must say it needs root,
# unless the workspace runs every task as root on purpose (service_user: root,
# for hosts with no other user). Checks only look at the host: they may run as
# the user nova runs as. input.context.as_root is the uid the task really gets.
deny contains "running a fix as root needs run_as_root: true in the agent's blueprint, or a service_user in nova.yaml to run it as (nova setup --apply creates it)" if {
	input.context.as_root == true
	not input.context.apply == false
	not input.context.blueprint_allows_root == true
	not input.context.service_user == "root"
}

deny contains msg if {
	input.context.as_root == true
	input.context.blueprint_allows_root == true
	not input.subject.role in root_roles
	msg := sprintf("role %q may not run commands as root", [input.subject.role])
}

deny contains "serving beyond loopback needs a bearer token (or an explicit --insecure)" if {
	input.action == "serve"
	input.context.loopback == false
	not input.context.auth == true
	not input.context.insecure == true
}

deny contains "serving beyond loopback needs TLS (or an explicit --insecure)" if {
	input.action == "serve"
	input.context.loopback == false
	not input.context.tls == true
	not input.context.insecure == true
}

deny contains msg if {
	input.action == "install"
	not is_string(input.resource)
	msg := "install needs the package as its resource"
}

reasons contains msg if some msg in deny

reasons contains msg if {
	allow
	msg := sprintf("role %q may %s", [input.subject.role, input.action])
}
