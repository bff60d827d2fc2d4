//! Importing archives into containerd with its own client, `ctr`.
//!
//! Shelling out keeps the containerd content and image gRPC APIs (and their lease and unpack
//! choreography) out of our build; `ctr` ships in the same Debian package as containerd, so it
//! is present wherever containerd is, and matches its version.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{Error, Result};

/// The containerd client program, looked up on PATH.
pub const CTR: &str = "ctr";
/// The containerd namespace the CRI plugin serves images and containers from.
pub const NAMESPACE: &str = "k8s.io";
/// The snapshotter the CRI plugin creates container filesystems with (its default).
pub const SNAPSHOTTER: &str = "overlayfs";

/// Imports an OCI image-layout archive into the `k8s.io` namespace of the containerd listening
/// on `ctr_address` and unpacks it into the overlayfs snapshotter, so the CRI plugin can run it
/// at once. Importing the same archive again is harmless: the image names are updated in place
/// and the content and snapshots already there are reused.
pub async fn import(ctr_address: &Path, archive: &Path) -> Result<()> {
    if !ctr_address.exists() {
        return Err(Error::NoSocket(ctr_address.to_path_buf()));
    }
    std::fs::metadata(archive).map_err(|source| Error::Read { path: archive.to_path_buf(), source })?;
    // ctr reads `-` as stdin and other leading dashes as flags.
    let archive: PathBuf = if archive.to_string_lossy().starts_with('-') { Path::new(".").join(archive) } else { archive.to_path_buf() };
    let mut command = tokio::process::Command::new(CTR);
    command
        .arg("--address")
        .arg(ctr_address)
        .args(["--namespace", NAMESPACE, "images", "import", "--snapshotter", SNAPSHOTTER])
        .arg(&archive)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::MissingProgram { program: CTR.to_string() },
        _ => Error::Spawn { program: CTR.to_string(), source },
    })?;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(Error::CommandFailed {
        command: format!(
            "{CTR} --address {} --namespace {NAMESPACE} images import --snapshotter {SNAPSHOTTER} {}",
            ctr_address.display(),
            archive.display()
        ),
        status: output.status,
        stderr,
    })
}
