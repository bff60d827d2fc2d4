//! `kubectl logs` through the API server's pods/log proxy, against a stand-in for a node's agent:
//! an HTTPS endpoint that, like the agent, serves `/containerLogs/{ns}/{pod}/{container}` from CRI
//! log files with `agent::logs`, and only to clients with a certificate from the cluster CA. It
//! needs no containerd; tests with the real agent cover the rest of the way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::logs::{self, LogQuery, QueryError};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use testsupport::{Server, TempDir};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The stand-in node: log files under `root`, laid out as the kubelet's, and per container
/// whether it is still running (a followed log ends when it stops).
struct StandIn {
    root: PathBuf,
    /// (pod, container) -> (current instance, running)
    containers: Mutex<HashMap<(String, String), (u32, tokio::sync::watch::Sender<bool>)>>,
    /// The user (certificate CN) of each client served.
    clients: Mutex<Vec<String>>,
}

const UID: &str = "uid";

impl StandIn {
    fn log_path(&self, pod: &str, container: &str, instance: u32) -> PathBuf {
        logs::container_log_path(&logs::pod_log_dir(&self.root, "default", pod, UID), container, instance)
    }

    fn add(&self, pod: &str, container: &str, instances: &[&str]) {
        for (i, contents) in instances.iter().enumerate() {
            let path = self.log_path(pod, container, i as u32);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("log dir");
            std::fs::write(&path, contents).expect("write log");
        }
        let current = instances.len().saturating_sub(1) as u32;
        self.containers.lock().unwrap().insert((pod.into(), container.into()), (current, tokio::sync::watch::channel(true).0));
    }

    fn append(&self, pod: &str, container: &str, contents: &str) {
        let current = self.containers.lock().unwrap()[&(pod.to_string(), container.to_string())].0;
        let mut file = std::fs::OpenOptions::new().append(true).open(self.log_path(pod, container, current)).expect("open log");
        file.write_all(contents.as_bytes()).expect("append");
    }

    fn stop(&self, pod: &str, container: &str) {
        self.containers.lock().unwrap()[&(pod.to_string(), container.to_string())].1.send_replace(false);
    }

    /// `/containerLogs/default/{pod}/{container}`, answering errors as the kubelet does (text).
    async fn container_logs(&self, pod: &str, container: &str, query: &str) -> Response<Body> {
        let query = match LogQuery::parse(query, jiff::Timestamp::now()) {
            Ok(q) => q,
            Err(QueryError::BadRequest(m)) => return text(StatusCode::BAD_REQUEST, m),
            Err(QueryError::Invalid(m)) => return text(StatusCode::UNPROCESSABLE_ENTITY, m),
        };
        let known = self.containers.lock().unwrap().get(&(pod.to_string(), container.to_string())).map(|(n, tx)| (*n, tx.subscribe()));
        let Some((current, running)) = known else {
            return text(StatusCode::BAD_REQUEST, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"));
        };
        let instance = match (query.previous, current) {
            (false, n) => n,
            (true, 0) => return text(StatusCode::BAD_REQUEST, format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")),
            (true, n) => n - 1,
        };
        match logs::read_logs(self.log_path(pod, container, instance), query.options, logs::when_not_running(running)).await {
            Ok(stream) => {
                let mut response = Response::new(StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))).boxed_unsync());
                response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
                response
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// Serves the stand-in on a free loopback port with the server's certificate (any would do: the
/// API server does not verify agents yet), requiring client certificates from the cluster CA.
async fn serve(stand_in: Arc<StandIn>, pki: &Path) -> u16 {
    let read = |name: &str| std::fs::read(pki.join(name)).expect("pki file");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("ca.crt")) {
        roots.add(ca.expect("CA")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("server.crt")).collect::<Result<_, _>>().expect("cert");
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, stand_in) = (acceptor.clone(), stand_in.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
                let user = apiserver::tls::identity_from_cert(&der).map(|i| i.user).unwrap_or_default();
                stand_in.clients.lock().unwrap().push(user);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let stand_in = stand_in.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let query = request.uri().query().unwrap_or("").to_string();
                        let response = match path.trim_start_matches('/').split('/').collect::<Vec<_>>().as_slice() {
                            ["containerLogs", "default", pod, container] => stand_in.container_logs(pod, container, &query).await,
                            _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    port
}

const APP_PREVIOUS: &str = "2024-05-01T09:00:00.000000001Z stdout F from the first run\n";
const APP: &str = "\
2024-05-01T10:00:00.000000001Z stdout F hello from app
2024-05-01T10:00:01.000000002Z stderr F a warning
2024-05-01T10:00:02.000000003Z stdout P split 
2024-05-01T10:00:02.000000004Z stdout F line
2024-05-01T10:00:03.000000005Z stdout F last line
";

fn pod_yaml(name: &str, node: Option<&str>, containers: &[&str], init: &[&str]) -> String {
    let list = |names: &[&str]| names.iter().map(|n| format!("  - name: {n}\n    image: busybox:1.36\n")).collect::<String>();
    let node = node.map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
    let init = if init.is_empty() { String::new() } else { format!("  initContainers:\n{}", list(init)) };
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{node}{init}  containers:\n{}", list(containers))
}

#[test]
fn kubectl_logs_through_the_api_server() {
    // Without a scheduler, a pod without nodeName stays unbound.
    let s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--disable-scheduler"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let logs_dir = TempDir::new("stand-in-logs");
    let stand_in = Arc::new(StandIn { root: logs_dir.path.clone(), containers: Mutex::default(), clients: Mutex::default() });
    let port = runtime.block_on(serve(stand_in.clone(), &s.data_dir().join("pki")));

    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: stand-in\nstatus:\n  addresses:\n  - type: Hostname\n    address: stand-in\n  - type: InternalIP\n    address: 127.0.0.1\n  daemonEndpoints:\n    kubeletEndpoint:\n      Port: {port}\n"
    );
    s.ok_stdin(&["create", "-f", "-"], &node);
    stand_in.add("one", "app", &[APP_PREVIOUS, APP]);
    stand_in.add("two", "a", &["2024-05-01T10:00:00Z stdout F I am a\n"]);
    stand_in.add("two", "b", &["2024-05-01T10:00:00Z stdout F I am b\n"]);
    s.ok_stdin(&["create", "-f", "-"], &pod_yaml("one", Some("stand-in"), &["app"], &[]));
    s.ok_stdin(&["create", "-f", "-"], &pod_yaml("two", Some("stand-in"), &["a", "b"], &["setup"]));
    s.ok_stdin(&["create", "-f", "-"], &pod_yaml("unbound", None, &["app"], &[]));

    // Content only, split lines joined, both streams.
    assert_eq!(s.ok(&["logs", "one"]), "hello from app\na warning\nsplit line\nlast line\n");
    assert_eq!(s.ok(&["logs", "one", "--tail=1"]), "last line\n");
    assert_eq!(s.ok(&["logs", "one", "--tail=2"]), "split line\nlast line\n");
    assert_eq!(s.ok(&["logs", "one", "--limit-bytes=8"]), "hello fr");
    assert_eq!(
        s.ok(&["logs", "one", "--timestamps"]),
        "2024-05-01T10:00:00.000000001Z hello from app\n2024-05-01T10:00:01.000000002Z a warning\n2024-05-01T10:00:02.000000003Z split line\n2024-05-01T10:00:03.000000005Z last line\n"
    );
    assert_eq!(s.ok(&["logs", "one", "--since-time=2024-05-01T10:00:02Z"]), "split line\nlast line\n");
    assert_eq!(s.ok(&["logs", "one", "--previous"]), "from the first run\n");
    assert_eq!(s.ok(&["logs", "one", "-c", "app"]), s.ok(&["logs", "one"]));

    // Several containers: -c picks one; kubectl itself defaults to the first when none is named,
    // and the server, asked without a container, names the choices as upstream does.
    assert_eq!(s.ok(&["logs", "two", "-c", "b"]), "I am b\n");
    let out = s.kubectl(&["logs", "two"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "I am a\n");
    let err = s.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/two/log"]);
    assert!(err.contains("a container name must be specified for pod two, choose one of: [setup a b]"), "{err}");
    let err = s.fails(&["logs", "two", "-c", "nope"]);
    assert!(err.contains("container nope is not valid for pod two"), "{err}");

    // The node's own errors come through as it words them.
    let err = s.fails(&["logs", "two", "-c", "setup"]);
    assert!(err.contains(r#"Error from server (BadRequest): container "setup" in pod "two" is waiting to start: ContainerCreating"#), "{err}");
    let err = s.fails(&["logs", "two", "-c", "a", "--previous"]);
    assert!(err.contains(r#"previous terminated container "a" in pod "two" not found"#), "{err}");

    // Options the API server refuses before asking the node.
    let err = s.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/one/log?tailLines=-2"]);
    assert!(err.contains("PodLogOptions \"one\" is invalid: tailLines: Invalid value: -2: must be greater than or equal to 0"), "{err}");

    // A pod on no node has no log yet: nothing, and no error (upstream answers 204).
    assert_eq!(s.ok(&["logs", "unbound"]), "");

    // Following streams lines as they are written and ends when the container stops.
    let mut follow = s.kubectl_command(&["logs", "-f", "one", "--tail=1"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kubectl logs -f");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || lines_rx.recv_timeout(Duration::from_secs(20)).expect("a line within 20s").expect("utf-8");
    assert_eq!(next(), "last line");
    stand_in.append("one", "app", "2024-05-01T10:00:04.000000006Z stdout F appended while following\n");
    assert_eq!(next(), "appended while following");
    stand_in.append("one", "app", "2024-05-01T10:00:05.000000007Z stderr P and ");
    stand_in.append("one", "app", "another\n2024-05-01T10:00:05.000000008Z stderr F  one\n");
    assert_eq!(next(), "and another one");
    stand_in.append("one", "app", "2024-05-01T10:00:06Z stdout F last words\n");
    stand_in.stop("one", "app");
    assert_eq!(next(), "last words");
    let status = follow.wait().expect("kubectl exits once the container stopped");
    assert!(status.success());

    // Every request reached the node with the API server's kubelet-client certificate.
    let clients = stand_in.clients.lock().unwrap().clone();
    assert!(!clients.is_empty());
    assert!(clients.iter().all(|c| c == "kube-apiserver-kubelet-client"), "{clients:?}");
}
