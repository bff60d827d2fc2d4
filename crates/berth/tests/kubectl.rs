//! The API server driven by the real kubectl, as a user would drive it.

use std::time::Duration;

use serde_json::Value;
use testsupport::{Server, TempDir, eventually};

fn server() -> Server {
    Server::start(env!("CARGO_BIN_EXE_berth"))
}

/// A ConfigMap created from YAML (JSON on the wire), with optional extra metadata lines.
fn configmap(s: &Server, name: &str, extra_metadata: &str) {
    let yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{extra_metadata}data:\n  k: v1\n");
    s.ok_stdin(&["create", "-f", "-"], &yaml);
}

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
        env:
        - name: COLOR
          value: blue
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#;

#[test]
fn apply_a_multi_document_app_and_read_it_back() {
    let s = server();
    let out = s.ok_stdin(&["apply", "-f", "-"], APP);
    for line in ["namespace/shop created", "configmap/settings created", "secret/creds created", "deployment.apps/web created", "service/web created"] {
        assert!(out.contains(line), "missing {line:?} in {out}");
    }
    let deploy = s.get_json(&["deployment", "web", "-n", "shop"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "defaulted");
    assert!(deploy["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());
    let svc = s.get_json(&["service", "web", "-n", "shop"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.43."), "ClusterIP {ip} from the service CIDR");
    let secret = s.get_json(&["secret", "creds", "-n", "shop"]);
    assert_eq!(secret["type"], "Opaque");
    // Applying the same file again changes nothing.
    let again = s.ok_stdin(&["apply", "-f", "-"], APP);
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    // Table output with upstream columns.
    let table = s.ok(&["get", "deployments", "-n", "shop"]);
    assert!(table.starts_with("NAME"), "{table}");
    for col in ["READY", "UP-TO-DATE", "AVAILABLE", "AGE"] {
        assert!(table.contains(col), "missing column {col} in {table}");
    }
    let describe = s.ok(&["describe", "deployment", "web", "-n", "shop"]);
    assert!(describe.contains("Replicas:") && describe.contains("busybox:1.36"), "{describe}");
}

#[test]
fn apply_again_after_editing_the_file_merges_three_ways() {
    let s = server();
    s.ok_stdin(&["apply", "-f", "-"], APP);
    // Someone else scales and labels the live object; the file changes the image and drops env.
    s.ok(&["scale", "deployment/web", "-n", "shop", "--replicas=5"]);
    s.ok(&["label", "deployment/web", "-n", "shop", "team=blue"]);
    let edited = APP.replace("image: busybox:1.36", "image: busybox:1.37").replace("        env:\n        - name: COLOR\n          value: blue\n", "");
    let out = s.ok_stdin(&["apply", "-f", "-"], &edited);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let deploy = s.get_json(&["deployment", "web", "-n", "shop"]);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "busybox:1.37");
    assert!(container.get("env").is_none(), "env removed by apply: {container}");
    assert_eq!(deploy["metadata"]["labels"]["team"], "blue", "label set by someone else survives");
    assert_eq!(deploy["spec"]["replicas"], 2, "replicas is in the file, so the file wins");
    assert_eq!(deploy["metadata"]["generation"], 3, "scale and apply each changed the spec");
}

#[test]
fn label_annotate_and_every_patch_type() {
    let s = server();
    s.ok_stdin(&["apply", "-f", "-"], APP);
    s.ok(&["label", "configmap", "settings", "-n", "shop", "tier=backend"]);
    s.ok(&["annotate", "configmap", "settings", "-n", "shop", "note=hello"]);
    let cm = s.get_json(&["configmap", "settings", "-n", "shop"]);
    assert_eq!(cm["metadata"]["labels"]["tier"], "backend");
    assert_eq!(cm["metadata"]["annotations"]["note"], "hello");
    s.ok(&["label", "configmap", "settings", "-n", "shop", "tier-"]);
    assert!(s.get_json(&["configmap", "settings", "-n", "shop"])["metadata"]["labels"].get("tier").is_none());

    s.ok(&["patch", "configmap", "settings", "-n", "shop", "--type=merge", "-p", r#"{"data":{"size":"large"}}"#]);
    s.ok(&["patch", "configmap", "settings", "-n", "shop", "--type=json", "-p", r#"[{"op":"replace","path":"/data/color","value":"red"}]"#]);
    let cm = s.get_json(&["configmap", "settings", "-n", "shop"]);
    assert_eq!(cm["data"]["size"], "large");
    assert_eq!(cm["data"]["color"], "red");

    // Strategic merge: containers merge by name, so adding an env var keeps the image.
    s.ok(&["patch", "deployment", "web", "-n", "shop", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"SIZE","value":"L"}]}]}}}}"#]);
    let deploy = s.get_json(&["deployment", "web", "-n", "shop"]);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "busybox:1.36");
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(env, ["SIZE", "COLOR"], "env merged by name");

    let err = s.fails(&["patch", "configmap", "settings", "-n", "shop", "--type=json", "-p", r#"[{"op":"remove","path":"/data/missing"}]"#]);
    assert!(err.contains("Error") || err.contains("error"), "{err}");
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    let s = server();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let live = s.get_json(&["configmap", "ssa", "--show-managed-fields"]);
    let managers: Vec<&str> = live["metadata"]["managedFields"].as_array().unwrap().iter().map(|m| m["manager"].as_str().unwrap()).collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
    // Another manager takes field a (forcing, as it conflicts); then the first conflicts unless forced.
    s.ok_stdin(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", "-"], &cm.replace("a: \"1\"", "a: \"9\"").replace("  b: \"2\"\n", ""));
    let err = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &cm.replace("a: \"1\"", "a: \"3\""));
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("conflict") && stderr.contains("other"), "{stderr}");
    s.ok_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &cm.replace("a: \"1\"", "a: \"3\""));
    assert_eq!(s.get_json(&["configmap", "ssa"])["data"]["a"], "3");
    // Dropping b from the applied config removes it (nobody else owns it).
    s.ok_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &cm.replace("a: \"1\"", "a: \"3\"").replace("  b: \"2\"\n", ""));
    assert!(s.get_json(&["configmap", "ssa"])["data"].get("b").is_none());
}

#[test]
fn kubectl_edit_with_a_scripted_editor() {
    let s = server();
    configmap(&s, "edited", "");
    let dir = TempDir::new("editor");
    let editor = dir.path.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/k: v1/k: v2/' \"$1\"\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&editor).status().unwrap();
    let out = s.kubectl_command(&["edit", "configmap", "edited"]).env("KUBE_EDITOR", &editor).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.get_json(&["configmap", "edited"])["data"]["k"], "v2");
}

#[test]
fn get_watch_streams_changes() {
    let s = server();
    configmap(&s, "watched", "");
    let mut child = s
        .kubectl_command(&["get", "configmaps", "-w", "-o", "name", "--request-timeout=30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    configmap(&s, "later", "");
    s.ok(&["delete", "configmap", "watched"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configmap/watched"), "{text}");
    assert!(text.contains("configmap/later"), "{text}");
}

#[test]
fn discovery_explain_and_get_all() {
    let s = server();
    let resources = s.ok(&["api-resources"]);
    for row in ["pods", "deployments", "customresourcedefinitions", "leases", "horizontalpodautoscalers", "priorityclasses"] {
        assert!(resources.contains(row), "api-resources lacks {row}:\n{resources}");
    }
    let explain = s.ok(&["explain", "deployment.spec.replicas"]);
    assert!(explain.contains("replicas") && explain.to_lowercase().contains("integer"), "{explain}");
    s.ok_stdin(&["apply", "-f", "-"], APP);
    let all = s.ok(&["get", "all", "-A"]);
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(all.contains("service/web"), "{all}");
    let version = s.ok(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "33");
}

#[test]
fn strict_validation_rejects_unknown_fields() {
    let s = server();
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndata:\n  a: b\ndatta:\n  c: d\n";
    let err = s.kubectl_stdin(&["apply", "-f", "-"], bad);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("datta"), "{stderr}");
    let invalid = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n";
    let err = s.kubectl_stdin(&["create", "-f", "-"], invalid);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("is invalid") && stderr.contains("RFC 1123"), "{stderr}");
    let err = s.kubectl_stdin(&["create", "-n", "nowhere", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
}

#[test]
fn custom_resources_appear_with_their_definition() {
    let s = server();
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}, scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    selectableFields:
    - {jsonPath: .spec.color}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {rule: "self.size <= 10", message: "size must be at most 10"}
            properties:
              size: {type: integer, minimum: 1}
              replicas: {type: integer}
              color: {type: string, pattern: '^[a-z]+$', default: red}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;
    s.ok_stdin(&["apply", "-f", "-"], crd);
    s.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=30s"]);
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n  replicas: 1\n";
    let applied = eventually(Duration::from_secs(20), || {
        let out = s.kubectl_stdin(&["apply", "-f", "-"], widget);
        out.status.success().then_some(())
    });
    assert!(applied.is_some(), "custom resource could not be applied");
    let table = s.ok(&["get", "wd"]);
    assert!(table.contains("SIZE") && table.contains("w1"), "{table}");
    s.ok(&["scale", "widget/w1", "--replicas=4"]);
    assert_eq!(s.get_json(&["widget", "w1"])["spec"]["replicas"], 4);
    // Schema defaults, patterns and selectable fields.
    assert_eq!(s.get_json(&["widget", "w1"])["spec"]["color"], "red");
    s.ok_stdin(&["apply", "-f", "-"], &widget.replace("w1", "w2").replace("replicas: 1", "color: blue"));
    assert_eq!(s.ok(&["get", "widgets", "--field-selector", "spec.color=blue", "-o", "name"]).trim(), "widget.example.com/w2");
    let err = s.kubectl_stdin(&["apply", "-f", "-"], &widget.replace("w1", "w3").replace("replicas: 1", "color: Blue"));
    assert!(String::from_utf8_lossy(&err.stderr).contains("spec.color in body should match '^[a-z]+$'"), "{}", String::from_utf8_lossy(&err.stderr));
    // CEL rules from x-kubernetes-validations.
    let err = s.kubectl_stdin(&["apply", "-f", "-"], &widget.replace("w1", "w4").replace("size: 3", "size: 11"));
    assert!(String::from_utf8_lossy(&err.stderr).contains("size must be at most 10"), "{}", String::from_utf8_lossy(&err.stderr));
    let broken = crd.replace("widgets.example.com", "gadgets.example.com").replace("plural: widgets, singular: widget, kind: Widget, shortNames: [wd]", "plural: gadgets, singular: gadget, kind: Gadget").replace("self.size <= 10", "self.size <=");
    let err = s.kubectl_stdin(&["apply", "-f", "-"], &broken);
    assert!(String::from_utf8_lossy(&err.stderr).contains("x-kubernetes-validations[0].rule"), "{}", String::from_utf8_lossy(&err.stderr));
    let err = s.kubectl_stdin(&["apply", "-f", "-"], &widget.replace("size: 3", "size: 0"));
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("spec.size"), "{}", String::from_utf8_lossy(&err.stderr));
    s.ok(&["delete", "crd", "widgets.example.com"]);
    let gone = eventually(Duration::from_secs(20), || (!s.kubectl(&["get", "widgets"]).status.success()).then_some(()));
    assert!(gone.is_some(), "widgets still served after the CRD was deleted");
}

#[test]
fn conflicting_update_is_refused() {
    let s = server();
    configmap(&s, "race", "");
    let mut cm = s.get_json(&["configmap", "race"]);
    s.ok(&["patch", "configmap", "race", "--type=merge", "-p", r#"{"data":{"k":"newer"}}"#]);
    cm["data"]["k"] = Value::String("stale".into());
    let err = s.kubectl_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("the object has been modified"), "{stderr}");
    assert_eq!(s.get_json(&["configmap", "race"])["data"]["k"], "newer");
}

#[test]
fn data_survives_restart_and_kill_9() {
    let mut s = server();
    s.ok_stdin(&["apply", "-f", "-"], APP);
    s.restart();
    assert_eq!(s.get_json(&["configmap", "settings", "-n", "shop"])["data"]["color"], "blue");
    for i in 0..20 {
        configmap(&s, &format!("cm{i}"), "");
    }
    s.kill_hard();
    s.start_again();
    let names = s.ok(&["get", "configmaps", "-o", "name"]);
    for i in 0..20 {
        assert!(names.contains(&format!("configmap/cm{i} ")) || names.contains(&format!("configmap/cm{i}\n")), "cm{i} lost after kill -9:\n{names}");
    }
    let svc = s.get_json(&["service", "web", "-n", "shop"]);
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.43."));
}

#[test]
fn deleting_with_each_propagation_policy() {
    let s = server();
    configmap(&s, "plain", "");
    s.ok(&["delete", "configmap", "plain"]);
    assert!(s.fails(&["get", "configmap", "plain"]).contains("not found"));
    // A finalizer holds an object in Terminating until it is removed.
    configmap(&s, "held", "  finalizers: [example.com/hold]\n");
    s.ok(&["delete", "configmap", "held", "--wait=false"]);
    let held = s.get_json(&["configmap", "held"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    s.ok(&["patch", "configmap", "held", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    assert!(s.fails(&["get", "configmap", "held"]).contains("not found"));
    // Owners with a dependent: background and foreground delete the dependent, orphan keeps it
    // and strips its owner reference.
    for cascade in ["background", "foreground", "orphan"] {
        let owner = format!("owner-{cascade}");
        let dependent = format!("dependent-{cascade}");
        configmap(&s, &owner, "");
        let uid = s.get_json(&["configmap", &owner])["metadata"]["uid"].as_str().unwrap().to_string();
        let owned = format!("  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: \"{uid}\", blockOwnerDeletion: true}}]\n");
        configmap(&s, &dependent, &owned);
        let out = s.kubectl(&["delete", "configmap", &owner, &format!("--cascade={cascade}"), "--timeout=60s"]);
        assert!(out.status.success(), "cascade={cascade}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(s.fails(&["get", "configmap", &owner]).contains("not found"));
        let settled = eventually(Duration::from_secs(30), || {
            let got = s.kubectl(&["get", "configmap", &dependent, "-o", "json"]);
            match cascade {
                "orphan" => {
                    let dep: Value = serde_json::from_slice(&got.stdout).ok()?;
                    dep["metadata"].get("ownerReferences").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)).then_some(())
                }
                _ => (!got.status.success()).then_some(()),
            }
        });
        assert!(settled.is_some(), "cascade={cascade}: dependent not handled as upstream does");
    }
    // Deleting a namespace empties it, then removes it.
    s.ok_stdin(&["apply", "-f", "-"], APP);
    s.ok_stdin(&["create", "-f", "-"], "apiVersion: v1\nkind: Event\nmetadata: {name: note, namespace: shop}\ninvolvedObject: {kind: ConfigMap, name: x, namespace: shop}\nreason: Test\nmessage: goes with its namespace\n");
    s.ok(&["delete", "namespace", "shop", "--timeout=60s"]);
    assert!(s.fails(&["get", "namespace", "shop"]).contains("not found"));
    assert!(s.ok(&["get", "configmaps", "-n", "shop", "-o", "name"]).trim().is_empty());
    assert!(s.ok(&["get", "events", "-n", "shop", "-o", "name"]).trim().is_empty());
}

fn has_finalizer(obj: &Value, finalizer: &str) -> bool {
    obj["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// The ConfigMap as JSON, or None once it is gone.
fn configmap_json(s: &Server, name: &str) -> Option<Value> {
    let out = s.kubectl(&["get", "configmap", name, "-o", "json", "--ignore-not-found"]);
    assert!(out.status.success(), "kubectl get configmap {name}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn foreground_deletion_waits_for_blocking_dependents() {
    let s = server();
    configmap(&s, "boss", "");
    let uid = s.get_json(&["configmap", "boss"])["metadata"]["uid"].as_str().unwrap().to_string();
    // Both dependents are held by a finalizer of their own; only `held` blocks its owner.
    let owned = |block: bool| format!("  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: boss, uid: \"{uid}\", blockOwnerDeletion: {block}}}]\n  finalizers: [example.com/hold]\n");
    configmap(&s, "held", &owned(true));
    configmap(&s, "loose", &owned(false));

    s.ok(&["delete", "configmap", "boss", "--cascade=foreground", "--wait=false"]);
    // The owner goes into deletion, marked as waiting for its dependents...
    let boss = configmap_json(&s, "boss").expect("the owner stays while its dependents are deleted");
    assert!(boss["metadata"]["deletionTimestamp"].is_string() && has_finalizer(&boss, "foregroundDeletion"), "{boss}");
    // ...and the garbage collector deletes every dependent, blocking or not, while it waits.
    // (Their own finalizer keeps them; any foregroundDeletion the collector added is gone once it
    // has looked at them again, so the collector has seen them being deleted by then.)
    let terminating = |name: &str| {
        configmap_json(&s, name).is_some_and(|d| d["metadata"]["deletionTimestamp"].is_string() && d["metadata"]["finalizers"] == serde_json::json!(["example.com/hold"]))
    };
    assert!(eventually(Duration::from_secs(30), || (terminating("held") && terminating("loose")).then_some(())).is_some(), "dependents not deleted: {:?} {:?}", configmap_json(&s, "held"), configmap_json(&s, "loose"));
    let boss = configmap_json(&s, "boss").expect("the owner waits for its blocking dependent");
    assert!(boss["metadata"]["deletionTimestamp"].is_string() && has_finalizer(&boss, "foregroundDeletion"), "{boss}");

    // Once the blocking dependent is gone the owner goes too; the non-blocking one does not hold
    // it (upstream's blockingDependents).
    s.ok(&["patch", "configmap", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    let gone = eventually(Duration::from_secs(30), || (configmap_json(&s, "held").is_none() && configmap_json(&s, "boss").is_none()).then_some(()));
    assert!(gone.is_some(), "owner or blocking dependent left: {:?} {:?}", configmap_json(&s, "boss"), configmap_json(&s, "held"));
    assert!(terminating("loose"), "{:?}", configmap_json(&s, "loose"));
    s.ok(&["patch", "configmap", "loose", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(eventually(Duration::from_secs(30), || configmap_json(&s, "loose").is_none().then_some(())).is_some(), "{:?}", configmap_json(&s, "loose"));
}

/// kubectl's typed generators (`kubectl create configmap ...`) send Kubernetes protobuf bodies.
/// Decoding them is not built yet; until it is, they must get a clear 415 Status naming the
/// accepted types, and `kubectl create -f` of the same object must work.
#[test]
fn typed_generators_send_protobuf_and_it_is_understood() {
    let s = server();
    // Each of these builds a typed object and sends it as application/vnd.kubernetes.protobuf.
    s.ok(&["create", "namespace", "gen"]);
    s.ok(&["-n", "gen", "create", "configmap", "settings", "--from-literal=mode=fast", "--from-literal=level=3"]);
    s.ok(&["-n", "gen", "create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    s.ok(&["-n", "gen", "create", "deployment", "web", "--image=nginx:1.25", "--replicas=0", "--port=80"]);
    s.ok(&["-n", "gen", "create", "service", "clusterip", "web", "--tcp=80:8080"]);
    s.ok(&["-n", "gen", "create", "job", "once", "--image=busybox", "--", "echo", "hi"]);
    s.ok(&["-n", "gen", "create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *"]);
    s.ok(&["-n", "gen", "create", "role", "reader", "--verb=get,list", "--resource=pods"]);
    s.ok(&["-n", "gen", "create", "rolebinding", "reader", "--role=reader", "--user=alice"]);
    s.ok(&["-n", "gen", "create", "quota", "small", "--hard=pods=10,requests.cpu=2"]);
    s.ok(&["-n", "gen", "create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=1"]);
    s.ok(&["-n", "gen", "create", "ingress", "web", "--rule=example.test/=web:80"]);
    s.ok(&["create", "priorityclass", "high", "--value=1000", "--description=important"]);

    let cm = s.get_json(&["-n", "gen", "configmap", "settings"]);
    assert_eq!(cm["data"], serde_json::json!({"level": "3", "mode": "fast"}));
    let secret = s.get_json(&["-n", "gen", "secret", "creds"]);
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    assert_eq!(secret["type"], "Opaque");

    let deploy = s.get_json(&["-n", "gen", "deployment", "web"]);
    // An explicit 0 survives the trip (replicas is a pointer field upstream).
    assert_eq!(deploy["spec"]["replicas"], 0);
    assert_eq!(deploy["spec"]["selector"]["matchLabels"]["app"], "web");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.25");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    // Server defaults apply as they would to a JSON body.
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert!(deploy["metadata"]["creationTimestamp"].is_string());

    let svc = s.get_json(&["-n", "gen", "service", "web"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.43.")), "{svc}");
    let job = s.get_json(&["-n", "gen", "job", "once"]);
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["echo", "hi"]));
    assert_eq!(s.get_json(&["-n", "gen", "cronjob", "tick"])["spec"]["schedule"], "*/5 * * * *");
    assert_eq!(s.get_json(&["-n", "gen", "role", "reader"])["rules"][0]["verbs"], serde_json::json!(["get", "list"]));
    assert_eq!(s.get_json(&["-n", "gen", "rolebinding", "reader"])["subjects"][0]["name"], "alice");
    assert_eq!(s.get_json(&["-n", "gen", "resourcequota", "small"])["spec"]["hard"]["requests.cpu"], "2");
    assert_eq!(s.get_json(&["-n", "gen", "pdb", "web"])["spec"]["minAvailable"], 1);
    assert_eq!(s.get_json(&["-n", "gen", "ingress", "web"])["spec"]["rules"][0]["host"], "example.test");
    assert_eq!(s.get_json(&["priorityclass", "high"])["value"], 1000);

    // Validation still answers in Status form for a protobuf body.
    let err = s.fails(&["-n", "gen", "create", "configmap", "Bad_Name", "--from-literal=k=v"]);
    assert!(err.contains("Invalid") || err.contains("invalid"), "{err}");
}

#[test]
fn bad_requests_get_status_errors_not_crashes() {
    let s = server();
    let dir = TempDir::new("bodies");
    let write = |name: &str, body: &str| {
        let path = dir.path.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_string_lossy().into_owned()
    };
    let malformed = write("bad.json", "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":");
    let err = s.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &malformed]);
    assert!(err.contains("BadRequest"), "{err}");
    let huge = write("huge.json", &format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"x\":\"{}\"}}}}", "a".repeat(4 << 20)));
    let err = s.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &huge]);
    assert!(err.contains("RequestEntityTooLarge"), "{err}");
    let wrong = write("wrong.json", "{\"apiVersion\":\"apps/v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}");
    let err = s.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &wrong]);
    assert!(err.contains("does not match the expected API version"), "{err}");
    assert!(s.fails(&["get", "--raw", "/api/v1/namespaces/default/nothings"]).contains("NotFound"));
    assert!(s.fails(&["get", "--raw", "/apis/nowhere.example.com/v1"]).contains("NotFound"));
    // The server is still healthy after all that.
    assert_eq!(s.ok(&["get", "--raw", "/readyz"]), "ok");
    let metrics = s.ok(&["get", "--raw", "/metrics"]);
    assert!(metrics.contains("apiserver_request_total{verb=\"CREATE\",resource=\"configmaps\",method=\"POST\",code=\"413\"} 1"), "{metrics}");
}

#[test]
fn horizontal_pod_autoscalers_are_served_as_v1_and_v2_of_one_object() {
    let s = server();
    s.ok(&["create", "deployment", "web", "--image=nginx"]);
    s.ok(&["autoscale", "deployment", "web", "--min=2", "--max=5", "--cpu-percent=60"]);
    let v1 = s.get_json(&["horizontalpodautoscalers.v1.autoscaling", "web"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
    let v2 = s.get_json(&["horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    assert_eq!(v2["spec"]["minReplicas"], 2);

    // A v2-only metric survives a write through v1.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "mem"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 3,
                     "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]}}"#,
    );
    let v1 = s.get_json(&["horizontalpodautoscalers.v1.autoscaling", "mem"]);
    assert!(v1["spec"].get("targetCPUUtilizationPercentage").is_none(), "{v1}");
    assert!(v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/metrics"].as_str().is_some_and(|m| m.contains("memory")), "{v1}");
    s.ok(&["label", "horizontalpodautoscalers.v1.autoscaling", "mem", "tier=backend"]);
    let v2 = s.get_json(&["horizontalpodautoscalers.v2.autoscaling", "mem"]);
    assert_eq!(v2["metadata"]["labels"]["tier"], "backend");
    assert_eq!(v2["spec"]["metrics"], serde_json::json!([{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]));
    assert!(v2["metadata"].get("annotations").is_none_or(|a| a.get("autoscaling.alpha.kubernetes.io/metrics").is_none()), "{v2}");
    // One object, two views: both lists see both.
    assert_eq!(s.get_json(&["horizontalpodautoscalers.v1.autoscaling"])["items"].as_array().map(Vec::len), Some(2));
}

#[test]
fn events_are_one_resource_in_core_and_events_k8s_io() {
    let s = server();
    s.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "message": "Started container web", "type": "Normal", "count": 2,
            "source": {"component": "kubelet"}, "reportingComponent": "kubelet", "reportingInstance": "node-1"}"#,
    );
    let new = s.get_json(&["events.v1.events.k8s.io", "web.1"]);
    assert_eq!(new["apiVersion"], "events.k8s.io/v1");
    assert_eq!(new["regarding"]["name"], "web");
    assert_eq!(new["note"], "Started container web");
    assert_eq!(new["deprecatedCount"], 2);
    assert_eq!(new["reportingController"], "kubelet");

    s.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "web.2"},
            "eventTime": "2026-11-29T08:00:00.000000Z", "reportingController": "berth.dev/scheduler", "reportingInstance": "berth-1",
            "action": "Binding", "reason": "Scheduled", "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
            "note": "Successfully assigned default/web to node-1", "type": "Normal"}"#,
    );
    let core = s.get_json(&["events.v1.", "web.2"]);
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["involvedObject"]["name"], "web");
    assert_eq!(core["message"], "Successfully assigned default/web to node-1");
    assert_eq!(core["reportingComponent"], "berth.dev/scheduler");
    let listed = s.get_json(&["events.v1.events.k8s.io"]);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    // kubectl get events reads the core view and shows both.
    let table = s.ok(&["get", "events"]);
    assert!(table.contains("Started container web") && table.contains("Successfully assigned"), "{table}");
}

#[test]
fn a_uid_in_the_body_is_a_precondition() {
    let s = server();
    configmap(&s, "same-name", "");
    let mut cm = s.get_json(&["configmap", "same-name"]);
    cm["metadata"]["uid"] = Value::String("00000000-0000-0000-0000-000000000000".into());
    cm["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let err = s.kubectl_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(String::from_utf8_lossy(&err.stderr).contains("Precondition failed: UID in precondition"), "{}", String::from_utf8_lossy(&err.stderr));
}
