//! `nova.yaml`: strict keys, the workspace plan, and the default plan.

mod common;

use common::Workspace;

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "# settings\nplan: delivery\nstroe: sqlite:x.db\n",
    );
    ws.run(&["tasks"])
        .code(2)
        .stderr_has("nova.yaml:3:1: field `stroe`: unknown field `stroe`, expected one of `store`");
}

#[test]
fn a_wrong_type_is_named_with_its_key_and_line() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "plan: delivery\nexecution_mode: sideways\n");
    ws.run(&["roadmap"])
        .code(2)
        .stderr_has("nova.yaml:2:")
        .stderr_has("field `execution_mode`")
        .stderr_has("sideways");
    ws.write("nova.yaml", "phases: 3\n");
    ws.run(&["plan"])
        .code(2)
        .stderr_has("nova.yaml:1:")
        .stderr_has("field `phases`");
}

#[test]
fn an_empty_nova_yaml_is_fine_and_an_unknown_default_plan_is_not() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "# nothing yet\n");
    ws.run(&["plan"]).success();
    ws.write("nova.yaml", "plan: lunar\n");
    ws.run(&["plan"])
        .code(2)
        .stderr_has("nova.yaml:1: field `plan`: unknown plan `lunar`");
}

#[test]
fn the_default_plan_comes_from_nova_yaml() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "plan: delivery\n");
    assert_eq!(
        ws.run(&["plan", "--json"]).success().json()["plan"],
        "delivery"
    );
    assert_eq!(
        ws.run(&["roadmap", "--json"]).success().json()["plan"],
        "delivery"
    );
}

#[test]
fn workspace_phases_and_plans() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "phases:\n  - name: prepare\n    goal: Get ready\n  - name: ship\n    goal: Ship it\nplans:\n  - name: nightly\n    description: Nightly jobs\n    phases:\n      - name: sweep\n",
    );
    ws.write("blueprints/prep.yaml", "name: prep\nrole: prep\nphase: prepare\ntasks:\n  - id: t\n    title: T\n    check: [\"true\"]\n");
    ws.write("blueprints/shipper.yaml", "name: shipper\nrole: shipping\nphase: ship\ndepends_on: [prep]\ntasks:\n  - id: t\n    title: T\n    check: [\"true\"]\n");
    ws.write("blueprints/sweeper.yaml", "name: sweeper\nrole: sweeping\nplan: nightly\nphase: sweep\ntasks:\n  - id: t\n    title: T\n    check: [\"true\"]\n");
    let json = ws
        .run(&["plan", "--plan", "workspace", "--json"])
        .success()
        .json();
    assert_eq!(json["phases"][0]["goal"], "Get ready");
    assert_eq!(json["phases"][1]["agents"][0]["name"], "shipper");
    let nightly = ws
        .run(&["plan", "--agents", "sweeper", "--json"])
        .success()
        .json();
    assert_eq!(nightly["plan"], "nightly");

    ws.write(
        "blueprints/lost.yaml",
        "name: lost\nrole: r\nphase: build\n",
    );
    ws.run(&["blueprints", "validate"])
        .code(2)
        .stderr_has("unknown phase `build` for plan `workspace`; its phases are: prepare, ship");
}

#[test]
fn duplicate_phases_in_nova_yaml_are_an_error() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "plans:\n  - name: twice\n    phases:\n      - name: a\n      - name: a\n",
    );
    ws.run(&["plan"])
        .code(2)
        .stderr_has("phase `a` appears twice in plan `twice`");
}
