//! Pod volumes on the node: directories under `DATA/agent/pods/UID/volumes/`, filled the way the
//! kubelet's volume plugins fill them, and the bind mounts containers get.
//!
//! ConfigMap, Secret, downward API and projected volumes are written as the kubelet's atomic
//! writer does: the files live in a timestamped directory, `..data` is a symlink to it, and each
//! visible name is a symlink through `..data`. Swapping `..data` with a rename updates every file
//! at once, which is how running containers see changed objects.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, ServiceAccountTokenProjection, Volume};

use crate::cri::api;
use crate::env::{self, ConfigError, Sources};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("volume {volume}: {message}")]
    Invalid { volume: String, message: String },
    #[error("mounting {path}: {message}")]
    Mount { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io { path: path.to_path_buf(), source }
}

/// The directory of one pod's volumes.
pub fn pod_volumes_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid).join("volumes")
}

fn plugin_dir(volume: &Volume) -> &'static str {
    if volume.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if volume.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if volume.secret.is_some() {
        "kubernetes.io~secret"
    } else if volume.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if volume.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        "kubernetes.io~other"
    }
}

/// Prepares every volume of the pod (again: refreshes ConfigMap/Secret contents) and returns the
/// host path of each by name. `claims` gives a claim's volume path and `tokens` a service account
/// token for a projection, or why not (both are fetched from the API beforehand).
pub async fn prepare(
    pods_dir: &Path,
    pod: &Pod,
    host_ip: &str,
    pod_ips: &[String],
    sources: &mut Sources,
    claims: &(dyn Fn(&str) -> Result<PathBuf, String> + Sync),
    tokens: &(dyn Fn(&ServiceAccountTokenProjection) -> Result<String, String> + Sync),
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("unknown");
    let base = pod_volumes_dir(pods_dir, uid);
    let mut paths = BTreeMap::new();
    for volume in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = base.join(plugin_dir(volume)).join(&volume.name);
        let invalid = |message: &str| VolumeError::Invalid { volume: volume.name.clone(), message: message.to_string() };
        if let Some(empty) = &volume.empty_dir {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            // World-writable like upstream's emptyDir, so non-root containers can use it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io(&dir))?;
            if empty.medium.as_deref() == Some("Memory") {
                mount_tmpfs(&dir, empty.size_limit.as_ref().map(|q| q.0.as_str())).await?;
            }
            paths.insert(volume.name.clone(), dir);
        } else if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(io(&path))?;
                }
                "FileOrCreate" => {
                    if !path.exists() {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(io(parent))?;
                        }
                        std::fs::File::create(&path).map_err(io(&path))?;
                    }
                }
                "Directory" if !path.is_dir() => return Err(invalid(&format!("hostPath type check failed: {} is not a directory", host.path))),
                "File" if !path.is_file() => return Err(invalid(&format!("hostPath type check failed: {} is not a file", host.path))),
                "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => return Err(invalid(&format!("hostPath type check failed: {} does not exist", host.path))),
                _ => {}
            }
            paths.insert(volume.name.clone(), path);
        } else if let Some(source) = &volume.config_map {
            let files = match sources.configmap(&source.name).await? {
                Some(cm) => key_files(configmap_entries(&cm), source.items.as_deref(), source.default_mode, &volume.name)?,
                None if source.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError::ConfigMapNotFound(source.name.clone()).into()),
            };
            write_atomic(&dir, &files, Some(0o777))?;
            paths.insert(volume.name.clone(), dir);
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let files = match sources.secret(&name).await? {
                Some(secret) => key_files(secret_entries(&secret), source.items.as_deref(), source.default_mode, &volume.name)?,
                None if source.optional.unwrap_or(false) => BTreeMap::new(),
                None => return Err(ConfigError::SecretNotFound(name).into()),
            };
            write_atomic(&dir, &files, Some(0o777))?;
            paths.insert(volume.name.clone(), dir);
        } else if let Some(source) = &volume.downward_api {
            let mut files = BTreeMap::new();
            for item in source.items.iter().flatten() {
                let content = downward_item(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()), item.resource_field_ref.as_ref(), host_ip, pod_ips)?;
                files.insert(checked_path(&item.path, &volume.name)?, (content.into_bytes(), item.mode.or(source.default_mode).unwrap_or(0o644)));
            }
            write_atomic(&dir, &files, Some(0o777))?;
            paths.insert(volume.name.clone(), dir);
        } else if let Some(projected) = &volume.projected {
            let mut files = BTreeMap::new();
            for source in projected.sources.iter().flatten() {
                if let Some(cm_source) = &source.config_map {
                    match sources.configmap(&cm_source.name).await? {
                        Some(cm) => files.extend(key_files(configmap_entries(&cm), cm_source.items.as_deref(), projected.default_mode, &volume.name)?),
                        None if cm_source.optional.unwrap_or(false) => {}
                        None => return Err(ConfigError::ConfigMapNotFound(cm_source.name.clone()).into()),
                    }
                }
                if let Some(secret_source) = &source.secret {
                    match sources.secret(&secret_source.name).await? {
                        Some(secret) => files.extend(key_files(secret_entries(&secret), secret_source.items.as_deref(), projected.default_mode, &volume.name)?),
                        None if secret_source.optional.unwrap_or(false) => {}
                        None => return Err(ConfigError::SecretNotFound(secret_source.name.clone()).into()),
                    }
                }
                if let Some(downward) = &source.downward_api {
                    for item in downward.items.iter().flatten() {
                        let content = downward_item(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()), item.resource_field_ref.as_ref(), host_ip, pod_ips)?;
                        files.insert(checked_path(&item.path, &volume.name)?, (content.into_bytes(), item.mode.or(projected.default_mode).unwrap_or(0o644)));
                    }
                }
                if let Some(token_source) = &source.service_account_token {
                    let token = tokens(token_source).map_err(|message| invalid(&message))?;
                    files.insert(checked_path(&token_source.path, &volume.name)?, (token.into_bytes(), projected.default_mode.unwrap_or(0o644)));
                }
            }
            write_atomic(&dir, &files, Some(0o777))?;
            paths.insert(volume.name.clone(), dir);
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let path = claims(&claim.claim_name).map_err(|message| invalid(&message))?;
            paths.insert(volume.name.clone(), path);
        } else {
            return Err(invalid("this volume type is not supported by the berth agent"));
        }
    }
    Ok(paths)
}

fn configmap_entries(cm: &k8s_openapi::api::core::v1::ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    entries.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    entries
}

fn secret_entries(secret: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

/// The files of a ConfigMap or Secret volume: every key, or only the listed items (a missing
/// listed key is an error unless the source is optional, as upstream).
fn key_files(entries: BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>, default_mode: Option<i32>, volume: &str) -> Result<BTreeMap<String, (Vec<u8>, i32)>, VolumeError> {
    let default_mode = default_mode.unwrap_or(0o644);
    let mut files = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let content = entries.get(&item.key).ok_or_else(|| VolumeError::Invalid { volume: volume.into(), message: format!("configuration key {} not found", item.key) })?;
                files.insert(checked_path(&item.path, volume)?, (content.clone(), item.mode.unwrap_or(default_mode)));
            }
        }
        _ => {
            for (key, content) in entries {
                files.insert(checked_path(&key, volume)?, (content, default_mode));
            }
        }
    }
    Ok(files)
}

/// Item paths are relative, without `..` elements, and do not start with `..` (reserved).
fn checked_path(path: &str, volume: &str) -> Result<String, VolumeError> {
    let bad = path.is_empty() || path.starts_with('/') || path.starts_with("..") || path.split('/').any(|part| part == ".." || part.is_empty());
    if bad {
        return Err(VolumeError::Invalid { volume: volume.into(), message: format!("invalid item path {path:?}") });
    }
    Ok(path.to_string())
}

fn downward_item(pod: &Pod, field: Option<&str>, resource: Option<&k8s_openapi::api::core::v1::ResourceFieldSelector>, host_ip: &str, pod_ips: &[String]) -> Result<String, VolumeError> {
    if let Some(path) = field {
        return Ok(env::pod_field(pod, path, host_ip, pod_ips)?);
    }
    if let Some(resource) = resource {
        let name = resource.container_name.as_deref().unwrap_or("");
        let container: &Container = env::all_containers(pod).find(|c| c.name == name).ok_or_else(|| ConfigError::Field(format!("container {name:?} not found")))?;
        return Ok(env::resource_field(container, &resource.resource, resource.divisor.as_ref().map(|d| d.0.as_str()))?);
    }
    Ok(String::new())
}

/// Writes `files` as the atomic writer does; unchanged content is left alone so a resync every
/// few seconds costs only reads.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, (Vec<u8>, i32)>, dir_mode: Option<u32>) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if let Some(mode) = dir_mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
    }
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current_dir = dir.join(&current);
        if same_contents(&current_dir, files) {
            return Ok(());
        }
    }
    let stamp = format!("..{}", jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f"));
    let new_dir = dir.join(&stamp);
    std::fs::create_dir_all(&new_dir).map_err(io(&new_dir))?;
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&new_dir))?;
    for (path, (content, mode)) in files {
        let target = new_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&target, content).map_err(io(&target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode as u32 & 0o777)).map_err(io(&target))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link).map_err(io(&tmp_link))?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link).map_err(io(&data_link))?;
    // Visible names: one symlink per top-level entry, through ..data.
    let mut top: Vec<String> = files.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    top.dedup();
    for name in &top {
        let link = dir.join(name);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            symlink(Path::new("..data").join(name), &link).map_err(io(&link))?;
        }
    }
    // Names that are gone, and the previous data directory.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !top.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old.filter(|old| old.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn same_contents(dir: &Path, files: &BTreeMap<String, (Vec<u8>, i32)>) -> bool {
    let mut count = 0usize;
    for (path, (content, mode)) in files {
        let target = dir.join(path);
        match (std::fs::read(&target), std::fs::metadata(&target)) {
            (Ok(existing), Ok(meta)) if existing == *content && meta.permissions().mode() & 0o777 == (*mode as u32 & 0o777) => count += 1,
            _ => return false,
        }
    }
    // Removed keys: any regular file not in `files` means a change.
    fn count_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|entries| entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()).unwrap_or(0)
    }
    count == count_files(dir)
}

async fn mount_tmpfs(dir: &Path, size_limit: Option<&str>) -> Result<(), VolumeError> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut options = String::from("mode=0777");
    if let Some(limit) = size_limit.and_then(|l| scheduler::quantity::parse_value(l).ok()) {
        options.push_str(&format!(",size={limit}"));
    }
    let output = tokio::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(dir).output().await.map_err(io(dir))?;
    if !output.status.success() {
        return Err(VolumeError::Mount { path: dir.into(), message: String::from_utf8_lossy(&output.stderr).trim().to_string() });
    }
    Ok(())
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = dir.display().to_string();
    mounts.lines().any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Unmounts memory-backed volumes and removes the pod's directory.
pub async fn cleanup(pods_dir: &Path, uid: &str) {
    let pod_dir = pods_dir.join(uid);
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let prefix = pod_dir.display().to_string();
    for mount_point in mounts.lines().filter_map(|line| line.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)) {
        let _ = tokio::process::Command::new("umount").arg(mount_point).status().await;
    }
    if let Err(error) = std::fs::remove_dir_all(&pod_dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, dir = %pod_dir.display(), "removing a pod's directory");
    }
}

/// The CRI mounts of one container: its volumeMounts (with subPath) plus /etc/hosts and the
/// termination message file the kubelet provides.
pub fn container_mounts(container: &Container, volume_paths: &BTreeMap<String, PathBuf>, env: &[(String, String)], extra: &[(PathBuf, String)]) -> Result<Vec<api::Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let base = volume_paths.get(&mount.name).ok_or_else(|| VolumeError::Invalid { volume: mount.name.clone(), message: format!("volumeMount {} refers to no volume of the pod", mount.name) })?;
        let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => Some(sub.clone()),
            (_, Some(expr)) if !expr.is_empty() => Some(env::expand(expr, env)),
            _ => None,
        };
        let host_path = match sub_path {
            Some(sub) => {
                let checked = checked_path(&sub, &mount.name)?;
                let path = base.join(checked);
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(io(&path))?;
                }
                path
            }
            None => base.clone(),
        };
        let propagation = match mount.mount_propagation.as_deref() {
            Some("HostToContainer") => api::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => api::MountPropagation::PropagationBidirectional,
            _ => api::MountPropagation::PropagationPrivate,
        };
        mounts.push(api::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: mount.read_only.unwrap_or(false),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    for (host, container_path) in extra {
        if !mounts.iter().any(|m| m.container_path == *container_path) {
            mounts.push(api::Mount { container_path: container_path.clone(), host_path: host.display().to_string(), ..Default::default() });
        }
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_swap_data_and_drop_removed_keys() {
        let dir = std::env::temp_dir().join(format!("berth-volume-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), (b"one".to_vec(), 0o644));
        files.insert("sub/b".to_string(), (b"two".to_vec(), 0o600));
        write_atomic(&dir, &files, None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "two");
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        write_atomic(&dir, &files, None).unwrap();
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first, "unchanged content keeps the data directory");
        files.remove("sub/b");
        files.insert("a".to_string(), (b"uno".to_vec(), 0o644));
        write_atomic(&dir, &files, None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "uno");
        assert!(!dir.join("sub").exists());
        assert!(!dir.join(&first).exists(), "the old data directory is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn item_paths_cannot_escape() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "..data", "a//b", ""] {
            assert!(checked_path(bad, "v").is_err(), "{bad}");
        }
        assert_eq!(checked_path("a/b.txt", "v").unwrap(), "a/b.txt");
    }
}
