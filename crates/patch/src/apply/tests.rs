use serde_json::{Value, json};

use super::*;
use crate::testdoc::deployment_schema;

const T1: &str = "2024-05-01T10:00:00Z";
const T2: &str = "2024-05-01T11:00:00Z";
const T3: &str = "2024-05-01T12:00:00Z";

fn apply_opts<'a>(manager: &'a str, now: &'a str, force: bool) -> ApplyOptions<'a> {
    ApplyOptions {
        manager,
        api_version: "apps/v1",
        kind: "Deployment",
        subresource: "",
        force,
        now,
        reset_fields: None,
    }
}

fn update_opts<'a>(manager: &'a str, now: &'a str) -> UpdateOptions<'a> {
    UpdateOptions {
        manager,
        api_version: "apps/v1",
        subresource: "",
        now,
        reset_fields: None,
    }
}

fn apply(live: Option<&Value>, config: Value, manager: &str, now: &str) -> Value {
    match server_side_apply(
        live,
        &config,
        &deployment_schema(),
        &apply_opts(manager, now, false),
    ) {
        Ok(v) => v,
        Err(e) => panic!("apply failed: {e}"),
    }
}

fn apply_err(live: &Value, config: Value, manager: &str) -> ApplyError {
    match server_side_apply(
        Some(live),
        &config,
        &deployment_schema(),
        &apply_opts(manager, T2, false),
    ) {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e,
    }
}

fn update(old: Option<&Value>, new: &Value, manager: &str, now: &str) -> Value {
    record_update(old, new, &deployment_schema(), &update_opts(manager, now))
}

fn config(replicas: i64, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        }
    })
}

fn basic_config() -> Value {
    config(
        3,
        json!({"app": "web"}),
        json!([{"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]),
    )
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

fn owned(obj: &Value, manager: &str, operation: &str) -> FieldSet {
    entry(obj, manager, operation)
        .map(|e| FieldSet::from_fields_v1(&e["fieldsV1"]).unwrap())
        .unwrap_or_default()
}

fn path(p: &[&str]) -> Vec<PathElement> {
    p.iter()
        .map(|s| PathElement::Field(s.to_string()))
        .collect()
}

fn container_key(name: &str) -> PathElement {
    PathElement::Key(vec![("name".into(), json!(name))])
}

fn containers_path(name: &str, rest: &[&str]) -> Vec<PathElement> {
    let mut p = path(&["spec", "template", "spec", "containers"]);
    p.push(container_key(name));
    p.extend(path(rest));
    p
}

fn without_managed(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(m)) = v.get_mut("metadata") {
        m.remove("managedFields");
    }
    v
}

// ---- field sets of applied configurations ------------------------------------------------

#[test]
fn applied_field_set_matches_kubernetes_shape() {
    let cfg = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {
                "containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 80}]}],
                "tolerations": [{"key": "k"}]
            }}
        }
    });
    let set = applied_field_set(&cfg, &deployment_schema()).unwrap();
    let wire = set.to_fields_v1();
    assert_eq!(
        wire,
        json!({
            "f:apiVersion": {},
            "f:kind": {},
            "f:metadata": {
                "f:finalizers": {"v:\"a\"": {}},
                "f:labels": {"f:app": {}},
                "f:name": {}
            },
            "f:spec": {
                "f:selector": {},
                "f:template": {"f:spec": {
                    "f:containers": {"k:{\"name\":\"app\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }},
                    "f:tolerations": {}
                }}
            }
        })
    );
}

#[test]
fn applied_field_set_owns_nulls_and_empty_maps() {
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"paused": null, "strategy": {}}});
    let set = applied_field_set(&cfg, &deployment_schema()).unwrap();
    assert!(set.has(&path(&["spec", "paused"])));
    assert!(set.has(&path(&["spec", "strategy"])));
}

#[test]
fn applied_field_set_without_schema_owns_every_map_key() {
    let set = applied_field_set(&json!({"a": {"b": 1}, "c": [1, 2]}), &crate::NoSchema).unwrap();
    assert!(set.has(&path(&["a"])));
    assert!(set.has(&path(&["a", "b"])));
    assert!(set.has(&path(&["c"])));
}

// ---- apply: create, re-apply, no-op ------------------------------------------------------

#[test]
fn apply_creates_object_and_records_owner() {
    let out = apply(None, basic_config(), "kubectl", T1);
    assert_eq!(without_managed(&out), basic_config());
    let es = entries(&out);
    assert_eq!(es.len(), 1);
    let e = &es[0];
    assert_eq!(e["manager"], "kubectl");
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["time"], T1);
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert!(e.get("subresource").is_none());
    // The entry has upstream's fields (JSON objects are unordered: maps serialize sorted).
    let mut keys: Vec<&String> = e
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.sort();
    assert_eq!(
        keys,
        [
            "apiVersion",
            "fieldsType",
            "fieldsV1",
            "manager",
            "operation",
            "time"
        ]
    );
    // Identity fields are not owned.
    let set = owned(&out, "kubectl", "Apply");
    assert!(!set.has(&path(&["apiVersion"])));
    assert!(!set.has(&path(&["metadata", "name"])));
    assert!(set.has(&path(&["metadata", "labels", "app"])));
    assert!(set.has(&path(&["spec", "replicas"])));
    assert!(set.has(&containers_path("app", &["image"])));
}

#[test]
fn reapplying_the_same_config_changes_nothing_not_even_the_time() {
    let live = apply(None, basic_config(), "kubectl", T1);
    let again = apply(Some(&live), basic_config(), "kubectl", T2);
    assert_eq!(again, live);
}

#[test]
fn apply_changes_fields_and_bumps_time() {
    let live = apply(None, basic_config(), "kubectl", T1);
    let out = apply(
        Some(&live),
        config(
            5,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "nginx:1.26", "ports": [{"containerPort": 80}]}]),
        ),
        "kubectl",
        T2,
    );
    assert_eq!(out["spec"]["replicas"], 5);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(entry(&out, "kubectl", "Apply").unwrap()["time"], T2);
}

#[test]
fn apply_keeps_fields_it_does_not_mention() {
    let mut live = apply(None, basic_config(), "kubectl", T1);
    live["spec"]["progressDeadlineSeconds"] = json!(600);
    live["status"] = json!({"replicas": 3});
    let out = apply(
        Some(&live),
        config(
            4,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]),
        ),
        "kubectl",
        T2,
    );
    assert_eq!(out["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(out["status"], json!({"replicas": 3}));
}

#[test]
fn explicit_null_in_config_removes_the_field() {
    let live = apply(None, basic_config(), "kubectl", T1);
    let mut cfg = basic_config();
    cfg["spec"]["replicas"] = Value::Null;
    let out = apply(Some(&live), cfg, "kubectl", T2);
    assert!(out["spec"].get("replicas").is_none());
}

// ---- conflicts -----------------------------------------------------------------------------

fn created_by_update() -> Value {
    let obj = config(
        1,
        json!({"app": "web"}),
        json!([{"name": "app", "image": "nginx:1.25"}]),
    );
    update(None, &obj, "kubectl-client-side-apply", T1)
}

#[test]
fn update_on_create_records_update_owner() {
    let out = created_by_update();
    let e = entry(&out, "kubectl-client-side-apply", "Update").expect("entry");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["time"], T1);
    let set = owned(&out, "kubectl-client-side-apply", "Update");
    assert!(set.has(&path(&["spec", "replicas"])));
    assert!(set.has(&path(&["metadata", "labels"])));
    assert!(set.has(&path(&["metadata", "labels", "app"])));
    assert!(!set.has(&path(&["metadata"])));
    assert!(!set.has(&path(&["kind"])));
}

#[test]
fn apply_conflicts_with_other_manager() {
    let live = created_by_update();
    let err = apply_err(
        &live,
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "nginx:1.25"}]),
        ),
        "kubectl",
    );
    assert_eq!(err.status_code(), 409);
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
    let ApplyError::Conflicts(cs) = err else {
        panic!("not a conflict")
    };
    assert_eq!(cs[0].manager, "kubectl-client-side-apply");
    assert_eq!(cs[0].field, ".spec.replicas");
    assert_eq!(
        cs[0].message(),
        "conflict with \"kubectl-client-side-apply\" using apps/v1"
    );
}

#[test]
fn several_conflicts_are_grouped_by_manager() {
    let live = created_by_update();
    let err = apply_err(
        &live,
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "nginx:2"}]),
        ),
        "kubectl",
    );
    assert_eq!(
        err.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n\
         - .spec.replicas\n\
         - .spec.template.spec.containers[name=\"app\"].image"
    );
}

#[test]
fn applying_the_same_value_shares_ownership() {
    let live = created_by_update();
    let out = apply(
        Some(&live),
        config(
            1,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "nginx:1.25"}]),
        ),
        "kubectl",
        T2,
    );
    assert!(owned(&out, "kubectl", "Apply").has(&path(&["spec", "replicas"])));
    assert!(owned(&out, "kubectl-client-side-apply", "Update").has(&path(&["spec", "replicas"])));
    assert_eq!(without_managed(&out), without_managed(&live));
}

#[test]
fn force_takes_ownership() {
    let live = created_by_update();
    let cfg = config(
        3,
        json!({"app": "web"}),
        json!([{"name": "app", "image": "nginx:1.25"}]),
    );
    let out = server_side_apply(
        Some(&live),
        &cfg,
        &deployment_schema(),
        &apply_opts("kubectl", T2, true),
    )
    .unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    assert!(owned(&out, "kubectl", "Apply").has(&path(&["spec", "replicas"])));
    let other = owned(&out, "kubectl-client-side-apply", "Update");
    assert!(!other.has(&path(&["spec", "replicas"])));
    assert!(other.has(&containers_path("app", &["image"])));
}

#[test]
fn conflicts_between_two_appliers() {
    let live = apply(None, basic_config(), "alice", T1);
    let mut cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 9}});
    let err = apply_err(&live, cfg.clone(), "bob");
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    cfg["spec"]["replicas"] = json!(3);
    let out = apply(Some(&live), cfg, "bob", T2);
    assert!(owned(&out, "bob", "Apply").has(&path(&["spec", "replicas"])));
    assert!(owned(&out, "alice", "Apply").has(&path(&["spec", "replicas"])));
}

// ---- pruning of fields no longer applied ---------------------------------------------------

#[test]
fn fields_no_longer_applied_are_removed() {
    let live = apply(
        None,
        config(
            3,
            json!({"app": "web", "tier": "fe"}),
            json!([{"name": "app", "image": "x"}, {"name": "side", "image": "y"}]),
        ),
        "kubectl",
        T1,
    );
    let out = apply(
        Some(&live),
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T2,
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "app", "image": "x"}])
    );
    let set = owned(&out, "kubectl", "Apply");
    assert!(!set.has(&path(&["metadata", "labels", "tier"])));
    assert!(!set.has(&containers_path("side", &[])));
}

#[test]
fn fields_owned_by_someone_else_survive_pruning() {
    let live = apply(
        None,
        config(
            3,
            json!({"app": "web", "tier": "fe"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T1,
    );
    // A controller also sets the label (same value: shared ownership).
    let mut touched = live.clone();
    touched["metadata"]["labels"]["tier"] = json!("fe");
    touched["metadata"]["annotations"] = json!({"seen": "yes"});
    let live = update(Some(&live), &touched, "controller", T2);
    let ctl = owned(&live, "controller", "Update");
    assert!(ctl.has(&path(&["metadata", "annotations", "seen"])));
    // The label was unchanged by the controller, so it does not own it: pruning removes it.
    let out = apply(
        Some(&live),
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T3,
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(out["metadata"]["annotations"], json!({"seen": "yes"}));

    // Now the controller changes the label: it owns it, and it survives kubectl dropping it.
    let live = apply(
        None,
        config(
            3,
            json!({"app": "web", "tier": "fe"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T1,
    );
    let mut touched = live.clone();
    touched["metadata"]["labels"]["tier"] = json!("be");
    let live = update(Some(&live), &touched, "controller", T2);
    assert!(!owned(&live, "kubectl", "Apply").has(&path(&["metadata", "labels", "tier"])));
    let out = apply(
        Some(&live),
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T3,
    );
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "tier": "be"})
    );
}

#[test]
fn other_appliers_list_items_are_kept() {
    let live = apply(None, basic_config(), "alice", T1);
    let bob_cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy"}]}}}});
    let live = apply(Some(&live), bob_cfg, "bob", T2);
    let names: Vec<&str> = live["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["app", "sidecar"]);
    assert!(owned(&live, "bob", "Apply").has(&containers_path("sidecar", &["image"])));
    // Alice drops her container list entirely: only her container goes.
    let alice = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    let out = apply(Some(&live), alice, "alice", T3);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "sidecar", "image": "envoy"}])
    );
    assert_eq!(out["spec"]["replicas"], 3);
    assert!(out["spec"].get("selector").is_none());
}

#[test]
fn unowned_defaulted_fields_survive_pruning() {
    let mut live = apply(
        None,
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "x", "args": ["a"]}]),
        ),
        "kubectl",
        T1,
    );
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
    live["spec"]["revisionHistoryLimit"] = json!(10);
    let out = apply(
        Some(&live),
        config(
            3,
            json!({"app": "web"}),
            json!([{"name": "app", "image": "x"}]),
        ),
        "kubectl",
        T2,
    );
    let c = &out["spec"]["template"]["spec"]["containers"][0];
    assert!(c.get("args").is_none());
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(out["spec"]["revisionHistoryLimit"], 10);
}

// ---- list semantics ------------------------------------------------------------------------

#[test]
fn keyed_lists_merge_and_keep_live_only_items_in_place() {
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "uid": "u"},
        "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}}});
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "c"}, {"name": "new"}]}}}});
    let out = apply(Some(&live), cfg, "m", T1);
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["a", "b", "c", "new"]);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][2],
        json!({"name": "c", "image": "c"})
    );
}

#[test]
fn applied_order_wins_for_applied_items() {
    let live = apply(
        None,
        config(
            1,
            json!({"app": "web"}),
            json!([{"name": "a"}, {"name": "b"}]),
        ),
        "m",
        T1,
    );
    let out = apply(
        Some(&live),
        config(
            1,
            json!({"app": "web"}),
            json!([{"name": "b"}, {"name": "a"}]),
        ),
        "m",
        T2,
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "b"}, {"name": "a"}])
    );
}

#[test]
fn set_lists_union_and_atomic_lists_replace() {
    let mut live = apply(None, basic_config(), "m", T1);
    live["metadata"]["finalizers"] = json!(["x"]);
    live["spec"]["template"]["spec"]["tolerations"] = json!([{"key": "a"}, {"key": "b"}]);
    let mut cfg = basic_config();
    cfg["metadata"]["finalizers"] = json!(["y"]);
    cfg["spec"]["template"]["spec"]["tolerations"] = json!([{"key": "c"}]);
    let out = apply(Some(&live), cfg, "m", T2);
    assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "c"}])
    );
    let set = owned(&out, "m", "Apply");
    assert!(
        set.has(
            &[
                path(&["metadata", "finalizers"]),
                vec![PathElement::Value(json!("y"))]
            ]
            .concat()
        )
    );
    assert!(set.has(&path(&["spec", "template", "spec", "tolerations"])));
}

#[test]
fn atomic_maps_are_replaced_whole() {
    let mut live = apply(None, basic_config(), "m", T1);
    live["spec"]["selector"]["matchLabels"]["extra"] = json!("x");
    let mut cfg = basic_config();
    cfg["spec"]["selector"] = json!({"matchLabels": {"app": "web2"}});
    let out = apply(Some(&live), cfg, "m", T2);
    assert_eq!(
        out["spec"]["selector"],
        json!({"matchLabels": {"app": "web2"}})
    );
}

#[test]
fn list_map_keys_use_schema_defaults() {
    let mut live = apply(None, basic_config(), "m", T1);
    live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
    let mut cfg = basic_config();
    cfg["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = json!("http");
    let out = apply(Some(&live), cfg, "m", T2);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}])
    );
}

// ---- invalid requests ----------------------------------------------------------------------

#[test]
fn config_list_items_must_carry_their_keys() {
    let cfg = config(1, json!({}), json!([{"image": "x"}]));
    let err = server_side_apply(
        None,
        &cfg,
        &deployment_schema(),
        &apply_opts("m", T1, false),
    )
    .unwrap_err();
    assert_eq!(err.status_code(), 500);
    assert_eq!(
        err.to_string(),
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .spec.template.spec.containers: element 0: associative list with keys has an element that omits all key fields [\"name\"] (and doesn't have default values for any key fields)"
    );
}

#[test]
fn config_list_items_must_be_unique() {
    let cfg = config(1, json!({}), json!([{"name": "a"}, {"name": "a"}]));
    let err = server_side_apply(
        None,
        &cfg,
        &deployment_schema(),
        &apply_opts("m", T1, false),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(".spec.template.spec.containers: duplicate entries for key [name=\"a\"]"),
        "{err}"
    );
}

#[test]
fn config_must_not_carry_managed_fields_and_must_match_the_type() {
    let mut cfg = basic_config();
    cfg["metadata"]["managedFields"] = json!([]);
    let err = server_side_apply(
        None,
        &cfg,
        &deployment_schema(),
        &apply_opts("m", T1, false),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ApplyError::BadRequest("metadata.managedFields must be nil".into())
    );
    let mut cfg = basic_config();
    cfg["apiVersion"] = json!("apps/v1beta1");
    let err = server_side_apply(
        None,
        &cfg,
        &deployment_schema(),
        &apply_opts("m", T1, false),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid object type: apps/v1beta1, Kind=Deployment"
    );
    assert_eq!(err.status_code(), 400);
    let err = server_side_apply(
        None,
        &json!([1]),
        &deployment_schema(),
        &apply_opts("m", T1, false),
    )
    .unwrap_err();
    assert_eq!(err.status_code(), 400);
}

#[test]
fn corrupt_live_managed_fields_fail_apply() {
    let mut live = apply(None, basic_config(), "m", T1);
    live["metadata"]["managedFields"][0]["operation"] = json!("Frob");
    let err = apply_err(&live, basic_config(), "m");
    assert_eq!(
        err.to_string(),
        "failed to decode managed fields: operation must be `Apply` or `Update`"
    );
}

// ---- first apply to an untracked object ---------------------------------------------------

#[test]
fn first_apply_to_untracked_object_credits_before_first_apply() {
    let mut live = config(
        1,
        json!({"app": "web"}),
        json!([{"name": "app", "image": "old"}]),
    );
    live["metadata"]["uid"] = json!("u1");
    let err = apply_err(&live, basic_config(), "kubectl");
    let ApplyError::Conflicts(cs) = err else {
        panic!("expected conflicts")
    };
    assert!(cs.iter().all(|c| c.manager == "before-first-apply"));
    let out = server_side_apply(
        Some(&live),
        &basic_config(),
        &deployment_schema(),
        &apply_opts("kubectl", T2, true),
    )
    .unwrap();
    let before = entry(&out, "before-first-apply", "Update").expect("before-first-apply entry");
    assert_eq!(before["apiVersion"], "apps/v1");
    assert!(owned(&out, "before-first-apply", "Update").has(&path(&["spec", "selector"])));
    assert!(!owned(&out, "before-first-apply", "Update").has(&path(&["spec", "replicas"])));
}

// ---- record_update -------------------------------------------------------------------------

#[test]
fn update_transfers_changed_fields() {
    let live = apply(None, basic_config(), "kubectl", T1);
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(7);
    let out = update(Some(&live), &new, "kube-controller-manager", T2);
    assert_eq!(out["spec"]["replicas"], 7);
    let ctl = owned(&out, "kube-controller-manager", "Update");
    assert_eq!(
        ctl,
        FieldSet::from_paths([&path(&["spec", "replicas"])[..]])
    );
    assert!(!owned(&out, "kubectl", "Apply").has(&path(&["spec", "replicas"])));
    assert_eq!(
        entry(&out, "kube-controller-manager", "Update").unwrap()["time"],
        T2
    );
    // Sorted: Apply entries first.
    let ops: Vec<String> = entries(&out)
        .iter()
        .map(|e| e["operation"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ops, ["Apply", "Update"]);
}

#[test]
fn update_that_changes_nothing_keeps_entries() {
    let live = created_by_update();
    let out = update(Some(&live), &live, "someone", T2);
    assert_eq!(out, live);
}

#[test]
fn repeated_updates_by_one_manager_accumulate() {
    let live = created_by_update();
    let mut new = live.clone();
    new["metadata"]["annotations"] = json!({"a": "1"});
    let live = update(Some(&live), &new, "ctl", T2);
    let mut new = live.clone();
    new["spec"]["paused"] = json!(true);
    let live = update(Some(&live), &new, "ctl", T3);
    let set = owned(&live, "ctl", "Update");
    assert!(set.has(&path(&["metadata", "annotations", "a"])));
    assert!(set.has(&path(&["spec", "paused"])));
    assert_eq!(entry(&live, "ctl", "Update").unwrap()["time"], T3);
}

#[test]
fn update_removing_fields_removes_them_from_owners() {
    let live = created_by_update();
    let mut new = live.clone();
    new["metadata"].as_object_mut().map(|m| m.remove("labels"));
    let out = update(Some(&live), &new, "ctl", T2);
    let other = owned(&out, "kubectl-client-side-apply", "Update");
    assert!(!other.has(&path(&["metadata", "labels", "app"])));
    assert!(entry(&out, "ctl", "Update").is_none());
}

#[test]
fn updates_with_another_version_are_separate_owners() {
    let live = created_by_update();
    let mut new = live.clone();
    new["spec"]["paused"] = json!(true);
    let opts = UpdateOptions {
        api_version: "apps/v1beta2",
        ..update_opts("kubectl-client-side-apply", T2)
    };
    let out = record_update(Some(&live), &new, &deployment_schema(), &opts);
    let versions: Vec<String> = entries(&out)
        .iter()
        .filter_map(|e| e["apiVersion"].as_str().map(String::from))
        .collect();
    assert_eq!(versions, ["apps/v1", "apps/v1beta2"]);
}

#[test]
fn untracked_objects_stay_untracked_on_update() {
    let mut live = config(1, json!({}), json!([]));
    live["metadata"]["uid"] = json!("u1");
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(2);
    let out = update(Some(&live), &new, "ctl", T2);
    assert!(out["metadata"].get("managedFields").is_none());
    assert_eq!(out["spec"]["replicas"], 2);
}

#[test]
fn client_can_reset_or_replace_managed_fields() {
    let live = created_by_update();
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([]);
    let out = update(Some(&live), &new, "ctl", T2);
    assert!(out["metadata"].get("managedFields").is_none());

    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{"manager": "custom", "operation": "Apply", "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
    let out = update(Some(&live), &new, "ctl", T2);
    let es = entries(&out);
    assert_eq!(es.len(), 1);
    assert_eq!(es[0]["manager"], "custom");

    // Undecodable managedFields in the request fall back to the stored ones.
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Bogus"}]);
    let out = update(Some(&live), &new, "ctl", T2);
    assert_eq!(entries(&out), entries(&live));
}

#[test]
fn subresource_updates_ignore_request_managed_fields_and_honour_reset_fields() {
    let live = created_by_update();
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([]);
    new["status"] = json!({"replicas": 1});
    new["spec"]["replicas"] = json!(9);
    let reset = FieldSet::from_paths([&path(&["spec"])[..]]);
    let opts = UpdateOptions {
        subresource: "status",
        reset_fields: Some(&reset),
        ..update_opts("kubelet", T2)
    };
    let out = record_update(Some(&live), &new, &deployment_schema(), &opts);
    let e = entry(&out, "kubelet", "Update").expect("status owner");
    assert_eq!(e["subresource"], "status");
    let set = owned(&out, "kubelet", "Update");
    assert!(set.has(&path(&["status", "replicas"])));
    assert!(!set.has(&path(&["spec", "replicas"])));
    // The spec owner keeps its field: the status endpoint resets spec changes.
    assert!(owned(&out, "kubectl-client-side-apply", "Update").has(&path(&["spec", "replicas"])));
}

#[test]
fn update_managers_are_capped() {
    let mut live = created_by_update();
    for i in 0..12 {
        let mut new = live.clone();
        new["metadata"]["labels"][format!("l{i}")] = json!("x");
        let now = format!("2024-05-02T00:00:{i:02}Z");
        live = update(Some(&live), &new, &format!("ctl-{i:02}"), &now);
    }
    // Each time an eleventh updater appears the oldest ones fold into the bucket (which keeps
    // the time of its newest member, so it stays the oldest).
    let updaters = entries(&live)
        .iter()
        .filter(|e| e["operation"] == "Update")
        .count();
    assert_eq!(updaters, 10);
    let bucket = owned(&live, "ancient-changes", "Update");
    assert!(bucket.has(&path(&["spec", "replicas"])));
    assert!(bucket.has(&path(&["metadata", "labels", "l1"])));
    assert!(bucket.has(&path(&["metadata", "labels", "l2"])));
    assert!(entry(&live, "ctl-02", "Update").is_none());
    assert!(entry(&live, "ctl-03", "Update").is_some());
}

// ---- kubectl's last-applied annotation ---------------------------------------------------

#[test]
fn kubectl_server_side_after_client_side_apply() {
    let cfg = basic_config();
    let mut annotated = cfg.clone();
    let mut last = String::new();
    fieldpath::write_go_json(&cfg, true, &mut last);
    annotated["metadata"]["annotations"] = json!({LAST_APPLIED_ANNOTATION: last});
    let live = update(None, &annotated, "kubectl-client-side-apply", T1);

    // Same values as last applied: kubectl may take them over without force.
    let mut next = cfg.clone();
    next["spec"]["replicas"] = json!(4);
    let out = apply(Some(&live), next, "kubectl", T2);
    assert_eq!(out["spec"]["replicas"], 4);
    let annotation = out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
        .as_str()
        .unwrap_or("");
    assert!(annotation.ends_with('\n'));
    let parsed: Value = serde_json::from_str(annotation).unwrap();
    assert_eq!(parsed["spec"]["replicas"], 4);

    // A field changed since the last client-side apply still conflicts.
    let mut drifted = live.clone();
    drifted["spec"]["replicas"] = json!(2);
    let drifted = update(Some(&live), &drifted, "hpa", T2);
    let mut next = cfg.clone();
    next["spec"]["replicas"] = json!(4);
    let err = apply_err(&drifted, next, "kubectl");
    let ApplyError::Conflicts(cs) = err else {
        panic!("expected a conflict")
    };
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].manager, "hpa");
}

// ---- status subresource apply ------------------------------------------------------------

#[test]
fn apply_to_status_subresource_records_subresource() {
    let live = apply(None, basic_config(), "kubectl", T1);
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "status": {"replicas": 3}});
    let reset = FieldSet::from_paths([&path(&["spec"])[..], &path(&["metadata", "labels"])]);
    let opts = ApplyOptions {
        subresource: "status",
        reset_fields: Some(&reset),
        ..apply_opts("ctl", T2, false)
    };
    let out = server_side_apply(Some(&live), &cfg, &deployment_schema(), &opts).unwrap();
    assert_eq!(out["status"]["replicas"], 3);
    let e = entry(&out, "ctl", "Apply").expect("entry");
    assert_eq!(e["subresource"], "status");
}

/// What the server would write if it encoded every entry afresh.
fn reencoded(obj: &Value) -> Value {
    let managed = managed::decode(obj, managed::Source::Request).expect("decodable");
    let mut out = obj.clone();
    managed::encode_into(&mut out, managed);
    out
}

#[test]
fn entries_written_back_verbatim_match_a_fresh_encoding() {
    let live = created_by_update();
    // Another manager takes a field (the creator's entry shrinks), then rewrites only what it
    // owns (no entry changes), then a status write adds an owner.
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(5);
    let taken = update(Some(&live), &new, "scaler", T2);
    assert_eq!(taken, reencoded(&taken));
    assert!(!owned(&taken, "kubectl-client-side-apply", "Update").has(&path(&["spec", "replicas"])));

    let mut new = taken.clone();
    new["spec"]["replicas"] = json!(6);
    let rewritten = update(Some(&taken), &new, "scaler", T3);
    assert_eq!(rewritten, reencoded(&rewritten));
    assert_eq!(entries(&rewritten).len(), entries(&taken).len());

    let mut new = rewritten.clone();
    new["status"] = json!({"replicas": 6});
    let opts = UpdateOptions { subresource: "status", ..update_opts("kubelet", T3) };
    let status = record_update(Some(&rewritten), &new, &deployment_schema(), &opts);
    assert_eq!(status, reencoded(&status));
    assert!(owned(&status, "kubelet", "Update").has(&path(&["status", "replicas"])));
}
