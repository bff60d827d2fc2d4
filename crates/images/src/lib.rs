//! The node's own images, built from the host's static busybox so that a node needs no registry:
//! the pod sandbox (`pause`) image and a small busybox image for tests and examples. `registry`
//! serves such archives as a read-only registry, to exercise pulls over the network.
//!
//! Images are written as OCI image-layout archives (a tar of `oci-layout`, `index.json` and
//! `blobs/sha256/...`) that `ctr images import` names from the `io.containerd.image.name`
//! annotation. The output is byte-for-byte reproducible: the same inputs give the same digests,
//! so re-importing an unchanged image is a no-op for containerd.

mod builder;
mod ctr;
pub mod registry;
mod system;

pub use builder::{Archive, ImageBuilder, oci_architecture};
pub use ctr::{CTR, NAMESPACE, SNAPSHOTTER, import};
pub use system::{busybox_image, pause_image};

use std::path::PathBuf;

/// The sandbox image every pod's infrastructure container runs (containerd's CRI
/// `sandbox_image`).
pub const PAUSE_IMAGE: &str = "berth.dev/pause:1";
/// A busybox image with every applet linked, `/etc/passwd`, `/tmp` and `/var/www`.
pub const BUSYBOX_IMAGE: &str = "berth.dev/busybox:1";
/// Where Debian's busybox-static installs its (statically linked) binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Annotation containerd's importer takes the image name from (it wins over the OCI one).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI image-layout reference annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path {path:?} in image: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path:?} in image: its parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("invalid image reference {0:?}: expected a full name with a tag, such as berth.dev/busybox:1")]
    InvalidReference(String),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a statically linked executable ({reason}); install Debian's busybox-static (scripts/setup) or pass its path")]
    NotStatic { path: PathBuf, reason: String },
    #[error("no OCI architecture name known for this host's {0:?}")]
    UnsupportedArchitecture(&'static str),
    #[error("{program} was not found; run scripts/setup (as root) to install it")]
    MissingProgram { program: String },
    #[error("running {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: std::process::ExitStatus, stderr: String },
    #[error("containerd socket {0} does not exist: is containerd running there?")]
    NoSocket(PathBuf),
    #[error("malformed image archive {path}: {reason}")]
    MalformedArchive { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
