# Tests of authorization.rego, run by `nova policy test`.
package nova.authz_test

import rego.v1

import data.nova.authz

subject(role) := {"agent": "a", "role": role}

test_the_operator_may_install if {
	authz.allow with input as {"subject": subject("operator"), "action": "install", "resource": "tree"}
}

test_an_implementation_agent_may_not_install if {
	not authz.allow with input as {"subject": subject("implementation"), "action": "install", "resource": "tree"}
	authz.reasons["role \"implementation\" may not install"] with input as {"subject": subject("implementation"), "action": "install", "resource": "tree"}
}

test_root_needs_the_blueprint if {
	not authz.allow with input as {"subject": subject("infrastructure"), "action": "run", "context": {"as_root": true}}
	authz.allow with input as {"subject": subject("infrastructure"), "action": "run", "context": {"as_root": true, "blueprint_allows_root": true}}
}

test_a_check_may_run_as_root_a_fix_may_not if {
	authz.allow with input as {"subject": subject("testing"), "action": "run", "context": {"as_root": true, "apply": false}}
	not authz.allow with input as {"subject": subject("testing"), "action": "run", "context": {"as_root": true, "apply": true}}
	authz.allow with input as {"subject": subject("testing"), "action": "run", "context": {"as_root": false, "apply": true, "service_user": "nova-agent"}}
}

test_service_user_root_runs_every_task_as_root_knowingly if {
	authz.allow with input as {"subject": subject("testing"), "action": "run", "context": {"as_root": true, "apply": true, "service_user": "root"}}
}

test_root_is_never_for_a_coder if {
	not authz.allow with input as {"subject": subject("implementation"), "action": "run", "context": {"as_root": true, "blueprint_allows_root": true}}
}

test_unknown_roles_and_actions_are_denied if {
	not authz.allow with input as {"subject": subject("stranger"), "action": "run"}
	not authz.allow with input as {"subject": subject("operator"), "action": "launch-missiles"}
}

test_serving_beyond_loopback_needs_a_token_and_tls if {
	not authz.allow with input as {"subject": subject("operator"), "action": "serve", "context": {"loopback": false, "auth": false, "tls": true}}
	not authz.allow with input as {"subject": subject("operator"), "action": "serve", "context": {"loopback": false, "auth": true}}
	authz.allow with input as {"subject": subject("operator"), "action": "serve", "context": {"loopback": false, "auth": true, "tls": true}}
	authz.allow with input as {"subject": subject("operator"), "action": "serve", "context": {"loopback": false, "insecure": true}}
}

test_the_operator_may_steer_runs_and_queues if {
	authz.allow with input as {"subject": subject("operator"), "action": "pause-queue", "resource": "jobs", "context": {"via": "dashboard"}}
	authz.allow with input as {"subject": subject("operator"), "action": "cancel-run", "resource": "r1"}
}

test_an_agent_may_not_steer_queues if {
	not authz.allow with input as {"subject": subject("testing"), "action": "pause-queue", "resource": "jobs"}
}
