//! Registry hosts for the agent's containerd, in containerd's own format: one
//! `DATA/agent/containerd/certs.d/<host:port>/hosts.toml` per registry (the CRI plugin's
//! `registry.config_path`; containerd reads it at every pull, so files can also be dropped there
//! by hand while the agent runs: mirrors, CA files, client certificates).
//!
//! The agent writes one for each `--insecure-registry HOST:PORT`: pull and resolve over plain
//! HTTP, which containerd 1.6 otherwise never tries for a host that is not `localhost`.

use std::path::Path;

use crate::AgentError;

/// Checks a registry host for the command line (a clap value parser).
pub fn parse_host(registry: &str) -> Result<String, String> {
    if valid_host(registry) { Ok(registry.to_string()) } else { Err(format!("{registry:?} is not HOST or HOST:PORT (no scheme or path)")) }
}

/// A registry host as image references name it: `host` or `host:port`, no scheme or path.
fn valid_host(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, Some(port)),
        _ => (registry, None),
    };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok && !registry.contains('/')
}

/// containerd's hosts.toml for a registry served over plain HTTP.
pub fn plain_http_hosts_toml(registry: &str) -> String {
    format!(
        r#"# Written by the berth agent (--insecure-registry {registry}): plain HTTP, no TLS.
server = "http://{registry}"

[host."http://{registry}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"#
    )
}

/// Writes `hosts_dir/<registry>/hosts.toml` for each registry (replacing what was there).
pub fn write_plain_http(hosts_dir: &Path, registries: &[String]) -> Result<(), AgentError> {
    for registry in registries {
        if !valid_host(registry) {
            // It would name a path outside the hosts directory; the command line checks first.
            tracing::warn!(%registry, "not a registry host; ignored");
            continue;
        }
        let dir = hosts_dir.join(registry);
        std::fs::create_dir_all(&dir).map_err(|source| AgentError::Io { path: dir.clone(), source })?;
        let file = dir.join("hosts.toml");
        std::fs::write(&file, plain_http_hosts_toml(registry)).map_err(|source| AgentError::Io { path: file.clone(), source })?;
        tracing::info!(%registry, file = %file.display(), "registry configured for plain HTTP");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_and_written_in_containerd_format() {
        for good in ["127.0.0.1:5000", "registry.local", "localhost:5000", "[::1]:5000"] {
            assert!(valid_host(good), "{good}");
        }
        for bad in ["http://x:5000", "x:5000/v2", "x:0", "x:port", ""] {
            assert!(!valid_host(bad), "{bad}");
        }
        let text = plain_http_hosts_toml("127.0.0.1:5000");
        assert!(text.contains("server = \"http://127.0.0.1:5000\"\n"));
        assert!(text.contains("[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"));
    }
}
