//! Simulated nodes against the real server: registration, lease heartbeats, pods started,
//! finished and deleted as a kubelet would report them, and heartbeats that stop with the
//! simulator.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use testsupport::Server;

async fn client(server: &Server) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Polls `check` until it gives a value; panics with `what` after `timeout`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, node: &str, restart_policy: &str, exit_code: Option<&str>) -> Pod {
    let annotations = exit_code.map(|c| serde_json::json!({"sim.berth.dev/exit-code": c})).unwrap_or(serde_json::json!({}));
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "containers": [{"name": "main", "image": "registry.example/app:1"}]
        }
    }))
    .unwrap()
}

fn renew_time(lease: &Lease) -> Option<k8s_openapi::jiff::Timestamp> {
    lease.spec.as_ref()?.renew_time.as_ref().map(|t| t.0)
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').unwrap();
    let (ip, net): (Ipv4Addr, Ipv4Addr) = (ip.parse().unwrap(), net.parse().unwrap());
    let mask = u32::MAX << (32 - prefix.parse::<u32>().unwrap());
    u32::from(ip) & mask == u32::from(net) & mask
}

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

#[tokio::test]
async fn simulated_nodes_run_pods_like_a_kubelet() {
    let server = Server::start(env!("CARGO_BIN_EXE_berth"));
    let client = client(&server).await;
    let options = simnodes::SimOptions {
        count: 3,
        extended: vec![("nvidia.com/gpu".into(), "4".into())],
        heartbeat: Duration::from_secs(1),
        finish_after: Duration::from_secs(1),
        ..Default::default()
    };
    let sim = tokio::spawn(simnodes::run(client.clone(), options.clone()));
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let wait = Duration::from_secs(30);

    // Registered, with capacity, Ready.
    for i in 0..3 {
        let name = format!("sim-{i}");
        let node = eventually(&format!("node {name}"), wait, || async { nodes.get_opt(&name).await.unwrap() }).await;
        let status = node.status.as_ref().unwrap();
        let capacity = status.capacity.as_ref().unwrap();
        assert_eq!(capacity["cpu"].0, "8");
        assert_eq!(capacity["memory"].0, "32Gi");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(capacity["nvidia.com/gpu"].0, "4");
        assert_eq!(status.allocatable, status.capacity);
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(node.metadata.labels.as_ref().unwrap()["kubernetes.io/hostname"], name);
        assert_eq!(node.spec.as_ref().unwrap().pod_cidr.as_deref(), Some(format!("10.244.{i}.0/24").as_str()));
        assert_eq!(status.node_info.as_ref().unwrap().kubelet_version, "v1.33.0-berth-sim");
    }
    let sim1 = nodes.get("sim-1").await.unwrap();
    let sim1_cidr = sim1.spec.as_ref().unwrap().pod_cidr.clone().unwrap();
    let sim1_ip = sim1.status.as_ref().unwrap().addresses.as_ref().unwrap().iter().find(|a| a.type_ == "InternalIP").unwrap().address.clone();

    // Leases exist and are renewed.
    let first = eventually("lease sim-0", wait, || async { leases.get_opt("sim-0").await.unwrap().and_then(|l| renew_time(&l)) }).await;
    let lease = leases.get("sim-0").await.unwrap();
    let spec = lease.spec.as_ref().unwrap();
    assert_eq!((spec.holder_identity.as_deref(), spec.lease_duration_seconds), (Some("sim-0"), Some(40)));
    assert_eq!(lease.metadata.owner_references.as_ref().unwrap()[0].kind, "Node");
    eventually("lease renewal", wait, || async { renew_time(&leases.get("sim-0").await.unwrap()).filter(|t| *t > first) }).await;

    // Pods bound to sim-1 run, each with its own address from the node's CIDR.
    pods.create(&PostParams::default(), &pod("web", "sim-1", "Always", None)).await.unwrap();
    pods.create(&PostParams::default(), &pod("web2", "sim-1", "Always", None)).await.unwrap();
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(&format!("{name} running and ready"), wait, || async {
                let p = pods.get(name).await.unwrap();
                (p.status.as_ref()?.phase.as_deref() == Some("Running") && condition(&p, "Ready") == Some("True")).then_some(p)
            })
            .await
        }
    };
    let web = running("web").await;
    let web2 = running("web2").await;
    let status = web.status.as_ref().unwrap();
    let ip = status.pod_ip.clone().unwrap();
    assert!(in_cidr(&ip, &sim1_cidr), "pod IP {ip} is inside {sim1_cidr}");
    assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, ip);
    assert_eq!(status.host_ip.as_deref(), Some(sim1_ip.as_str()));
    assert!(status.start_time.is_some());
    for t in ["PodScheduled", "Initialized", "ContainersReady"] {
        assert_eq!(condition(&web, t), Some("True"), "{t}");
    }
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert!(container.ready && container.started == Some(true) && container.restart_count == 0);
    assert!(container.state.as_ref().unwrap().running.as_ref().unwrap().started_at.is_some());
    assert_eq!(container.image, "registry.example/app:1");
    assert_eq!(container.container_id.as_deref(), Some(format!("sim://{}-main", web.metadata.uid.as_deref().unwrap()).as_str()));
    let ip2 = web2.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(in_cidr(&ip2, &sim1_cidr) && ip2 != ip, "second pod has its own address: {ip} vs {ip2}");

    // restartPolicy Never: containers exit after finish_after with the annotated code.
    pods.create(&PostParams::default(), &pod("fails", "sim-2", "Never", Some("3"))).await.unwrap();
    pods.create(&PostParams::default(), &pod("works", "sim-2", "Never", None)).await.unwrap();
    let ended = |name: &'static str, phase: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(&format!("{name} {phase}"), wait, || async {
                let p = pods.get(name).await.unwrap();
                (p.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(p)
            })
            .await
        }
    };
    let failed = ended("fails", "Failed").await;
    let terminated = failed.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!((terminated.exit_code, terminated.reason.as_deref()), (3, Some("Error")));
    assert_eq!(condition(&failed, "Ready"), Some("False"));
    let succeeded = ended("works", "Succeeded").await;
    let terminated = succeeded.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!((terminated.exit_code, terminated.reason.as_deref()), (0, Some("Completed")));

    // A graceful delete of a running pod: the node stops it and finishes the deletion.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("web deleted", wait, || async { pods.get_opt("web").await.unwrap().is_none().then_some(()) }).await;

    // A pod held by a finalizer outlives the node's delete: it is reported terminal first, as
    // the kubelet does, so whoever holds it (a Job controller, say) sees how it ended.
    let mut held = pod("held", "sim-0", "Always", None);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    pods.create(&PostParams::default(), &held).await.unwrap();
    running("held").await;
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    let stopped = eventually("held reported terminal", wait, || async {
        let p = pods.get("held").await.unwrap();
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    assert!(stopped.metadata.deletion_timestamp.is_some());
    let terminated = stopped.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(terminated.exit_code, 143);
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    pods.patch("held", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(release)).await.unwrap();
    eventually("held deleted", wait, || async { pods.get_opt("held").await.unwrap().is_none().then_some(()) }).await;

    // Stopping the simulator stops the heartbeats.
    sim.abort();
    let stopped = sim.await;
    assert!(stopped.as_ref().is_err_and(|e| e.is_cancelled()), "simulator ran until aborted: {stopped:?}");
    // Let a renewal that was already on the wire land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<_> = futures_util::future::join_all((0..3).map(|i| {
        let leases = leases.clone();
        async move { renew_time(&leases.get(&format!("sim-{i}")).await.unwrap()) }
    }))
    .await;
    // Three heartbeat periods without a renewal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, before) in before.iter().enumerate() {
        let after = renew_time(&leases.get(&format!("sim-{i}")).await.unwrap());
        assert_eq!(after, *before, "lease sim-{i} not renewed after the simulator stopped");
    }

    // Started again, it takes over its nodes and the pods still running on them: their status
    // is left as it is and their addresses are not handed out again.
    let web2_before = pods.get("web2").await.unwrap();
    let sim = tokio::spawn(simnodes::run(client.clone(), options));
    eventually("lease renewed after restart", wait, || async { renew_time(&leases.get("sim-1").await.unwrap()).filter(|t| Some(*t) > before[1]) }).await;
    pods.create(&PostParams::default(), &pod("web3", "sim-1", "Always", None)).await.unwrap();
    pods.create(&PostParams::default(), &pod("web4", "sim-1", "Always", None)).await.unwrap();
    let ip3 = running("web3").await.status.unwrap().pod_ip.unwrap();
    let ip4 = running("web4").await.status.unwrap().pod_ip.unwrap();
    assert!(ip3 != ip2 && ip4 != ip2 && ip3 != ip4, "addresses stay unique across a restart: {ip2}, {ip3}, {ip4}");
    let web2_after = pods.get("web2").await.unwrap();
    assert_eq!(web2_after.metadata.resource_version, web2_before.metadata.resource_version, "a running pod is not rewritten");
    let node = nodes.get("sim-1").await.unwrap();
    assert_eq!(node.spec.as_ref().unwrap().pod_cidr.as_deref(), Some(sim1_cidr.as_str()));
    sim.abort();
}
