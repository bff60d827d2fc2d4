//! Service account tokens for projected `serviceAccountToken` volume sources, as the kubelet's
//! token manager: each is requested through the TokenRequest API bound to the pod (so it dies
//! with the pod), cached, and requested anew once 80% of its lifetime has passed (or a day, for
//! long-lived ones); the atomic writer then swaps the file in.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use crate::pods::Context;

/// Upstream's default `expirationSeconds` of a projection.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token older than this is refreshed whatever its expiry (upstream's maxTTL).
const MAX_TTL_SECONDS: i64 = 24 * 3600;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    account: String,
    pod_uid: String,
    audience: String,
    expiration: i64,
}

#[derive(Clone, Debug)]
struct Cached {
    token: String,
    issued: i64,
    expires: i64,
}

impl Cached {
    fn needs_refresh(&self, now: i64) -> bool {
        let lifetime = (self.expires - self.issued).max(0);
        now >= self.expires || now - self.issued >= MAX_TTL_SECONDS || now >= self.issued + lifetime * 8 / 10
    }
}

#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<Key, Cached>>,
}

/// What a projection asks for: its audience ("" for the API server's) and lifetime.
pub fn projection_key(source: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> (String, i64) {
    (source.audience.clone().unwrap_or_default(), source.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS))
}

/// A token for each of the pod's token projections, by [`projection_key`], or why not.
pub async fn pod_tokens(ctx: &Context, pod: &Pod) -> HashMap<(String, i64), Result<String, String>> {
    let mut out = HashMap::new();
    let wanted: Vec<(String, i64)> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref().map(projection_key))
        .collect();
    for want in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(want) {
            let (audience, expiration) = slot.key().clone();
            slot.insert(token_for(ctx, pod, &audience, expiration).await);
        }
    }
    out
}

async fn token_for(ctx: &Context, pod: &Pod, audience: &str, expiration: i64) -> Result<String, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).filter(|a| !a.is_empty()).unwrap_or_else(|| "default".into());
    let key = Key { namespace: namespace.clone(), account: account.clone(), pod_uid: pod.uid().unwrap_or_default(), audience: audience.to_string(), expiration };
    let now = jiff::Timestamp::now().as_second();
    {
        let mut tokens = ctx.tokens.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, cached| cached.expires > now);
        if let Some(cached) = tokens.get(&key).filter(|c| !c.needs_refresh(now)) {
            return Ok(cached.token.clone());
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if audience.is_empty() { Vec::new() } else { vec![audience.to_string()] },
            expiration_seconds: Some(expiration),
            bound_object_ref: Some(BoundObjectReference { api_version: Some("v1".into()), kind: Some("Pod".into()), name: Some(pod.name_any()), uid: pod.uid() }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    let fetched = match api.create_token_request(&account, &PostParams::default(), &request).await {
        Ok(response) => response,
        Err(error) => {
            // A token that still works is better than none while the API is unreachable.
            let cached = ctx.tokens.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
            return cached.map(|c| c.token).ok_or_else(|| format!("failed to fetch token: {error}"));
        }
    };
    let status = fetched.status.ok_or("the token request returned no token")?;
    let expires = status.expiration_timestamp.0.as_second();
    let cached = Cached { token: status.token.clone(), issued: now, expires };
    ctx.tokens.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, cached);
    Ok(status.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_after_eighty_percent_of_the_lifetime() {
        let token = Cached { token: "t".into(), issued: 1000, expires: 1000 + 3600 };
        assert!(!token.needs_refresh(1000));
        assert!(!token.needs_refresh(1000 + 2879));
        assert!(token.needs_refresh(1000 + 2880));
        let long = Cached { token: "t".into(), issued: 0, expires: 365 * 24 * 3600 };
        assert!(!long.needs_refresh(3600));
        assert!(long.needs_refresh(MAX_TTL_SECONDS), "a day at most");
    }
}
