//! One-layer images as OCI image-layout archives.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Error, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST,
    Result,
};

/// The PATH of the images we build, as Docker's default for Linux containers.
pub(crate) const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum Content {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

enum Entry {
    Dir { mode: u32 },
    File { content: Content, mode: u32 },
    Symlink { target: String },
}

/// Collects the files of a single-layer image and its run configuration, then writes the OCI
/// image-layout archive.
///
/// Paths are absolute paths inside the image (`/bin/sh`); missing parent directories are added
/// with mode 0755. Adding a path twice replaces the earlier entry.
pub struct ImageBuilder {
    reference: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    user: String,
}

/// A built image archive, held in memory (our images are a few MiB).
#[derive(Debug, Clone)]
pub struct Archive {
    pub reference: String,
    /// `sha256:...` of the manifest: what containerd lists as the image's digest.
    pub manifest_digest: String,
    /// `sha256:...` of the config: the image ID the CRI plugin reports.
    pub config_digest: String,
    pub layer_digest: String,
    /// The tar file itself.
    pub bytes: Vec<u8>,
}

impl ImageBuilder {
    /// `reference` is the full name containerd will list, e.g. `berth.dev/busybox:1`. It must
    /// carry a registry domain: the CRI plugin normalises short names (`busybox:1` becomes
    /// `docker.io/library/busybox:1`), so an image imported under a short name is never found.
    pub fn new(reference: &str) -> Result<Self> {
        validate_reference(reference)?;
        Ok(ImageBuilder {
            reference: reference.to_string(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec![DEFAULT_PATH.to_string()],
            working_dir: "/".to_string(),
            user: String::new(),
        })
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// A file copied from the host when the archive is built.
    pub fn file_from_host(&mut self, host_path: impl Into<PathBuf>, path: &str, mode: u32) -> Result<&mut Self> {
        self.insert(path, Entry::File { content: Content::Host(host_path.into()), mode })
    }

    /// A file with the given contents.
    pub fn file_bytes(&mut self, bytes: impl Into<Vec<u8>>, path: &str, mode: u32) -> Result<&mut Self> {
        self.insert(path, Entry::File { content: Content::Bytes(bytes.into()), mode })
    }

    /// A directory; `mode` may carry the sticky bit (0o1777 for `/tmp`).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        self.insert(path, Entry::Dir { mode })
    }

    /// A symbolic link at `path` pointing to `target` (taken literally, absolute or relative).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        if target.is_empty() {
            return Err(Error::InvalidPath { path: path.to_string(), reason: "empty symlink target" });
        }
        self.insert(path, Entry::Symlink { target: target.to_string() })
    }

    /// The process's executable and first arguments (OCI `config.Entrypoint`).
    pub fn entrypoint<S: Into<String>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    /// Default arguments, replaced by a container's own (OCI `config.Cmd`).
    pub fn cmd<S: Into<String>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut Self {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable (replacing an earlier value of the same name; PATH is set by
    /// default).
    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        let prefix = format!("{name}=");
        self.env.retain(|entry| !entry.starts_with(&prefix));
        self.env.push(format!("{name}={value}"));
        self
    }

    pub fn working_dir(&mut self, dir: &str) -> &mut Self {
        self.working_dir = dir.to_string();
        self
    }

    /// `uid`, `uid:gid` or a name from the image's `/etc/passwd`; empty means root.
    pub fn user(&mut self, user: &str) -> &mut Self {
        self.user = user.to_string();
        self
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<&mut Self> {
        let path = normalize(path)?;
        // Every proper prefix ending at a slash is an ancestor directory.
        for (index, _) in path.match_indices('/') {
            self.entries.entry(path[..index].to_string()).or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(path, entry);
        Ok(self)
    }

    /// Builds the layer, config, manifest and index, and returns the archive.
    pub fn build(&self) -> Result<Archive> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = self.config_json(&layer_digest)?.to_string().into_bytes();
        let config_digest = digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": { "mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": MEDIA_TYPE_LAYER, "digest": layer_digest, "size": layer.len() } ],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = digest(&manifest);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [ {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": oci_architecture()?, "os": "linux" },
                // ctr 1.6 names the image from io.containerd.image.name alone. The OCI
                // annotation also carries the full name (its character set allows `/:`), which
                // ctr would keep as-is were the containerd one missing, and which other tools
                // (podman, skopeo) read.
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: self.reference,
                    ANNOTATION_REF_NAME: self.reference,
                },
            } ],
        })
        .to_string()
        .into_bytes();

        let mut blobs = BTreeMap::new();
        for blob in [&layer, &config, &manifest] {
            blobs.insert(hex_of(blob), blob.as_slice());
        }
        let mut out = TarWriter::new();
        out.dir("blobs", 0o755)?;
        out.dir("blobs/sha256", 0o755)?;
        for (hex, blob) in &blobs {
            out.file(&format!("blobs/sha256/{hex}"), 0o644, blob)?;
        }
        out.file("index.json", 0o644, &index)?;
        out.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Archive { reference: self.reference.clone(), manifest_digest, config_digest, layer_digest, bytes: out.finish()? })
    }

    /// Builds the archive and writes it to `out` (atomically: readers never see half a file).
    pub fn write(&self, out: &Path) -> Result<Archive> {
        let archive = self.build()?;
        archive.write_to(out)?;
        Ok(archive)
    }

    fn layer(&self) -> Result<Vec<u8>> {
        let mut out = TarWriter::new();
        for (path, entry) in &self.entries {
            if let Some((parent, _)) = path.rsplit_once('/')
                && !matches!(self.entries.get(parent), Some(Entry::Dir { .. }))
            {
                return Err(Error::ParentNotDirectory { path: format!("/{path}"), parent: format!("/{parent}") });
            }
            match entry {
                Entry::Dir { mode } => out.dir(path, *mode)?,
                Entry::Symlink { target } => out.symlink(path, target)?,
                Entry::File { content: Content::Bytes(bytes), mode } => out.file(path, *mode, bytes)?,
                Entry::File { content: Content::Host(host), mode } => {
                    let bytes = std::fs::read(host).map_err(|source| Error::Read { path: host.clone(), source })?;
                    out.file(path, *mode, &bytes)?;
                }
            }
        }
        out.finish()
    }

    fn config_json(&self, layer_digest: &str) -> Result<Value> {
        let mut config = serde_json::Map::new();
        if !self.user.is_empty() {
            config.insert("User".into(), json!(self.user));
        }
        config.insert("Env".into(), json!(self.env));
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        config.insert("WorkingDir".into(), json!(self.working_dir));
        // No "created" time: the image must not change between builds of the same inputs.
        Ok(json!({
            "architecture": oci_architecture()?,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [ { "created_by": format!("berth images ({})", self.reference) } ],
        }))
    }
}

impl Archive {
    /// Writes the archive through a temporary file in the same directory and renames it into
    /// place, so an agent importing at start never reads a partial archive.
    pub fn write_to(&self, out: &Path) -> Result<()> {
        let write_error = |source| Error::Write { path: out.to_path_buf(), source };
        let parent = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(write_error)?;
        let file_name = out.file_name().ok_or_else(|| write_error(std::io::Error::other("not a file path")))?;
        let mut temporary_name = file_name.to_os_string();
        temporary_name.push(format!(".tmp-{}", std::process::id()));
        let temporary = parent.join(temporary_name);
        let result = std::fs::write(&temporary, &self.bytes).and_then(|()| std::fs::rename(&temporary, out));
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        result.map_err(write_error)
    }

    /// The image names an archive's `index.json` declares (containerd's annotation, else the OCI
    /// one).
    pub fn references(archive: &Path) -> Result<Vec<String>> {
        let malformed = |reason: String| Error::MalformedArchive { path: archive.to_path_buf(), reason };
        let file = std::fs::File::open(archive).map_err(|source| Error::Read { path: archive.to_path_buf(), source })?;
        let mut tar = tar::Archive::new(file);
        let entries = tar.entries().map_err(|error| malformed(error.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|error| malformed(error.to_string()))?;
            let is_index = entry.path().map(|path| path == Path::new("index.json")).unwrap_or(false);
            if !is_index {
                continue;
            }
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(|error| malformed(error.to_string()))?;
            let index: Value = serde_json::from_slice(&text).map_err(|error| malformed(format!("index.json: {error}")))?;
            let manifests = index["manifests"].as_array().ok_or_else(|| malformed("index.json has no manifests".into()))?;
            return Ok(manifests
                .iter()
                .filter_map(|manifest| {
                    let annotations = &manifest["annotations"];
                    annotations[ANNOTATION_CONTAINERD_NAME].as_str().or_else(|| annotations[ANNOTATION_REF_NAME].as_str()).map(str::to_string)
                })
                .collect());
        }
        Err(malformed("no index.json".into()))
    }
}

/// The OCI (Go) name of the host's architecture, as containerd matches platforms by.
pub fn oci_architecture() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => return Err(Error::UnsupportedArchitecture(other)),
    })
}

/// `sha256:<hex>`, the OCI digest of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex_of(bytes))
}

fn hex_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Strips the leading slash and rejects what a layer must not hold.
fn normalize(path: &str) -> Result<String> {
    let invalid = |reason| Err(Error::InvalidPath { path: path.to_string(), reason });
    let Some(relative) = path.strip_prefix('/') else {
        return invalid("paths in images are absolute");
    };
    let relative = relative.trim_end_matches('/');
    if relative.is_empty() {
        return invalid("the root directory is implicit");
    }
    for component in relative.split('/') {
        match component {
            "" => return invalid("empty path component"),
            "." | ".." => return invalid("`.` and `..` are not allowed"),
            // Whiteouts would delete files of lower layers; a base layer has none.
            name if name.starts_with(".wh.") => return invalid("`.wh.` names are overlay whiteouts"),
            _ => {}
        }
    }
    if relative.contains('\0') {
        return invalid("NUL in path");
    }
    Ok(relative.to_string())
}

/// Accepts `domain/path:tag` (optionally `@sha256:...`), where the domain has a dot or a port
/// or is `localhost`, so the name is already what the CRI plugin normalises to.
fn validate_reference(reference: &str) -> Result<()> {
    let invalid = || Err(Error::InvalidReference(reference.to_string()));
    let name_and_tag = reference.split('@').next().unwrap_or_default();
    let Some((domain, rest)) = name_and_tag.split_once('/') else { return invalid() };
    if !(domain.contains('.') || domain.contains(':') || domain == "localhost") {
        return invalid();
    }
    let Some((path, tag)) = rest.rsplit_once(':') else { return invalid() };
    let path_ok = !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        });
    let tag_ok = !tag.is_empty() && tag.len() <= 128 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if path_ok && tag_ok { Ok(()) } else { invalid() }
}

/// A tar stream with fixed metadata: owner root, mtime 0, no user or group names.
struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
}

impl TarWriter {
    fn new() -> Self {
        TarWriter { builder: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder.append_data(&mut header, path, std::io::empty()).map_err(tar_error)
    }

    fn file(&mut self, path: &str, mode: u32, bytes: &[u8]) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.builder.append_data(&mut header, path, bytes).map_err(tar_error)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut header, path, target).map_err(tar_error)
    }

    fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().map_err(tar_error)
    }
}

fn tar_error(source: std::io::Error) -> Error {
    // Writing into a Vec cannot fail for I/O reasons; what remains are invalid names.
    Error::Write { path: PathBuf::from("<archive in memory>"), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_checked() {
        assert_eq!(normalize("/bin/sh").unwrap(), "bin/sh");
        assert_eq!(normalize("/var/www/").unwrap(), "var/www");
        for bad in ["bin/sh", "/", "/a//b", "/a/../b", "/./a", "/a/.wh.b"] {
            assert!(normalize(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn references_must_be_fully_qualified() {
        for good in ["berth.dev/busybox:1", "localhost/x:y", "registry:5000/a/b:v1.2_3-x", "berth.dev/pause:1@sha256:abc"] {
            assert!(validate_reference(good).is_ok(), "{good} rejected");
        }
        for bad in ["busybox:1", "busybox", "berth.dev/busybox", "berth.dev/Busybox:1", "docker/busybox:1", "berth.dev/:1", "berth.dev/a:"] {
            assert!(validate_reference(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_file_under_a_symlink_is_refused() {
        let mut image = ImageBuilder::new("berth.dev/t:1").unwrap();
        image.symlink("/lib", "/usr/lib").unwrap();
        image.file_bytes("x", "/lib/x", 0o644).unwrap();
        assert!(matches!(image.build(), Err(Error::ParentNotDirectory { .. })));
    }
}
