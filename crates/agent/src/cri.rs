//! The CRI v1 client over containerd's Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub use k8s_cri::v1 as api;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to the container runtime at {path}: {source}")]
    Connect { path: PathBuf, source: tonic::transport::Error },
    #[error("container runtime: {0}")]
    Call(#[from] tonic::Status),
}

/// Both CRI services on one HTTP/2 connection. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects lazily: the channel reconnects by itself when containerd restarts.
    pub fn connect(socket: &Path) -> Result<Self, CriError> {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: every connection goes to the socket.
        let endpoint = Endpoint::try_from("http://[::1]:50051")
            .map_err(|source| CriError::Connect { path: path.clone(), source })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }));
        // Image pulls and container creations carry large messages (image lists).
        let runtime = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20);
        let images = ImageServiceClient::new(channel).max_decoding_message_size(16 << 20);
        Ok(Self { runtime, images })
    }

    /// The runtime's name and version, e.g. `containerd://1.6.20`.
    pub async fn version(&self) -> Result<String, CriError> {
        let response = self.runtime.clone().version(api::VersionRequest { version: "v1".into() }).await?.into_inner();
        Ok(format!("{}://{}", response.runtime_name, response.runtime_version))
    }

    /// Whether the runtime and its network are ready; the reasons when not.
    pub async fn status(&self) -> Result<RuntimeReadiness, CriError> {
        let response = self.runtime.clone().status(api::StatusRequest { verbose: false }).await?.into_inner();
        let mut readiness = RuntimeReadiness { runtime_ready: false, network_ready: false, message: String::new() };
        for condition in response.status.map(|s| s.conditions).unwrap_or_default() {
            match condition.r#type.as_str() {
                "RuntimeReady" => readiness.runtime_ready = condition.status,
                "NetworkReady" => readiness.network_ready = condition.status,
                _ => {}
            }
            if !condition.status && !condition.message.is_empty() {
                if !readiness.message.is_empty() {
                    readiness.message.push_str("; ");
                }
                readiness.message.push_str(&format!("{}: {}", condition.reason, condition.message));
            }
        }
        Ok(readiness)
    }
}

#[derive(Clone, Debug)]
pub struct RuntimeReadiness {
    pub runtime_ready: bool,
    pub network_ready: bool,
    pub message: String,
}
