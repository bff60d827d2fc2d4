use serde_json::{Value, json};

use super::strategic_merge_patch;
use crate::error::PatchError;
use crate::schema::NoSchema;
use crate::testdoc::{deployment, deployment_schema};

fn smp(original: &Value, patch: Value) -> Result<Value, PatchError> {
    strategic_merge_patch(original, &patch, &deployment_schema())
}

fn ok(original: &Value, patch: Value) -> Value {
    match smp(original, patch) {
        Ok(v) => v,
        Err(e) => panic!("patch failed: {e}"),
    }
}

fn err(original: &Value, patch: Value) -> PatchError {
    match smp(original, patch) {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e,
    }
}

fn containers(v: &Value) -> &Value {
    &v["spec"]["template"]["spec"]["containers"]
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|i| i["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_spec_patch(spec: Value) -> Value {
    json!({"spec": {"template": {"spec": spec}}})
}

// ---- maps -------------------------------------------------------------------------------

#[test]
fn maps_merge_recursively() {
    let out = ok(
        &deployment(),
        json!({"metadata": {"labels": {"env": "prod"}}, "spec": {"replicas": 5}}),
    );
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "tier": "frontend", "env": "prod"})
    );
    assert_eq!(out["metadata"]["annotations"], json!({"owner": "team-a"}));
    assert_eq!(out["spec"]["replicas"], 5);
    assert_eq!(out["spec"]["template"], deployment()["spec"]["template"]);
}

#[test]
fn null_deletes_label_and_annotation() {
    let out = ok(
        &deployment(),
        json!({"metadata": {"labels": {"tier": null}, "annotations": {"owner": null, "new": "x"}}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(out["metadata"]["annotations"], json!({"new": "x"}));
}

#[test]
fn null_for_absent_key_is_dropped() {
    let out = ok(&deployment(), json!({"spec": {"paused": null}}));
    assert!(out["spec"].get("paused").is_none());
}

#[test]
fn null_deletes_whole_subtree() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": null}, "metadata": {"annotations": null}}),
    );
    assert!(out["spec"].get("strategy").is_none());
    assert!(out["metadata"].get("annotations").is_none());
}

#[test]
fn nulls_inside_new_subtree_are_dropped() {
    let out = ok(
        &deployment(),
        json!({"spec": {"newMap": {"a": null, "b": {"c": null, "d": 1}}}}),
    );
    assert_eq!(out["spec"]["newMap"], json!({"b": {"d": 1}}));
}

#[test]
fn kind_change_takes_patch_value() {
    let out = ok(
        &deployment(),
        json!({"spec": {"replicas": {"weird": true}, "selector": "x"}}),
    );
    assert_eq!(out["spec"]["replicas"], json!({"weird": true}));
    assert_eq!(out["spec"]["selector"], "x");
}

#[test]
fn empty_patch_and_null_patch_are_noops() {
    assert_eq!(ok(&deployment(), json!({})), deployment());
    assert_eq!(ok(&deployment(), Value::Null), deployment());
}

#[test]
fn patch_that_is_not_an_object_is_rejected() {
    for (patch, kind) in [
        (json!([1]), "array"),
        (json!("x"), "string"),
        (json!(3), "number"),
        (json!(true), "bool"),
    ] {
        let e = err(&deployment(), patch);
        assert_eq!(e, PatchError::NotAnObject { found: kind });
        assert_eq!(e.status_code(), 400);
    }
    assert_eq!(
        err(&deployment(), json!([])).to_string(),
        "json: cannot unmarshal array into Go value of type map[string]interface {}"
    );
}

#[test]
fn original_that_is_not_an_object_is_rejected() {
    assert_eq!(smp(&json!([1]), json!({})), Err(PatchError::BadJsonDoc));
    assert_eq!(smp(&Value::Null, json!({"a": 1})), Ok(json!({"a": 1})));
}

#[test]
fn patch_strategy_replace_on_map_replaces() {
    let original =
        json!({"spec": {"replacedStrategy": {"type": "A", "rollingUpdate": {"maxSurge": "1"}}}});
    let out = ok(
        &original,
        json!({"spec": {"replacedStrategy": {"type": "B"}}}),
    );
    assert_eq!(out["spec"]["replacedStrategy"], json!({"type": "B"}));
}

// ---- lists without a merge strategy -------------------------------------------------------

#[test]
fn list_without_strategy_is_replaced() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"tolerations": [{"key": "b", "operator": "Equal"}]})),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "b", "operator": "Equal"}])
    );
}

#[test]
fn primitive_list_without_strategy_is_replaced() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "app", "args": ["--verbose"]}]})),
    );
    assert_eq!(containers(&out)[0]["args"], json!(["--verbose"]));
    assert_eq!(containers(&out)[0]["image"], "nginx:1.25");
}

#[test]
fn replaced_list_drops_directive_keys_and_nulls_from_elements() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"tolerations": [{"key": "b", "effect": null, "$retainKeys": ["key"]}]}),
        ),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "b"}])
    );
}

#[test]
fn without_schema_every_list_is_replaced() {
    let patch = pod_spec_patch(json!({"containers": [{"name": "app", "image": "nginx:2"}]}));
    let out = strategic_merge_patch(&deployment(), &patch, &NoSchema).unwrap();
    assert_eq!(
        containers(&out),
        &json!([{"name": "app", "image": "nginx:2"}])
    );
}

#[test]
fn without_schema_maps_still_merge() {
    let out = strategic_merge_patch(
        &deployment(),
        &json!({"metadata": {"labels": {"x": "y"}}}),
        &NoSchema,
    )
    .unwrap();
    assert_eq!(out["metadata"]["labels"]["app"], "web");
    assert_eq!(out["metadata"]["labels"]["x"], "y");
}

// ---- lists of maps merged by key ----------------------------------------------------------

#[test]
fn containers_merge_by_name() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "sidecar", "image": "envoy:1.31"}]})),
    );
    let c = containers(&out);
    assert_eq!(names(c), ["app", "sidecar"]);
    assert_eq!(c[1], json!({"name": "sidecar", "image": "envoy:1.31"}));
    assert_eq!(c[0], containers(&deployment())[0]);
}

#[test]
fn new_container_goes_before_live_only_items() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "log", "image": "busybox"}]})),
    );
    assert_eq!(names(containers(&out)), ["log", "app", "sidecar"]);
    assert_eq!(
        containers(&out)[0],
        json!({"name": "log", "image": "busybox"})
    );
}

#[test]
fn patch_order_wins_for_patched_items() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "sidecar", "image": "s"}, {"name": "app", "image": "a"}]}),
        ),
    );
    assert_eq!(names(containers(&out)), ["sidecar", "app"]);
}

#[test]
fn live_only_items_keep_their_place_before_later_patched_items() {
    // Live [a, b, c]; patch touches c then a: b is live-only and came before c live, so it stays
    // ahead of c; a follows c as the patch says.
    let original = pod_spec_patch(
        json!({"containers": [{"name": "a"}, {"name": "b", "image": "b"}, {"name": "c"}]}),
    );
    let out = ok(
        &original,
        pod_spec_patch(
            json!({"containers": [{"name": "c", "image": "c"}, {"name": "a", "image": "a"}]}),
        ),
    );
    assert_eq!(names(containers(&out)), ["b", "c", "a"]);
    assert_eq!(containers(&out)[1], json!({"name": "c", "image": "c"}));
}

#[test]
fn env_merges_by_name_inside_container() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "env": [{"name": "DEBUG", "value": "1"}, {"name": "NEW", "value": "x"}]}]}),
        ),
    );
    let env = &containers(&out)[0]["env"];
    assert_eq!(
        env,
        &json!([{"name": "MODE", "value": "prod"}, {"name": "DEBUG", "value": "1"}, {"name": "NEW", "value": "x"}])
    );
}

#[test]
fn env_value_replaced_by_value_from() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "app", "env": [
            {"name": "MODE", "value": null, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
        ]}]})),
    );
    assert_eq!(
        containers(&out)[0]["env"][0],
        json!({"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}})
    );
}

#[test]
fn ports_merge_by_numeric_container_port() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}, {"containerPort": 443}]}]}),
        ),
    );
    assert_eq!(
        containers(&out)[0]["ports"],
        json!([
            {"containerPort": 8080, "protocol": "TCP"},
            {"containerPort": 9090, "protocol": "TCP", "name": "metrics"},
            {"containerPort": 443}
        ])
    );
}

#[test]
fn merge_key_numbers_compare_by_value() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "ports": [{"containerPort": 8080.0, "name": "http"}]}]}),
        ),
    );
    assert_eq!(containers(&out)[0]["ports"][0]["name"], "http");
    assert_eq!(
        containers(&out)[0]["ports"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn nested_merge_lists_merge() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "volumeMounts": [{"mountPath": "/data", "name": "data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]}),
        ),
    );
    assert_eq!(
        containers(&out)[0]["volumeMounts"],
        json!([{"mountPath": "/data", "name": "data"}, {"mountPath": "/etc/conf", "name": "conf"}])
    );
    assert_eq!(
        names(&out["spec"]["template"]["spec"]["volumes"]),
        ["data", "conf"]
    );
}

#[test]
fn new_list_is_taken_when_original_lacks_it() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"initContainers": [{"name": "init", "image": "busybox", "args": null}]}),
        ),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["initContainers"],
        json!([{"name": "init", "image": "busybox"}])
    );
}

#[test]
fn new_list_drops_directive_elements() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"initContainers": [{"name": "init"}, {"name": "gone", "$patch": "delete"}]}),
        ),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["initContainers"],
        json!([{"name": "init"}])
    );
}

#[test]
fn new_container_with_nested_directives_is_stored_clean() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "new", "image": null, "env": [{"name": "A", "value": "1"}],
            "$setElementOrder/env": [{"name": "A"}]}]}),
        ),
    );
    assert_eq!(
        containers(&out)[0],
        json!({"name": "new", "env": [{"name": "A", "value": "1"}]})
    );
}

#[test]
fn merging_empty_lists() {
    let original = pod_spec_patch(json!({"containers": []}));
    assert_eq!(
        ok(&original, pod_spec_patch(json!({"containers": []}))),
        original
    );
    let out = ok(
        &original,
        pod_spec_patch(json!({"containers": [{"name": "a"}]})),
    );
    assert_eq!(containers(&out), &json!([{"name": "a"}]));
}

#[test]
fn missing_merge_key_in_patch_is_an_error() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"image": "nginx:2"}]})),
    );
    assert_eq!(
        e.to_string(),
        "map: map[image:nginx:2] does not contain declared merge key: name"
    );
    assert_eq!(e.status_code(), 500);
}

#[test]
fn missing_merge_key_in_live_list_is_an_error() {
    let original = pod_spec_patch(json!({"containers": [{"image": "orphan"}]}));
    let e = err(
        &original,
        pod_spec_patch(json!({"containers": [{"name": "a"}]})),
    );
    assert!(matches!(e, PatchError::NoMergeKey { .. }), "{e}");
}

#[test]
fn merge_strategy_without_merge_key_on_maps_is_an_error() {
    let original = json!({"spec": {"keylessMergeList": [{"key": "a"}]}});
    let e = err(
        &original,
        json!({"spec": {"keylessMergeList": [{"key": "b"}]}}),
    );
    assert_eq!(
        e.to_string(),
        "cannot merge lists without merge key for keylessMergeList"
    );
}

#[test]
fn list_of_lists_is_rejected_when_merging() {
    let original = json!({"metadata": {"finalizers": [["a"]]}});
    let e = err(&original, json!({"metadata": {"finalizers": [["b"]]}}));
    assert_eq!(e, PatchError::NoListOfLists);
    assert_eq!(e.status_code(), 422);
}

#[test]
fn mixed_element_kinds_are_rejected_when_merging() {
    let e = err(&deployment(), json!({"metadata": {"finalizers": [1]}}));
    assert_eq!(
        e.to_string(),
        "list element types are not identical: [[example.com/a example.com/b] [1]]"
    );
}

#[test]
fn element_that_is_not_a_map_in_list_of_maps_is_rejected() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"containers": ["app"]})),
    );
    assert!(matches!(e, PatchError::MixedListElementTypes { .. }), "{e}");
}

#[test]
fn unexpected_patch_strategy_is_an_error() {
    let original = json!({"spec": {"weirdList": ["a"]}});
    let e = err(&original, json!({"spec": {"weirdList": ["b"]}}));
    assert_eq!(e.to_string(), "unexpected patch strategy: [merge replace]");
}

// ---- lists of primitives with strategy merge ---------------------------------------------

#[test]
fn finalizers_are_unioned() {
    let out = ok(
        &deployment(),
        json!({"metadata": {"finalizers": ["example.com/b", "example.com/c"]}}),
    );
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["example.com/a", "example.com/b", "example.com/c"])
    );
}

#[test]
fn new_finalizer_goes_first() {
    let out = ok(
        &deployment(),
        json!({"metadata": {"finalizers": ["example.com/c"]}}),
    );
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["example.com/c", "example.com/a", "example.com/b"])
    );
}

#[test]
fn primitive_merge_follows_patch_order() {
    let original = json!({"metadata": {"finalizers": ["1", "2", "3"]}});
    let out = ok(
        &original,
        json!({"metadata": {"finalizers": ["3", "1", "2"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["3", "1", "2"]));
    let out = ok(&original, json!({"metadata": {"finalizers": ["3", "1"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["2", "3", "1"]));
}

#[test]
fn primitive_merge_deduplicates() {
    let original = json!({"metadata": {"finalizers": ["a", "a", "b"]}});
    let out = ok(&original, json!({"metadata": {"finalizers": ["b", "b"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
}

#[test]
fn delete_from_primitive_list() {
    let original = json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}});
    let out = ok(
        &original,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zzz"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "c"]));
}

#[test]
fn delete_from_primitive_list_and_add_in_one_patch() {
    let original = json!({"metadata": {"finalizers": ["a", "b"]}});
    let out = ok(
        &original,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}}),
    );
    let got = out["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&json!("b")) && got.contains(&json!("c")));
}

#[test]
fn delete_from_primitive_list_works_on_lists_without_strategy() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "$deleteFromPrimitiveList/args": ["8080"]}]}),
        ),
    );
    assert_eq!(containers(&out)[0]["args"], json!(["--port"]));
}

#[test]
fn delete_from_missing_or_empty_list_changes_nothing() {
    let original = json!({"metadata": {"name": "x", "finalizers": []}});
    assert_eq!(
        ok(
            &original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
        ),
        original
    );
    let original = json!({"metadata": {"name": "x"}});
    assert_eq!(
        ok(
            &original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
        ),
        original
    );
    let original = json!({"metadata": {"finalizers": "not-a-list"}});
    assert_eq!(
        ok(
            &original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
        ),
        original
    );
}

#[test]
fn malformed_delete_from_primitive_list_key_is_an_error() {
    let e = err(
        &deployment(),
        json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}}),
    );
    assert_eq!(e, PatchError::BadPatchFormatForPrimitiveList);
    assert_eq!(e.status_code(), 400);
    let e = err(
        &deployment(),
        json!({"metadata": {"$deleteFromPrimitiveListX/finalizers": ["a"]}}),
    );
    assert_eq!(e, PatchError::BadPatchFormatForPrimitiveList);
}

// ---- $patch directives ---------------------------------------------------------------------

#[test]
fn patch_delete_removes_container() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "sidecar", "$patch": "delete"}]})),
    );
    assert_eq!(names(containers(&out)), ["app"]);
}

#[test]
fn patch_delete_removes_all_duplicates_and_ignores_missing() {
    let original = pod_spec_patch(
        json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "a", "image": "dup"}]}),
    );
    let out = ok(
        &original,
        pod_spec_patch(
            json!({"containers": [{"name": "a", "$patch": "delete"}, {"name": "zzz", "$patch": "delete"}]}),
        ),
    );
    assert_eq!(containers(&out), &json!([{"name": "b"}]));
}

#[test]
fn patch_delete_and_add_in_one_list() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "app", "$patch": "delete"}, {"name": "new", "image": "x"}]}),
        ),
    );
    assert_eq!(names(containers(&out)), ["new", "sidecar"]);
}

#[test]
fn patch_delete_element_without_merge_key_is_an_error() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"$patch": "delete"}]})),
    );
    assert_eq!(
        e.to_string(),
        "map: map[$patch:delete] does not contain declared merge key: name"
    );
}

#[test]
fn patch_replace_in_list_replaces_it() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}),
        ),
    );
    assert_eq!(containers(&out), &json!([{"name": "only", "image": "x"}]));
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"$patch": "replace"}]})),
    );
    assert_eq!(containers(&out), &json!([]));
}

#[test]
fn patch_merge_in_list_is_rejected() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "app", "$patch": "merge"}]})),
    );
    assert_eq!(e, PatchError::MergeDirectiveInList);
}

#[test]
fn unknown_patch_directive_in_list_is_rejected() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"containers": [{"name": "app", "$patch": "frob"}]})),
    );
    assert_eq!(
        e.to_string(),
        "unknown patch type: frob in map: map[$patch:frob name:app]"
    );
}

#[test]
fn patch_replace_on_map_replaces_it() {
    let out = ok(
        &deployment(),
        json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"app": "v2"}}}}),
    );
    assert_eq!(
        out["spec"]["selector"],
        json!({"matchLabels": {"app": "v2"}})
    );
    let out = ok(
        &deployment(),
        json!({"metadata": {"labels": {"$patch": "replace"}}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({}));
}

#[test]
fn patch_delete_on_map_empties_it() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}}),
    );
    assert_eq!(out["spec"]["strategy"]["rollingUpdate"], json!({}));
    assert_eq!(out["spec"]["strategy"]["type"], "RollingUpdate");
}

#[test]
fn patch_directive_on_map_new_to_object_is_dropped() {
    let out = ok(
        &deployment(),
        json!({"spec": {"newThing": {"$patch": "delete"}}}),
    );
    assert!(out["spec"].get("newThing").is_none());
}

#[test]
fn patch_merge_or_unknown_on_map_is_rejected() {
    let e = err(
        &deployment(),
        json!({"metadata": {"labels": {"$patch": "merge", "a": "b"}}}),
    );
    assert_eq!(
        e.to_string(),
        "unknown patch type: merge in map: map[$patch:merge a:b]"
    );
    let e = err(
        &deployment(),
        json!({"metadata": {"labels": {"$patch": 1}}}),
    );
    assert!(matches!(e, PatchError::BadPatchType { .. }));
}

#[test]
fn top_level_directives() {
    assert_eq!(ok(&deployment(), json!({"$patch": "delete"})), json!({}));
    assert_eq!(
        ok(&deployment(), json!({"$patch": "replace", "kind": "X"})),
        json!({"kind": "X"})
    );
}

// ---- $retainKeys ---------------------------------------------------------------------------

#[test]
fn retain_keys_clears_unlisted_fields() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_keeps_and_merges_listed_fields() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": ["type", "rollingUpdate"], "rollingUpdate": {"maxSurge": "50%"}}}}),
    );
    assert_eq!(
        out["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "25%"}})
    );
}

#[test]
fn retain_keys_strategy_without_directive_merges() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert_eq!(out["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(out["spec"]["strategy"]["type"], "Recreate");
}

#[test]
fn retain_keys_on_list_elements() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"volumes": [{"name": "conf", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}}]}),
        ),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "conf", "secret": {"secretName": "s"}}])
    );
}

#[test]
fn retain_keys_allows_nulls_for_unlisted_keys() {
    let out = ok(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_rejects_patch_keys_it_does_not_list() {
    let e = err(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": "1"}}}}),
    );
    assert_eq!(e, PatchError::BadPatchFormatForRetainKeys);
    assert_eq!(e.status_code(), 400);
}

#[test]
fn retain_keys_must_be_a_list() {
    let e = err(
        &deployment(),
        json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
    );
    assert_eq!(e, PatchError::BadPatchFormatForRetainKeys);
}

// ---- $setElementOrder ----------------------------------------------------------------------

#[test]
fn set_element_order_reorders_containers() {
    let out = ok(
        &deployment(),
        pod_spec_patch(
            json!({"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}),
        ),
    );
    assert_eq!(names(containers(&out)), ["sidecar", "app"]);
    assert_eq!(containers(&out)[1], containers(&deployment())[0]);
}

#[test]
fn set_element_order_with_additions_places_new_items() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({
            "$setElementOrder/containers": [{"name": "app"}, {"name": "log"}, {"name": "sidecar"}],
            "containers": [{"name": "log", "image": "busybox"}]
        })),
    );
    assert_eq!(names(containers(&out)), ["app", "log", "sidecar"]);
}

#[test]
fn set_element_order_keeps_server_only_items() {
    // Live [a, b, c, d]; the client knows only b and d and wants d first. Live-only items stay
    // ahead of ordered items that followed them live.
    let original = pod_spec_patch(
        json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}),
    );
    let out = ok(
        &original,
        pod_spec_patch(json!({"$setElementOrder/containers": [{"name": "d"}, {"name": "b"}]})),
    );
    assert_eq!(names(containers(&out)), ["a", "c", "d", "b"]);
    // Live [1, 2, x, 3, 4] ordered as [2, 1, 4, 3]: x, live between 2 and 3, lands before 4.
    let original = pod_spec_patch(
        json!({"containers": [{"name": "1"}, {"name": "2"}, {"name": "x"}, {"name": "3"}, {"name": "4"}]}),
    );
    let out = ok(
        &original,
        pod_spec_patch(
            json!({"$setElementOrder/containers": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}),
        ),
    );
    assert_eq!(names(containers(&out)), ["2", "1", "x", "4", "3"]);
}

#[test]
fn set_element_order_ignores_items_it_names_that_do_not_exist() {
    let original = pod_spec_patch(json!({"containers": [{"name": "1"}, {"name": "3"}]}));
    let out = ok(
        &original,
        pod_spec_patch(json!({
            "$setElementOrder/containers": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
            "containers": [{"name": "3", "image": "x"}, {"name": "1", "image": "y"}]
        })),
    );
    assert_eq!(
        containers(&out),
        &json!([{"name": "3", "image": "x"}, {"name": "1", "image": "y"}])
    );
}

#[test]
fn set_element_order_for_primitives_with_deletion() {
    let original = json!({"metadata": {"finalizers": ["1", "2", "3", "4"]}});
    let out = ok(
        &original,
        json!({"metadata": {"$setElementOrder/finalizers": ["2", "1"], "$deleteFromPrimitiveList/finalizers": ["3"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["2", "1", "4"]));
}

#[test]
fn set_element_order_for_primitives_with_addition() {
    let original = json!({"metadata": {"finalizers": ["a", "b"]}});
    let out = ok(
        &original,
        json!({"metadata": {"$setElementOrder/finalizers": ["a", "c", "b"], "finalizers": ["c"]}}),
    );
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "c", "b"]));
}

#[test]
fn set_element_order_for_list_new_to_object() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({
            "$setElementOrder/initContainers": [{"name": "b"}, {"name": "a"}],
            "initContainers": [{"name": "b"}, {"name": "a"}]
        })),
    );
    assert_eq!(
        names(&out["spec"]["template"]["spec"]["initContainers"]),
        ["b", "a"]
    );
}

#[test]
fn set_element_order_for_absent_list_is_ignored() {
    let out = ok(
        &deployment(),
        pod_spec_patch(json!({"$setElementOrder/initContainers": [{"name": "x"}]})),
    );
    assert!(
        out["spec"]["template"]["spec"]
            .get("initContainers")
            .is_none()
    );
}

#[test]
fn set_element_order_contradicting_patch_order_is_an_error() {
    let original =
        pod_spec_patch(json!({"containers": [{"name": "1"}, {"name": "3"}, {"name": "2"}]}));
    let e = err(
        &original,
        pod_spec_patch(json!({
            "$setElementOrder/containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}],
            "containers": [{"name": "3", "image": "x"}, {"name": "1"}]
        })),
    );
    assert!(
        e.to_string()
            .contains("doesn't match $setElementOrder list"),
        "{e}"
    );
    let original = json!({"metadata": {"finalizers": ["1", "3"]}});
    let e = err(
        &original,
        json!({"metadata": {"$setElementOrder/finalizers": ["1", "2", "3"], "finalizers": ["3", "1"]}}),
    );
    assert!(matches!(e, PatchError::SetElementOrderMismatch { .. }));
}

#[test]
fn set_element_order_must_be_a_list_and_well_named() {
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"$setElementOrder/containers": "app"})),
    );
    assert_eq!(
        e.to_string(),
        "expected a []interface {}, but received a string"
    );
    let e = err(
        &deployment(),
        pod_spec_patch(json!({"$setElementOrder": []})),
    );
    assert_eq!(e, PatchError::BadPatchFormatForSetElementOrderList);
    assert_eq!(e.status_code(), 400);
    let e = err(
        &deployment(),
        pod_spec_patch(
            json!({"$setElementOrder/containers": [{"name": "app"}], "containers": "x"}),
        ),
    );
    assert!(matches!(e, PatchError::BadArgType { .. }));
}

#[test]
fn set_element_order_entries_need_the_merge_key() {
    let e = err(
        &deployment(),
        pod_spec_patch(
            json!({"$setElementOrder/containers": [{"image": "x"}], "containers": [{"name": "app"}]}),
        ),
    );
    assert!(matches!(e, PatchError::NoMergeKey { .. }), "{e}");
}

// ---- a realistic kubectl apply patch -----------------------------------------------------

#[test]
fn kubectl_style_three_way_patch() {
    // What kubectl apply sends after the user bumped the image, dropped DEBUG and the sidecar,
    // and added a finalizer.
    let patch = json!({
        "metadata": {
            "$setElementOrder/finalizers": ["example.com/a", "example.com/b", "example.com/c"],
            "finalizers": ["example.com/c"],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
        },
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [
                {"name": "app", "image": "nginx:1.26",
                 "$setElementOrder/env": [{"name": "MODE"}],
                 "env": [{"name": "DEBUG", "$patch": "delete"}]},
                {"name": "sidecar", "$patch": "delete"}
            ]
        }}}
    });
    let out = ok(&deployment(), patch);
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["example.com/a", "example.com/b", "example.com/c"])
    );
    assert_eq!(out["metadata"]["annotations"]["owner"], "team-a");
    let c = containers(&out);
    assert_eq!(names(c), ["app"]);
    assert_eq!(c[0]["image"], "nginx:1.26");
    assert_eq!(c[0]["env"], json!([{"name": "MODE", "value": "prod"}]));
    assert_eq!(c[0]["ports"], containers(&deployment())[0]["ports"]);
}

#[test]
fn input_values_are_not_modified() {
    let original = deployment();
    let patch = pod_spec_patch(json!({"containers": [{"name": "app", "$patch": "delete"}]}));
    let before = patch.clone();
    let _ = ok(&original, patch.clone());
    assert_eq!(original, deployment());
    assert_eq!(patch, before);
}
