//! Service account tokens, as upstream's bound service account tokens: the TokenRequest
//! subresource (`serviceaccounts/{name}/token`) signs a JWT with the cluster's service account key
//! (ES256, kept in `DATA/pki/service-account.key`), bearer tokens are authenticated by checking the
//! signature, issuer, audience and lifetime and that the account (and the pod or secret the token
//! is bound to) still exists with the same uid, and `/.well-known/openid-configuration` with
//! `/openid/v1/jwks` publish the issuer's key. Also the ServiceAccount admission plugin, which
//! gives pods the projected `kube-api-access-*` volume, and the SelfSubjectReview answer
//! (`kubectl auth whoami`).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::api::Api;
use crate::objects;
use crate::status::{ApiError, ApiResult, Cause};
use crate::tls::{Identity, TlsError};

/// Upstream's default `--service-account-issuer` for in-cluster use, also the default audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const KEY_FILE: &str = "service-account.key";
/// Where the admission plugin mounts the token volume.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// What the kubelet asks for on behalf of the admission plugin's volume (upstream's
/// WarnOnlyBoundTokenExpirationSeconds).
const ADMISSION_TOKEN_SECONDS: i64 = 3607;
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Clock skew tolerated on `exp` and `nbf` (go-jose's default leeway, which upstream uses).
const LEEWAY_SECONDS: i64 = 60;
/// A token bound to a pod stays valid this long after the pod's deletion began, as upstream.
const DELETION_GRACE_SECONDS: i64 = 60;
/// DER prefix of a P-256 SubjectPublicKeyInfo; the uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00];

/// The cluster's token signer and verifier.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    pub issuer: String,
    /// What the API server accepts tokens for (upstream's `--api-audiences`, default the issuer).
    pub audiences: Vec<String>,
    pub jwks_uri: String,
}

impl TokenIssuer {
    /// Loads `dir/service-account.key`, generating it on first start.
    pub fn load_or_create(dir: &Path, jwks_uri: String) -> Result<Self, TlsError> {
        let path = dir.join(KEY_FILE);
        let io = |source| TlsError::Io { path: path.clone(), source };
        let rng = SystemRandom::new();
        if !path.exists() {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| TlsError::Verifier("generating the service account key failed".into()))?;
            let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
            write_private(&path, pem.as_bytes()).map_err(io)?;
        }
        let pem = std::fs::read(&path).map_err(io)?;
        let bad = |message: String| TlsError::Pem { path: path.clone(), message };
        let der = match PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(e.to_string()))? {
            PrivateKeyDer::Pkcs8(der) => der,
            _ => return Err(bad("the service account key must be a PKCS#8 P-256 key".into())),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &rng).map_err(|e| bad(format!("not a P-256 key: {e}")))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        // As upstream: the key id is the hash of the PKIX public key, so it is stable per key.
        let key_id = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(Self { key, rng, key_id, issuer: ISSUER.to_string(), audiences: vec![ISSUER.to_string()], jwks_uri })
    }

    /// A compact JWS (ES256) of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|_| ApiError::internal("signing the token failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The claims of a token this issuer signed, or why not. Lifetime and audience are checked
    /// by the caller.
    pub fn verify(&self, token: &str) -> Result<Value, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return Err("not a JWS") };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| "bad base64url");
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| "bad header")?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err("unexpected algorithm");
        }
        if header.get("kid").and_then(Value::as_str).is_some_and(|kid| kid != self.key_id) {
            return Err("unknown key id");
        }
        let signing_input = &token[..header_len(token)];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref()).verify(signing_input.as_bytes(), &decode(signature)?).map_err(|_| "bad signature")?;
        let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|_| "bad claims")?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err("unknown issuer");
        }
        Ok(claims)
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.key_id, "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// Length of `header.payload`: what the signature covers.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

fn core_def(api: &Api, plural: &str) -> ApiResult<std::sync::Arc<crate::resources::ResourceDef>> {
    api.registry.get("", "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: a TokenRequest answered with a
/// signed token in its status.
pub async fn create_token(api: &Api, issuer: &TokenIssuer, namespace: &str, name: &str, body: &Value) -> ApiResult<Value> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str).filter(|k| !k.is_empty())
        && kind != "TokenRequest"
    {
        return Err(ApiError::bad_request(format!("the body must be a TokenRequest, not a {kind}")));
    }
    if let Some(ns) = objects::meta_str(body, "namespace").filter(|ns| !ns.is_empty() && *ns != namespace) {
        return Err(ApiError::bad_request(format!("namespace of the request body ({ns}) does not match the namespace of the URL ({namespace})")));
    }
    let sa_def = core_def(api, "serviceaccounts")?;
    let mut request_def = (*sa_def).clone();
    request_def.group = "authentication.k8s.io".into();
    request_def.kind = "TokenRequest".into();
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(&request_def, name, vec![Cause::invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration less than 10 minutes")]));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(&request_def, name, vec![Cause::invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration larger than 2^32 seconds")]));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => issuer.audiences.clone(),
    };
    let account = api.get(&sa_def, Some(namespace), name).await?;
    let account_uid = objects::meta_str(&account, "uid").unwrap_or("").to_string();

    let mut kubernetes = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": account_uid}});
    let bound = spec.get("boundObjectRef").filter(|r| !r.is_null()).cloned();
    if let Some(reference) = &bound {
        let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = reference.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
        let ref_name = reference.get("name").and_then(Value::as_str).unwrap_or("");
        let ref_uid = reference.get("uid").and_then(Value::as_str).unwrap_or("");
        let plural = match (api_version, kind) {
            ("v1", "Pod") => "pods",
            ("v1", "Secret") => "secrets",
            _ => return Err(ApiError::bad_request(format!("cannot bind token to object of type {kind}"))),
        };
        let def = core_def(api, plural)?;
        let object = api.get(&def, Some(namespace), ref_name).await?;
        let uid = objects::meta_str(&object, "uid").unwrap_or("");
        if !ref_uid.is_empty() && ref_uid != uid {
            return Err(ApiError::conflict(
                &def,
                ref_name,
                &format!("the UID in the bound object reference ({ref_uid}) does not match the UID in record. The object might have been deleted and then recreated"),
            ));
        }
        let entry = json!({"name": ref_name, "uid": uid});
        if kind == "Pod" {
            let pod_account = object.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
            if pod_account != name {
                return Err(ApiError::bad_request(format!("cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name.")));
            }
            kubernetes["pod"] = entry;
            if let Some(node) = object.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                let node_uid = match core_def(api, "nodes") {
                    Ok(nodes) => api.get(&nodes, None, node).await.ok().and_then(|n| objects::meta_str(&n, "uid").map(str::to_string)),
                    Err(_) => None,
                };
                kubernetes["node"] = json!({"name": node, "uid": node_uid.unwrap_or_default()});
            }
        } else {
            kubernetes["secret"] = entry;
        }
    }

    let now = now_seconds();
    let expires = now + expiration;
    let claims = json!({
        "aud": audiences,
        "exp": expires,
        "iat": now,
        "iss": issuer.issuer,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": kubernetes,
        "nbf": now,
        "sub": username(namespace, name),
    });
    let token = issuer.sign(&claims)?;
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    out_spec["boundObjectRef"] = bound.unwrap_or(Value::Null);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now)},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": rfc3339(expires)},
    }))
}

/// The identity a bearer token stands for, when it is a live service account token of ours.
pub async fn authenticate(api: &Api, issuer: &TokenIssuer, token: &str) -> Option<Identity> {
    match check_token(api, issuer, token).await {
        Ok(identity) => Some(identity),
        Err(why) => {
            tracing::debug!(reason = %why, "bearer token rejected");
            None
        }
    }
}

async fn check_token(api: &Api, issuer: &TokenIssuer, token: &str) -> Result<Identity, String> {
    let claims = issuer.verify(token)?;
    let now = now_seconds();
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or("no expiry")?;
    if now > exp + LEEWAY_SECONDS {
        return Err("token has expired".into());
    }
    if claims.get("nbf").and_then(Value::as_i64).is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
        return Err("token is not valid yet".into());
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|a| issuer.audiences.iter().any(|ours| ours == a)) {
        return Err("token audiences are not accepted".into());
    }
    let private = claims.get("kubernetes.io").ok_or("no kubernetes.io claim")?;
    let text = |pointer: &str| private.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_string();
    let (namespace, name, uid) = (text("/namespace"), text("/serviceaccount/name"), text("/serviceaccount/uid"));
    if namespace.is_empty() || name.is_empty() {
        return Err("no service account in the claims".into());
    }
    let lookup = |plural: &'static str, name: String| {
        let namespace = namespace.clone();
        async move {
            let def = api.registry.get("", "v1", plural).ok_or_else(|| "resource not served".to_string())?;
            api.get(&def, Some(&namespace), &name).await.map_err(|_| format!("{plural} {namespace}/{name} has been deleted"))
        }
    };
    let account = lookup("serviceaccounts", name.clone()).await?;
    if objects::meta_str(&account, "uid") != Some(uid.as_str()) {
        return Err(format!("service account UID ({}) does not match claim ({uid})", objects::meta_str(&account, "uid").unwrap_or("")));
    }
    if objects::is_deleting(&account) {
        return Err("service account is being deleted".into());
    }
    for (claim, plural) in [("pod", "pods"), ("secret", "secrets")] {
        let Some(bound) = private.get(claim).filter(|b| !b.is_null()) else { continue };
        let bound_name = bound.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let bound_uid = bound.get("uid").and_then(Value::as_str).unwrap_or("");
        let object = lookup(plural, bound_name).await?;
        if objects::meta_str(&object, "uid") != Some(bound_uid) {
            return Err(format!("{claim} UID ({}) does not match claim ({bound_uid})", objects::meta_str(&object, "uid").unwrap_or("")));
        }
        if let Some(deleted) = objects::meta_str(&object, "deletionTimestamp").and_then(|t| t.parse::<jiff::Timestamp>().ok())
            && deleted.as_second() + DELETION_GRACE_SECONDS < now
        {
            return Err(format!("{claim} is being deleted"));
        }
    }
    Ok(Identity {
        user: username(&namespace, &name),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()],
    })
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: who the caller is.
pub fn self_subject_review(identity: &Identity) -> Value {
    let mut groups = identity.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": objects::now_rfc3339()},
        "status": {"userInfo": {"username": identity.user, "groups": groups}},
    })
}

/// The ServiceAccount admission plugin's token volume: every container gets the projected
/// `kube-api-access-*` volume at [`TOKEN_MOUNT_PATH`] unless the pod (or else its account) turns
/// automounting off, or the container already mounts something there.
pub async fn admit_pod(api: &Api, namespace: &str, obj: &mut Value) -> ApiResult<()> {
    if obj.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
        return Ok(());
    }
    let Some(spec) = obj.get("spec") else { return Ok(()) };
    let automount = match spec.get("automountServiceAccountToken").and_then(Value::as_bool) {
        Some(pod_says) => pod_says,
        None => {
            let account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_string();
            // Upstream refuses pods whose account does not exist yet; here the pod is admitted
            // and its token volume waits on the node until the account exists (the agent's
            // token request fails until then), so pods made right after their namespace work.
            match api.get(&*core_def(api, "serviceaccounts")?, Some(namespace), &account).await {
                Ok(sa) => sa.get("automountServiceAccountToken").and_then(Value::as_bool).unwrap_or(true),
                Err(e) if e.code == 404 => true,
                Err(e) => return Err(e),
            }
        }
    };
    if automount {
        mount_token_volume(obj);
    }
    Ok(())
}

fn token_volume_source() -> Value {
    json!({
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": ADMISSION_TOKEN_SECONDS}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

fn mount_token_volume(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let existing = spec.get("volumes").and_then(Value::as_array).and_then(|vs| vs.iter().filter_map(|v| v.get("name").and_then(Value::as_str)).find(|n| n.starts_with(VOLUME_PREFIX)).map(str::to_string));
    let volume_name = existing.clone().unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", objects::random_suffix(5)));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for container in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(container) = container.as_object_mut() else { continue };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH)) {
                continue;
            }
            mounts.push(json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume_name, "projected": token_volume_source()}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> (TokenIssuer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("berth-sa-test-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        (TokenIssuer::load_or_create(&dir, "https://127.0.0.1/openid/v1/jwks".into()).unwrap(), dir)
    }

    #[test]
    fn tokens_verify_with_the_same_key_after_a_reload() {
        let (first, dir) = issuer();
        let token = first.sign(&json!({"iss": ISSUER, "sub": "x"})).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(first.verify(&token).unwrap()["sub"], "x");
        let again = TokenIssuer::load_or_create(&dir, String::new()).unwrap();
        assert_eq!(again.verify(&token).unwrap()["sub"], "x", "the key is kept on disk");
        assert_eq!(again.jwks()["keys"][0]["kid"], first.jwks()["keys"][0]["kid"]);
        // A changed payload or another issuer is refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(json!({"iss": ISSUER, "sub": "admin"}).to_string());
        parts[1] = &forged;
        assert!(first.verify(&parts.join(".")).is_err());
        let other = first.sign(&json!({"iss": "https://elsewhere", "sub": "x"})).unwrap();
        assert!(first.verify(&other).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_token_volume_goes_to_every_container_once() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}],
            "volumes": [{"name": "own", "emptyDir": {}}],
        }});
        mount_token_volume(&mut pod);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5, "{name}");
        assert_eq!(volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"][0]["name"], name.as_str());
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0], json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
        assert_eq!(pod["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(), 1, "an existing mount at the path wins");
        // Admitting again (an update re-running defaults) reuses the volume.
        mount_token_volume(&mut pod);
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);
    }
}
