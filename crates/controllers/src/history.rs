//! ControllerRevision helpers shared by the StatefulSet and DaemonSet controllers, after
//! upstream's pkg/controller/history: a revision stores the pod template as the strategic merge
//! patch that would restore it (`{"spec":{"template":{...,"$patch":"replace"}}}`), is named
//! `<owner>-<hash>`, carries a monotonically growing `revision` number, and belongs to its owner
//! through a controller reference.
//!
//! Also the bookkeeping both controllers share with upstream's controller utilities: claiming
//! (adopting and releasing) owned objects, and create/delete expectations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::labels;

/// The pod label naming the revision a pod was made from (apps/v1 ControllerRevisionHashLabelKey).
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";
/// The label a revision carries with the hash of its data.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// Upstream keeps revision names within 253 bytes by cutting the owner's name.
pub fn revision_name(prefix: &str, hash: &str) -> String {
    let mut cut = prefix.len().min(223);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &prefix[..cut])
}

/// Objects with their keys in sorted order, as Go's encoding/json writes the maps upstream builds
/// the patch from; the stored bytes (and so the hash) do not depend on field order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The revision data for `template`: a patch replacing `spec.template` wholesale.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(obj) = template.as_object_mut() {
        // Go encodes the zero creationTimestamp as null; keep the stored shape the same.
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.entry("creationTimestamp").or_insert(Value::Null);
        }
        obj.insert("$patch".into(), json!("replace"));
    }
    sorted(&json!({"spec": {"template": template}}))
}

/// The template a revision restores; `None` when its data is not a template patch.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    let obj = template.as_object_mut()?;
    obj.remove("$patch");
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && meta.get("creationTimestamp").is_some_and(Value::is_null)
    {
        meta.remove("creationTimestamp");
    }
    serde_json::from_value(template).ok()
}

/// Whether two revisions hold the same data. Key order does not matter: the server may hand the
/// data back in any order.
pub fn same_data(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    match (&a.data, &b.data) {
        (Some(x), Some(y)) => x.0 == y.0,
        (None, None) => true,
        _ => false,
    }
}

/// Upstream's alphabet for hashes in names: no vowels (no words), no look-alike characters.
pub fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

/// 32-bit FNV-1 (not 1a) of the data, then of the decimal collision count, as
/// HashControllerRevision computes it.
pub fn hash_data(data: &Value, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = hash.wrapping_mul(0x0100_0193);
            hash ^= u32::from(*b);
        }
    };
    feed(&serde_json::to_vec(&sorted(data)).unwrap_or_default());
    if let Some(n) = collision_count {
        feed(n.to_string().as_bytes());
    }
    safe_encode(&hash.to_string())
}

/// Sorted by revision number, then age, then name (upstream's byRevision).
pub fn sort_revisions(revisions: &mut [Arc<ControllerRevision>]) {
    revisions.sort_by(|a, b| {
        let created = |r: &ControllerRevision| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        a.revision.cmp(&b.revision).then_with(|| created(a).cmp(&created(b))).then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// The next revision number after the (sorted) `revisions`.
pub fn next_revision(revisions: &[Arc<ControllerRevision>]) -> i64 {
    revisions.last().map(|r| r.revision + 1).unwrap_or(1)
}

pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

/// A controller reference to `owner` (metav1.NewControllerRef).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A revision of `owner` (not yet named: creation names it from the hash).
pub fn new_revision<K: Resource<DynamicType = ()>>(owner: &K, template_labels: Option<&BTreeMap<String, String>>, data: Value, revision: i64) -> ControllerRevision {
    ControllerRevision {
        metadata: ObjectMeta {
            namespace: owner.namespace(),
            labels: Some(template_labels.cloned().unwrap_or_default()),
            annotations: Some(owner.annotations().clone()).filter(|a| !a.is_empty()),
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Creates `revision` named after `owner` and the hash of its data. A name taken by different
/// data bumps `collision_count` and tries the next name; taken by the same data, the existing
/// revision is the answer.
pub async fn create(api: &Api<ControllerRevision>, owner: &str, revision: &ControllerRevision, collision_count: &mut i32) -> Result<ControllerRevision, kube::Error> {
    let data = revision.data.as_ref().map(|d| d.0.clone()).unwrap_or(Value::Null);
    loop {
        let hash = hash_data(&data, Some(*collision_count));
        let mut candidate = revision.clone();
        candidate.metadata.name = Some(revision_name(owner, &hash));
        candidate.metadata.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash);
        match api.create(&PostParams::default(), &candidate).await {
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = api.get(&candidate.name_any()).await?;
                if same_data(&existing, &candidate) {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            other => return other,
        }
    }
}

/// Moves an old revision to the front of history (a rollback to it).
pub async fn set_revision_number(api: &Api<ControllerRevision>, revision: &ControllerRevision, number: i64) -> Result<ControllerRevision, kube::Error> {
    if revision.revision == number {
        return Ok(revision.clone());
    }
    let patch = json!({"metadata": {"resourceVersion": revision.resource_version()}, "revision": number});
    api.patch(&revision.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
}

pub async fn delete(api: &Api<ControllerRevision>, revision: &ControllerRevision) -> Result<(), kube::Error> {
    let params = DeleteParams { preconditions: Some(Preconditions { uid: revision.uid(), resource_version: None }), ..Default::default() };
    match api.delete(&revision.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The objects `owner` controls among `cache`, reconciling ownership as upstream's
/// ControllerRefManager does: orphans that `wanted` accepts are adopted (unless the owner is going
/// away), owned ones it no longer accepts are released. Used for pods and for revisions.
pub async fn claim<K, O>(api: &Api<K>, cache: &Cache<K>, owner: &O, wanted: impl Fn(&K) -> bool) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()>,
{
    let uid = owner.uid().unwrap_or_default();
    let ns = owner.namespace().unwrap_or_default();
    let leaving = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for obj in cache.controlled_by(&uid) {
        if wanted(&obj) {
            owned.push(obj);
        } else if !leaving {
            let refs: Vec<&OwnerReference> = obj.owner_references().iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version()}});
            match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if leaving {
        return Ok(owned);
    }
    for obj in cache.in_namespace(&ns) {
        if controller_of(obj.as_ref()).is_some() || obj.meta().deletion_timestamp.is_some() || !wanted(&obj) {
            continue;
        }
        let mut refs = obj.owner_references().to_vec();
        refs.push(controller_ref(owner));
        // The resourceVersion makes adoption a compare-and-swap against a concurrent adopter.
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version()}});
        match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(adopted) => owned.push(Arc::new(adopted)),
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(owned)
}

/// The revisions `owner` controls: its own and adoptable orphans matching `selector`.
pub async fn claim_revisions<O: Resource<DynamicType = ()>>(api: &Api<ControllerRevision>, cache: &Cache<ControllerRevision>, owner: &O, selector: &LabelSelector) -> Result<Vec<Arc<ControllerRevision>>, kube::Error> {
    claim(api, cache, owner, |r: &ControllerRevision| labels::matches(selector, r.labels())).await
}

type Key = (String, String);

/// How long unmet expectations hold a controller back (a lost watch event must not stall it).
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Upstream's ControllerExpectations, by pod uid: the creates and deletes a controller issued and
/// its cache has not shown yet. A controller does not act on an owner while they are pending, so a
/// lagging cache never makes it create or delete twice. The watch may report a pod before the
/// write that made it returns; such early sightings are remembered briefly and settle the
/// expectation as soon as it is recorded.
#[derive(Default)]
pub struct Expectations {
    state: Mutex<ExpectationState>,
}

#[derive(Default)]
struct ExpectationState {
    pending: HashMap<Key, Pending>,
    early_adds: HashMap<String, Instant>,
    early_deletes: HashMap<String, Instant>,
}

struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExpectationState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cache now holds a pod of `key`'s owner with `uid`.
    pub fn observe_add(&self, key: &Key, uid: &str) {
        let mut state = self.lock();
        if state.pending.get_mut(key).is_some_and(|p| p.creates.remove(uid)) {
            return;
        }
        state.early_adds.retain(|_, at| at.elapsed() < EXPECTATION_TIMEOUT);
        state.early_adds.insert(uid.to_string(), Instant::now());
    }

    /// The pod with `uid` is gone or terminating.
    pub fn observe_delete(&self, key: &Key, uid: &str) {
        let mut state = self.lock();
        if state.pending.get_mut(key).is_some_and(|p| p.deletes.remove(uid)) {
            return;
        }
        state.early_deletes.retain(|_, at| at.elapsed() < EXPECTATION_TIMEOUT);
        state.early_deletes.insert(uid.to_string(), Instant::now());
    }

    pub fn expect_create(&self, key: &Key, uid: &str) {
        let mut state = self.lock();
        if state.early_adds.remove(uid).is_some() {
            return;
        }
        let pending = state.pending.entry(key.clone()).or_insert_with(|| Pending { creates: HashSet::new(), deletes: HashSet::new(), since: Instant::now() });
        pending.creates.insert(uid.to_string());
        pending.since = Instant::now();
    }

    pub fn expect_delete(&self, key: &Key, uid: &str) {
        let mut state = self.lock();
        if state.early_deletes.remove(uid).is_some() {
            return;
        }
        let pending = state.pending.entry(key.clone()).or_insert_with(|| Pending { creates: HashSet::new(), deletes: HashSet::new(), since: Instant::now() });
        pending.deletes.insert(uid.to_string());
        pending.since = Instant::now();
    }

    /// Whether everything issued for `key` has been seen (or waited on long enough).
    pub fn satisfied(&self, key: &Key) -> bool {
        let mut state = self.lock();
        let Some(pending) = state.pending.get(key) else { return true };
        let met = (pending.creates.is_empty() && pending.deletes.is_empty()) || pending.since.elapsed() > EXPECTATION_TIMEOUT;
        if met {
            state.pending.remove(key);
        }
        met
    }

    pub fn forget(&self, key: &Key) {
        self.lock().pending.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}})).unwrap()
    }

    #[test]
    fn patch_replaces_the_template_and_round_trips() {
        let patch = template_patch(&template("nginx:1"));
        assert_eq!(patch.pointer("/spec/template/$patch"), Some(&json!("replace")));
        assert_eq!(patch.pointer("/spec/template/metadata/creationTimestamp"), Some(&Value::Null));
        let keys: Vec<&String> = patch.pointer("/spec/template").unwrap().as_object().unwrap().keys().collect();
        assert_eq!(keys, ["$patch", "metadata", "spec"]);
        let revision = ControllerRevision { data: Some(RawExtension(patch)), ..Default::default() };
        assert_eq!(template_of(&revision), Some(template("nginx:1")));
    }

    #[test]
    fn hash_depends_on_data_and_collisions_not_key_order() {
        let a = template_patch(&template("nginx:1"));
        let b = template_patch(&template("nginx:2"));
        assert_ne!(hash_data(&a, Some(0)), hash_data(&b, Some(0)));
        assert_ne!(hash_data(&a, Some(0)), hash_data(&a, Some(1)));
        let reordered: Value = serde_json::from_str(r#"{"spec":{"template":{"spec":{"containers":[{"image":"nginx:1","name":"c"}]},"metadata":{"labels":{"app":"web"},"creationTimestamp":null},"$patch":"replace"}}}"#).unwrap();
        assert_eq!(hash_data(&a, Some(0)), hash_data(&reordered, Some(0)));
        assert!(hash_data(&a, None).chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn expectations_settle_on_sightings_before_or_after_the_write() {
        let exp = Expectations::default();
        let key = ("ns".to_string(), "set".to_string());
        assert!(exp.satisfied(&key));
        exp.expect_create(&key, "a");
        exp.expect_delete(&key, "b");
        assert!(!exp.satisfied(&key));
        exp.observe_add(&key, "a");
        assert!(!exp.satisfied(&key));
        exp.observe_delete(&key, "b");
        assert!(exp.satisfied(&key));
        // The watch may report a create before the create call returns.
        exp.observe_add(&key, "c");
        exp.expect_create(&key, "c");
        assert!(exp.satisfied(&key));
        exp.expect_create(&key, "d");
        exp.forget(&key);
        assert!(exp.satisfied(&key));
    }

    #[test]
    fn names_stay_within_limits_and_revisions_sort() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
        let rev = |name: &str, n: i64| Arc::new(ControllerRevision { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, revision: n, data: None });
        let mut revs = vec![rev("c", 3), rev("a", 1), rev("b", 1)];
        sort_revisions(&mut revs);
        assert_eq!(revs.iter().map(|r| r.name_any()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(next_revision(&revs), 4);
        assert_eq!(next_revision(&[]), 1);
    }
}
