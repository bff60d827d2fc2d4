//! The scheduler against the real server: placement by node selector, taints and resources; the
//! aggregated reason, condition and event for a pod that fits nowhere; waking it when a node
//! joins; preemption of a lower-priority pod. Nodes are plain API objects (no kubelet): the test
//! plays the kubelet's one part preemption needs, finishing a graceful deletion.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodCondition};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use scheduler::leader::{Elector, LeaseConfig};
use serde_json::{Value, json};
use testsupport::Server;

async fn client(server: &Server) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Polls `check` until it gives a value; panics with `what` after a minute.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Node as a kubelet would register it, with allocatable resources, a Ready condition and a
/// fresh heartbeat (node Lease), so the node lifecycle controller has no reason to taint it while
/// the test runs.
async fn add_node(client: &kube::Client, name: &str, labels: Value, taints: Value, cpu: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut all_labels = json!({"kubernetes.io/hostname": name});
    all_labels.as_object_mut().unwrap().extend(labels.as_object().unwrap().clone());
    let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now)}],
    });
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"taints": taints},
        "status": status,
    }))
    .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    // Status is a subresource: written separately in case create left it out.
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.unwrap();
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": MicroTime(now)},
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease").create(&PostParams::default(), &lease).await.unwrap();
}

/// A pod with one container; `spec.cpu`, if given, becomes its CPU request.
fn pod(name: &str, mut spec: Value) -> Pod {
    let fields = spec.as_object_mut().unwrap();
    let requests = fields.remove("cpu").map(|c| json!({"cpu": c})).unwrap_or(json!({}));
    fields.insert("containers".into(), json!([{"name": "main", "image": "registry.example/app:1", "resources": {"requests": requests}}]));
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn node_of(api: &Api<Pod>, name: &str) -> Option<String> {
    api.get(name).await.ok()?.spec?.node_name.filter(|n| !n.is_empty())
}

/// The node `name` gets bound to; on timeout, fails with the scheduler's own account of why not.
async fn wait_bound(client: &kube::Client, pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(node) = node_of(pods, name).await {
            return node;
        }
        if tokio::time::Instant::now() >= deadline {
            let why: Vec<Option<String>> = events_for(client, name, "FailedScheduling").await.into_iter().map(|e| e.message).collect();
            panic!("{name} not bound after 60s; FailedScheduling events: {why:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(pod: &Pod, type_: &str) -> Option<PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).cloned()
}

async fn events_for(client: &kube::Client, pod: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let params = ListParams::default().fields(&format!("involvedObject.name={pod},reason={reason}"));
    api.list(&params).await.map(|l| l.items).unwrap_or_default()
}

fn start_scheduler(client: &kube::Client) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(error) = scheduler::run(client, scheduler::SchedulerOptions::default()).await {
            panic!("scheduler stopped: {error}");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_pods_by_selector_taints_and_resources_and_explains_failures() {
    let server = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--node-monitor-grace-period=1h"]);
    let client = client(&server).await;
    let control_plane_taint = json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
    add_node(&client, "cp", json!({"node-role.kubernetes.io/control-plane": ""}), control_plane_taint, "4").await;
    add_node(&client, "hdd", json!({"disk": "hdd"}), json!([]), "1").await;
    add_node(&client, "ssd", json!({"disk": "ssd"}), json!([]), "4").await;
    let scheduler = start_scheduler(&client);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placements = [
        ("on-ssd", json!({"nodeSelector": {"disk": "ssd"}}), "ssd"),
        (
            "on-cp",
            json!({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                   "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
            "cp",
        ),
        // Only ssd has two free CPUs: hdd has one and cp is tainted.
        ("big", json!({"cpu": "2"}), "ssd"),
        ("hdd-1", json!({"nodeSelector": {"disk": "hdd"}, "cpu": "900m"}), "hdd"),
    ];
    for (name, spec, _) in &placements {
        pods.create(&PostParams::default(), &pod(name, spec.clone())).await.unwrap();
    }
    for (name, _, expected) in &placements {
        let node = wait_bound(&client, &pods, name).await;
        assert_eq!(node, *expected, "{name}");
    }
    let bound = pods.get("on-ssd").await.unwrap();
    assert_eq!(condition(&bound, "PodScheduled").map(|c| c.status), Some("True".to_string()));
    let scheduled = eventually("Scheduled event", || async { events_for(&client, "on-ssd", "Scheduled").await.into_iter().next() }).await;
    assert_eq!(scheduled.message.as_deref(), Some("Successfully assigned default/on-ssd to ssd"));
    assert_eq!(scheduled.type_.as_deref(), Some("Normal"));

    // hdd is full (900m of 1 CPU), ssd does not match, cp is tainted.
    pods.create(&PostParams::default(), &pod("hdd-2", json!({"nodeSelector": {"disk": "hdd"}, "cpu": "900m"}))).await.unwrap();
    let expected = "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, \
                    1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }. \
                    preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.";
    let unschedulable = eventually("PodScheduled=False", || async {
        let p = pods.get("hdd-2").await.ok()?;
        condition(&p, "PodScheduled").filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(unschedulable.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(unschedulable.message.as_deref(), Some(expected));
    let failed = eventually("FailedScheduling event", || async { events_for(&client, "hdd-2", "FailedScheduling").await.into_iter().next() }).await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.message.as_deref(), Some(expected));
    assert_eq!(failed.source.as_ref().and_then(|s| s.component.as_deref()), Some("default-scheduler"));
    assert_eq!(failed.reporting_component.as_deref(), Some("default-scheduler"));
    assert_eq!(failed.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(failed.involved_object.uid, pods.get("hdd-2").await.unwrap().metadata.uid);

    // A new node that fits wakes the pod without waiting out its backoff cap.
    add_node(&client, "hdd-b", json!({"disk": "hdd"}), json!([]), "1").await;
    assert_eq!(wait_bound(&client, &pods, "hdd-2").await, "hdd-b");

    let lease: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = lease.get("kube-scheduler").await.unwrap().spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(!holder.is_empty(), "the scheduler holds its lease");
    scheduler.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_pod_preempts_a_lower_priority_one() {
    let server = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--node-monitor-grace-period=1h"]);
    let client = client(&server).await;
    let classes: Api<PriorityClass> = Api::all(client.clone());
    for (name, value) in [("low", 100), ("high", 1000)] {
        let class: PriorityClass =
            serde_json::from_value(json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value})).unwrap();
        classes.create(&PostParams::default(), &class).await.unwrap();
    }
    add_node(&client, "n1", json!({}), json!([]), "2").await;
    let scheduler = start_scheduler(&client);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["low-1", "low-2"] {
        pods.create(&PostParams::default(), &pod(name, json!({"priorityClassName": "low", "cpu": "1"}))).await.unwrap();
    }
    for name in ["low-1", "low-2"] {
        assert_eq!(wait_bound(&client, &pods, name).await, "n1");
    }
    pods.create(&PostParams::default(), &pod("urgent", json!({"priorityClassName": "high", "cpu": "1"}))).await.unwrap();
    let nominated = eventually("urgent nominated", || async { pods.get("urgent").await.ok()?.status?.nominated_node_name.filter(|n| !n.is_empty()) }).await;
    assert_eq!(nominated, "n1");
    // Exactly one victim, deleted gracefully (it stays until its kubelet confirms).
    let victim = eventually("a victim being deleted", || async {
        let terminating: Vec<Pod> = pods.list(&ListParams::default()).await.ok()?.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_some()).collect();
        (!terminating.is_empty()).then_some(terminating)
    })
    .await;
    assert_eq!(victim.len(), 1);
    let victim = &victim[0];
    let victim_name = victim.metadata.name.clone().unwrap();
    assert!(victim_name.starts_with("low-"));
    let disruption = condition(victim, "DisruptionTarget").expect("DisruptionTarget condition");
    assert_eq!(disruption.reason.as_deref(), Some("PreemptionByScheduler"));
    let survivor = if victim_name == "low-1" { "low-2" } else { "low-1" };
    assert!(pods.get(survivor).await.unwrap().metadata.deletion_timestamp.is_none());
    assert!(node_of(&pods, "urgent").await.is_none(), "not bound while the victim still holds its CPU");
    let preempted = eventually("Preempted event", || async { events_for(&client, &victim_name, "Preempted").await.into_iter().next() }).await;
    let urgent_uid = pods.get("urgent").await.unwrap().metadata.uid.unwrap();
    assert_eq!(preempted.message, Some(format!("Preempted by pod {urgent_uid} on node n1")));

    // The kubelet's part: the container stopped, the deletion completes.
    pods.delete(&victim_name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    assert_eq!(wait_bound(&client, &pods, "urgent").await, "n1");
    assert!(pods.get(survivor).await.unwrap().metadata.deletion_timestamp.is_none());
    scheduler.abort();
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_loss_is_reported() {
    let server = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--node-monitor-grace-period=1h"]);
    let client = client(&server).await;
    let config = |id: &str| LeaseConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        ..LeaseConfig::new("kube-system", "test-lock", id.to_string())
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let a = Elector::new(client.clone(), config("a")).unwrap();
    let b = Elector::new(client.clone(), config("b")).unwrap();
    let leader_a = a.acquire().await;
    assert!(leader_a.is_leader());
    let first = leases.get("test-lock").await.unwrap();
    assert_eq!(holder(&first).as_deref(), Some("a"));
    let contender = tokio::spawn(async move { b.acquire().await });
    // While `a` keeps renewing, `b` keeps waiting.
    let renewed_at = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    for _ in 0..3 {
        let before = renewed_at(&leases.get("test-lock").await.unwrap());
        eventually("a renewal", || async { (renewed_at(&leases.get("test-lock").await.ok()?) != before).then_some(()) }).await;
    }
    assert_eq!(holder(&leases.get("test-lock").await.unwrap()).as_deref(), Some("a"));
    assert!(!contender.is_finished(), "b cannot lead while a renews");
    // Released, the lease passes to `b` without waiting out its duration.
    leader_a.release().await;
    let mut leader_b = tokio::time::timeout(Duration::from_secs(60), contender).await.expect("b leads").unwrap();
    let lease = leases.get("test-lock").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some("b"));
    assert_eq!(lease.spec.as_ref().and_then(|s| s.lease_transitions), Some(1));
    // Someone takes the lease by force: `b` can no longer renew and says so.
    eventually("the lease taken over", || async {
        let mut stolen = leases.get("test-lock").await.ok()?;
        let spec = stolen.spec.as_mut()?;
        spec.holder_identity = Some("intruder".into());
        spec.lease_duration_seconds = Some(3600);
        // A conflict with b's renewal just means another try.
        leases.replace("test-lock", &PostParams::default(), &stolen).await.ok().map(|_| ())
    })
    .await;
    tokio::time::timeout(Duration::from_secs(60), leader_b.lost()).await.expect("b notices the loss");
    assert!(!leader_b.is_leader());
}
