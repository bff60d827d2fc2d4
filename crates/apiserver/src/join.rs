//! Joining nodes, as k3s does it: the server keeps a join token in `DATA/node-token` of the form
//! `B10<sha256 of the CA certificate, hex>::node:<secret>`. An agent given the token fetches the
//! CA from the unauthenticated `/cacerts`, checks it against the hash (so a man in the middle
//! cannot hand it another CA), and then uses the whole token as a bearer token.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::tls::{Identity, TlsError};

pub const TOKEN_FILE: &str = "node-token";
pub const TOKEN_PREFIX: &str = "B10";
/// Who a joining agent is until the security work gives each node its own credentials.
pub const NODE_USER: &str = "system:node-bootstrap";

pub fn ca_hash(ca_pem: &str) -> String {
    Sha256::digest(ca_pem.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the join token, making one on first start (or when the CA changed).
pub fn load_or_create_token(data_dir: &Path, ca_pem: &str) -> Result<String, TlsError> {
    let path = data_dir.join(TOKEN_FILE);
    let prefix = format!("{TOKEN_PREFIX}{}::node:", ca_hash(ca_pem));
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if existing.starts_with(&prefix) && existing.len() > prefix.len() {
            return Ok(existing);
        }
    }
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let token = format!("{prefix}{secret}");
    write_private(&path, &format!("{token}\n"))?;
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The identity a join token authenticates as.
pub fn node_identity() -> Identity {
    Identity { user: NODE_USER.into(), groups: vec!["system:nodes".into(), "system:authenticated".into()] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_the_ca_and_survives_restarts() {
        let dir = std::env::temp_dir().join(format!("berth-join-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = load_or_create_token(&dir, "CA PEM").unwrap();
        assert!(token.starts_with(&format!("B10{}::node:", ca_hash("CA PEM"))), "{token}");
        assert_eq!(load_or_create_token(&dir, "CA PEM").unwrap(), token);
        assert_ne!(load_or_create_token(&dir, "another CA").unwrap(), token, "a new CA makes a new token");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
