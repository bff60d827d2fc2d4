//! The archive format: an OCI image layout whose blobs are named by their digests and whose
//! index, manifest and config describe each other and the layer.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use images::{Archive, ImageBuilder};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
    bytes: Vec<u8>,
}

/// Reads a tar into path -> entry, checking the metadata every entry must have, and the order.
fn read_tar(bytes: &[u8]) -> BTreeMap<String, Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut entries = BTreeMap::new();
    let mut previous = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        assert!(path > previous, "entries out of order: {previous} then {path}");
        previous = path.clone();
        assert_eq!(header.mtime().unwrap(), 0, "{path}");
        assert_eq!(header.uid().unwrap(), 0, "{path}");
        assert_eq!(header.gid().unwrap(), 0, "{path}");
        let link = entry.link_name().unwrap().map(|link| link.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.insert(path, Entry { kind: header.entry_type(), mode: header.mode().unwrap(), link, bytes: data });
    }
    entries
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A parsed layout: the blobs (checked against their names), index, manifest, config, layer.
struct Layout {
    index: Value,
    manifest: Value,
    config: Value,
    layer: BTreeMap<String, Entry>,
}

fn parse_layout(archive: &Archive) -> Layout {
    let files = read_tar(&archive.bytes);
    assert_eq!(files["oci-layout"].bytes, br#"{"imageLayoutVersion":"1.0.0"}"#);
    assert_eq!(files["blobs"].kind, tar::EntryType::Directory);
    let mut blobs = BTreeMap::new();
    for (path, entry) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256(&entry.bytes), format!("sha256:{hex}"), "blob named by its digest");
            blobs.insert(format!("sha256:{hex}"), entry.bytes.clone());
        }
    }
    assert_eq!(blobs.len(), 3, "manifest, config and one layer");
    let blob = |descriptor: &Value, media_type: &str| -> Vec<u8> {
        assert_eq!(descriptor["mediaType"], media_type);
        let digest = descriptor["digest"].as_str().unwrap();
        let bytes = blobs.get(digest).unwrap_or_else(|| panic!("no blob {digest}")).clone();
        assert_eq!(descriptor["size"].as_u64().unwrap(), bytes.len() as u64, "size of {digest}");
        bytes
    };

    let index: Value = serde_json::from_slice(&files["index.json"].bytes).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], images::MEDIA_TYPE_INDEX);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], archive.manifest_digest.as_str());
    let manifest: Value = serde_json::from_slice(&blob(&manifests[0], images::MEDIA_TYPE_MANIFEST)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["digest"], archive.config_digest.as_str());
    let config: Value = serde_json::from_slice(&blob(&manifest["config"], images::MEDIA_TYPE_CONFIG)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["digest"], archive.layer_digest.as_str());
    let layer_bytes = blob(&layers[0], images::MEDIA_TYPE_LAYER);
    // Uncompressed layer: its diff ID is its digest.
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([archive.layer_digest]));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], images::oci_architecture().unwrap());
    assert_eq!(manifests[0]["platform"]["architecture"], images::oci_architecture().unwrap());
    assert_eq!(manifests[0]["platform"]["os"], "linux");
    let layer = read_tar(&layer_bytes);
    Layout { index, manifest, config, layer }
}

fn busybox() -> &'static Path {
    let path = Path::new(images::DEFAULT_BUSYBOX);
    assert!(path.exists(), "{} is missing: run scripts/setup (as root) to install Debian's busybox-static", path.display());
    path
}

#[test]
fn a_built_image_is_a_consistent_layout() {
    let mut image = ImageBuilder::new("berth.dev/test:2").unwrap();
    image
        .file_bytes("hello\n", "/srv/data/hello.txt", 0o640)
        .unwrap()
        .dir("/tmp", 0o1777)
        .unwrap()
        .symlink("/srv/link", "data/hello.txt")
        .unwrap();
    image.entrypoint(["/bin/app", "--flag"]).cmd(["arg"]).env("GREETING", "hi").env("GREETING", "hello").working_dir("/srv").user("1000:1000");
    let archive = image.build().unwrap();
    let layout = parse_layout(&archive);

    let annotations = &layout.index["manifests"][0]["annotations"];
    assert_eq!(annotations[images::ANNOTATION_CONTAINERD_NAME], "berth.dev/test:2");
    assert_eq!(annotations[images::ANNOTATION_REF_NAME], "berth.dev/test:2");
    assert_eq!(layout.manifest["mediaType"], images::MEDIA_TYPE_MANIFEST);

    let config = &layout.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/app", "--flag"]));
    assert_eq!(config["Cmd"], serde_json::json!(["arg"]));
    assert_eq!(config["Env"], serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"]));
    assert_eq!(config["WorkingDir"], "/srv");
    assert_eq!(config["User"], "1000:1000");

    let paths: Vec<&str> = layout.layer.keys().map(String::as_str).collect();
    assert_eq!(paths, ["srv", "srv/data", "srv/data/hello.txt", "srv/link", "tmp"], "parents added, sorted");
    assert_eq!(layout.layer["srv"].mode, 0o755);
    assert_eq!(layout.layer["tmp"].mode, 0o1777);
    assert_eq!(layout.layer["srv/data/hello.txt"].mode, 0o640);
    assert_eq!(layout.layer["srv/data/hello.txt"].bytes, b"hello\n");
    assert_eq!(layout.layer["srv/link"].kind, tar::EntryType::Symlink);
    assert_eq!(layout.layer["srv/link"].link.as_deref(), Some("data/hello.txt"));

    assert_eq!(image.build().unwrap().bytes, archive.bytes, "building twice gives the same bytes");
}

#[test]
fn long_paths_survive() {
    let long = format!("/{}/file", "d".repeat(150));
    let mut image = ImageBuilder::new("berth.dev/test:long").unwrap();
    image.file_bytes("x", &long, 0o644).unwrap();
    let layout = parse_layout(&image.build().unwrap());
    assert_eq!(layout.layer[&long[1..]].bytes, b"x");
}

#[test]
fn the_busybox_image_has_applets_users_and_directories() {
    let archive = images::busybox_image(images::BUSYBOX_IMAGE, busybox()).unwrap().build().unwrap();
    let layout = parse_layout(&archive);
    let layer = &layout.layer;
    assert_eq!(layer["bin/busybox"].bytes, std::fs::read(busybox()).unwrap());
    assert_eq!(layer["bin/busybox"].mode, 0o755);
    for applet in ["bin/sh", "bin/ls", "bin/sleep", "usr/bin/env", "bin/cat"] {
        assert_eq!(layer[applet].kind, tar::EntryType::Symlink, "{applet}");
        assert_eq!(layer[applet].link.as_deref(), Some("/bin/busybox"), "{applet}");
    }
    let applets = std::process::Command::new(busybox()).arg("--list").output().unwrap();
    let linked = layer.values().filter(|entry| entry.link.as_deref() == Some("/bin/busybox")).count();
    // Every applet but busybox itself.
    assert_eq!(linked, String::from_utf8(applets.stdout).unwrap().lines().filter(|name| *name != "busybox").count());
    assert_eq!(layer["tmp"].mode, 0o1777);
    assert_eq!(layer["var/www"].kind, tar::EntryType::Directory);
    let passwd = String::from_utf8(layer["etc/passwd"].bytes.clone()).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(passwd.contains("\nnobody:x:65534:65534:"), "{passwd}");
    let group = String::from_utf8(layer["etc/group"].bytes.clone()).unwrap();
    assert!(group.contains("root:x:0:") && group.contains("nobody:x:65534:"), "{group}");
    assert_eq!(layout.config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(layout.index["manifests"][0]["annotations"][images::ANNOTATION_CONTAINERD_NAME], images::BUSYBOX_IMAGE);
}

#[test]
fn the_pause_image_is_busybox_and_a_trap() {
    let archive = images::pause_image(images::PAUSE_IMAGE, busybox()).unwrap().build().unwrap();
    let layout = parse_layout(&archive);
    let paths: Vec<&str> = layout.layer.keys().map(String::as_str).collect();
    assert_eq!(paths, ["bin", "bin/busybox"]);
    let entrypoint = layout.config["config"]["Entrypoint"].as_array().unwrap();
    assert_eq!(entrypoint[..3], [serde_json::json!("/bin/busybox"), "sh".into(), "-c".into()]);
    assert!(entrypoint[3].as_str().unwrap().contains("trap 'exit 0' TERM INT"));
    assert_eq!(layout.config["config"]["User"], "65534:65534");
}

#[test]
fn archives_are_written_whole_and_name_their_images() {
    let dir = std::env::temp_dir().join(format!("images-archive-test-{}", std::process::id()));
    let out = dir.join("nested/pause.tar");
    let archive = images::pause_image("berth.dev/pause:test", busybox()).unwrap().write(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), archive.bytes);
    assert_eq!(Archive::references(&out).unwrap(), ["berth.dev/pause:test"]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("nested")).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["pause.tar"], "no temporary file left");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    assert!(matches!(ImageBuilder::new("busybox:1"), Err(images::Error::InvalidReference(_))));
    let mut image = ImageBuilder::new("berth.dev/x:1").unwrap();
    assert!(matches!(image.file_bytes("", "relative", 0o644), Err(images::Error::InvalidPath { .. })));
    assert!(matches!(image.symlink("/a/../b", "/x"), Err(images::Error::InvalidPath { .. })));
    image.file_from_host("/nonexistent/file", "/f", 0o644).unwrap();
    assert!(matches!(image.build(), Err(images::Error::Read { .. })));
    // /bin/sh is dash, dynamically linked, on Debian.
    if std::fs::read_link("/bin/sh").map(|target| target.ends_with("dash")).unwrap_or(false) {
        assert!(matches!(images::busybox_image(images::BUSYBOX_IMAGE, Path::new("/bin/sh")), Err(images::Error::NotStatic { .. })));
    }
}
