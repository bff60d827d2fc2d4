//! Conversion between the served versions of one kind, on JSON objects.
//!
//! Berth keeps one version of a kind in the store and serves the others by converting on the way
//! out and on the way in. Every function here is pure and total: odd input never panics, and a
//! field that is missing, null or of the wrong shape just does not map. Metadata is carried over
//! as is, except for the round-trip annotations described below.
//!
//! ## HorizontalPodAutoscaler: autoscaling/v2 <-> autoscaling/v1
//!
//! Upstream converts both through the internal type (`pkg/apis/autoscaling/v1/conversion.go`);
//! these functions go directly but give the same results:
//!
//! * v1 `spec.targetCPUUtilizationPercentage` is the first v2 metric of type `Resource` on `cpu`
//!   with a `target.averageUtilization`; on the way back it becomes such a metric (target type
//!   `Utilization`), appended after the metrics restored from the annotation.
//! * v1 `status.currentCPUUtilizationPercentage` is the `averageUtilization` of the last current
//!   `Resource` metric on `cpu` that has one; on the way back it becomes a single current metric,
//!   unless the current-metrics annotation restores the full list.
//! * What v1 cannot express travels in annotations, so that a read-modify-write through v1 loses
//!   nothing: every other metric ([`METRIC_SPECS_ANNOTATION`]), every current metric, CPU included
//!   ([`METRIC_STATUSES_ANNOTATION`]), the behavior ([`BEHAVIOR_ANNOTATION`]) and the conditions
//!   ([`CONDITIONS_ANNOTATION`]). Metrics and conditions are written in their *autoscaling/v1*
//!   JSON form (the v2beta1-shaped `MetricSpec`/`MetricStatus` types of `k8s.io/api/autoscaling/v1`,
//!   e.g. `{"type":"Pods","pods":{"metricName":"qps","targetAverageValue":"10"}}`); the behavior is
//!   upstream's internal Go struct marshalled without json tags, so its keys are the Go field names
//!   (`{"ScaleUp":{"StabilizationWindowSeconds":0,"SelectPolicy":"Max","Policies":[{"Type":"Pods",
//!   "Value":4,"PeriodSeconds":15}],"Tolerance":null},"ScaleDown":null}`). Reading them back follows
//!   `encoding/json`: keys match case-insensitively, and an annotation that does not decode is
//!   ignored as a whole. Round-trip annotations are always dropped from the result (and any stale
//!   ones on a v2 object are replaced), as `DropRoundTripHorizontalPodAutoscalerAnnotations` does.
//! * A v1 object that ends up with no metric at all gets the 80% CPU utilization metric; upstream
//!   applies this in the v1 conversion (the controller's old implicit default), and v2 defaulting
//!   applies the same default to v2 objects. `minReplicas` defaulting (to 1) is left to
//!   defaulting, as upstream does in both versions.
//! * The v1 metric types cannot hold everything v2 can, so a few values change on a round trip
//!   exactly as they do upstream: the CPU utilization metric moves to the end of the list; values
//!   that are non-pointer quantities in v1 come back as `"0"` when they were unset (an `Object`
//!   target's `value`, an `Object`/`External` current `value`, a `Pods`/`Resource`/
//!   `ContainerResource` current `averageValue`); and a target's `type` is re-derived from which
//!   values are set.
//!
//! ## Event: core/v1 <-> events.k8s.io/v1
//!
//! `pkg/apis/events/v1/conversion.go` plus the generated field-by-field conversion:
//! `involvedObject`/`regarding`, `message`/`note`, `source`/`deprecatedSource`,
//! `firstTimestamp`/`deprecatedFirstTimestamp`, `lastTimestamp`/`deprecatedLastTimestamp`,
//! `count`/`deprecatedCount`, `reportingComponent`/`reportingController` (the core field is
//! `ReportingController` in Go, serialized as `reportingComponent`), and `eventTime`, `series`
//! (`count`, `lastObservedTime`), `reportingInstance`, `action`, `reason`, `related`, `type`
//! unchanged. Present values are copied as they are (nulls included), so a round trip is exact.

use serde_json::{Map, Value, json};
use store::KeyValue;

use crate::resources::ResourceDef;

type Object = Map<String, Value>;

/// How a served version relates to the stored one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Conversion {
    /// Served as stored.
    #[default]
    None,
    /// Same schema, only `apiVersion` differs (custom resources; upstream's `None` strategy).
    ApiVersion,
    /// autoscaling/v1 served from autoscaling/v2.
    HpaV1,
    /// events.k8s.io/v1 served from core/v1.
    EventsV1,
}

impl ResourceDef {
    /// `apiVersion` of the objects in the store.
    pub fn storage_api_version(&self) -> String {
        if self.storage_group.is_empty() { self.storage_version.clone() } else { format!("{}/{}", self.storage_group, self.storage_version) }
    }

    /// A served object in the form the store keeps.
    pub fn to_storage(&self, obj: &Value) -> Value {
        match self.conversion {
            Conversion::None => obj.clone(),
            Conversion::ApiVersion => {
                let mut stored = obj.clone();
                stored["apiVersion"] = json!(self.storage_api_version());
                stored
            }
            Conversion::HpaV1 => hpa_v1_to_v2(obj),
            Conversion::EventsV1 => event_events_to_core(obj),
        }
    }

    /// A stored object in this resource's served version.
    pub fn from_storage(&self, obj: Value) -> Value {
        match self.conversion {
            Conversion::None => obj,
            Conversion::ApiVersion => {
                let mut served = obj;
                if served.is_object() {
                    served["apiVersion"] = json!(self.api_version());
                }
                served
            }
            Conversion::HpaV1 => hpa_v2_to_v1(&obj),
            Conversion::EventsV1 => event_core_to_events(&obj),
        }
    }

    /// A stored key-value with its value in this resource's served version (unchanged, and not
    /// parsed, when no conversion applies).
    pub fn served_kv(&self, kv: KeyValue) -> KeyValue {
        if self.conversion == Conversion::None {
            return kv;
        }
        match serde_json::from_slice::<Value>(&kv.value) {
            Ok(obj) => KeyValue { value: crate::objects::encode_for_storage(&self.from_storage(obj)), ..kv },
            Err(_) => kv,
        }
    }
}

/// `autoscaling.MetricSpecsAnnotation`: the v2 metrics other than the CPU utilization one.
pub const METRIC_SPECS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// `autoscaling.MetricStatusesAnnotation`: all of `status.currentMetrics`.
pub const METRIC_STATUSES_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// `autoscaling.HorizontalPodAutoscalerConditionsAnnotation`: `status.conditions`.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// `autoscaling.BehaviorSpecsAnnotation`: `spec.behavior`.
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
/// The v2beta2 round-trip annotations for `behavior.scale{Down,Up}.tolerance`; autoscaling/v1 does
/// not write them (the tolerance rides in the behavior annotation) but drops them like the others.
const TOLERANCE_SCALE_DOWN_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/scale-down-tolerance";
const TOLERANCE_SCALE_UP_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/scale-up-tolerance";

const ROUND_TRIP_ANNOTATIONS: [&str; 6] = [
    METRIC_SPECS_ANNOTATION,
    BEHAVIOR_ANNOTATION,
    METRIC_STATUSES_ANNOTATION,
    CONDITIONS_ANNOTATION,
    TOLERANCE_SCALE_DOWN_ANNOTATION,
    TOLERANCE_SCALE_UP_ANNOTATION,
];

/// `autoscaling.DefaultCPUUtilization`.
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

const HPA_KIND: &str = "HorizontalPodAutoscaler";

static NULL: Value = Value::Null;

// ---------------------------------------------------------------------------------------------
// Lenient reading of the object being converted (it was valid when it was stored).

/// `obj[key]` unless missing or null (Go's nil).
fn get<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// `obj[key]`, or null: for walking into sub-objects that may be absent.
fn child<'a>(obj: &'a Value, key: &str) -> &'a Value {
    obj.get(key).unwrap_or(&NULL)
}

/// A string field; Go's zero value `""` when missing or not a string.
fn text<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(obj: &'a Value, key: &str) -> &'a [Value] {
    obj.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn copy_to(out: &mut Object, to: &str, from: &Value, key: &str) {
    if let Some(v) = get(from, key) {
        out.insert(to.to_string(), v.clone());
    }
}

fn copy_non_empty_text(out: &mut Object, to: &str, from: &Value, key: &str) {
    let s = text(from, key);
    if !s.is_empty() {
        out.insert(to.to_string(), Value::String(s.to_string()));
    }
}

/// Where a field comes in the Go structs these annotations marshal (autoscaling/v1 metric specs
/// and statuses, object references, conditions, label selectors, and the internal behavior types,
/// whose fields have no JSON tags). Every struct's fields appear here in its own order; keys not
/// listed follow, sorted; a Go map (matchLabels) is written sorted, as Go marshals maps.
fn go_field_rank(key: &str) -> usize {
    const ORDER: &[&str] = &[
        "type", "object", "pods", "resource", "containerResource", "external", "kind", "target", "name", "metricName",
        "metricSelector", "targetValue", "currentValue", "targetAverageUtilization", "currentAverageUtilization",
        "targetAverageValue", "currentAverageValue", "selector", "averageValue", "container", "matchLabels",
        "matchExpressions", "key", "operator", "values", "apiVersion", "status", "lastTransitionTime", "reason", "message",
        "ScaleUp", "ScaleDown", "StabilizationWindowSeconds", "SelectPolicy", "Policies", "Tolerance", "Type", "Value",
        "PeriodSeconds",
    ];
    ORDER.iter().position(|k| *k == key).unwrap_or(ORDER.len())
}

fn write_go_ordered(v: &Value, go_map: bool, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if !go_map {
                entries.sort_by(|a, b| go_field_rank(a.0).cmp(&go_field_rank(b.0)).then_with(|| a.0.cmp(b.0)));
            }
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_go_ordered(value, key == "matchLabels", out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_ordered(item, false, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A non-pointer `resource.Quantity` in Go marshals its zero value as `"0"`.
fn quantity_or_zero(v: Option<&Value>) -> Value {
    v.cloned().unwrap_or_else(|| Value::String("0".into()))
}

/// `json.Marshal` output: compact, with `<`, `>`, `&`, U+2028 and U+2029 escaped. Those characters
/// can only occur inside JSON strings, so replacing them in the text is exact. Object keys are
/// written in the Go structs' field order (`go_field_rank`), as upstream's annotations have them.
fn go_json(v: &Value) -> String {
    let mut s = String::new();
    write_go_ordered(v, false, &mut s);
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return s;
    }
    s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026").replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029")
}

// ---------------------------------------------------------------------------------------------
// HorizontalPodAutoscaler: v2 -> v1

/// The `averageUtilization` of a v2 metric spec that v1 holds in `targetCPUUtilizationPercentage`.
fn cpu_utilization_target(metric: &Value) -> Option<&Value> {
    if text(metric, "type") != "Resource" {
        return None;
    }
    let resource = get(metric, "resource")?;
    if text(resource, "name") != "cpu" {
        return None;
    }
    get(child(resource, "target"), "averageUtilization")
}

/// The `averageUtilization` of a v2 current metric that v1 holds in
/// `currentCPUUtilizationPercentage`.
fn cpu_utilization_current(metric: &Value) -> Option<&Value> {
    if text(metric, "type") != "Resource" {
        return None;
    }
    let resource = get(metric, "resource")?;
    if text(resource, "name") != "cpu" {
        return None;
    }
    get(child(resource, "current"), "averageUtilization")
}

/// A v2 `describedObject` as a v1 `CrossVersionObjectReference` (apiVersion is omitempty).
fn cross_ref_to_v1(reference: &Value) -> Value {
    let mut out = Object::new();
    out.insert("kind".into(), Value::String(text(reference, "kind").into()));
    out.insert("name".into(), Value::String(text(reference, "name").into()));
    copy_non_empty_text(&mut out, "apiVersion", reference, "apiVersion");
    Value::Object(out)
}

/// A v2 `MetricSpec` in the autoscaling/v1 `MetricSpec` JSON form.
fn metric_spec_to_v1(metric: &Value) -> Value {
    let mut out = Object::new();
    out.insert("type".into(), Value::String(text(metric, "type").into()));
    if let Some(source) = get(metric, "object") {
        let (target, id) = (child(source, "target"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("target".into(), cross_ref_to_v1(child(source, "describedObject")));
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        v.insert("targetValue".into(), quantity_or_zero(get(target, "value")));
        copy_to(&mut v, "selector", id, "selector");
        copy_to(&mut v, "averageValue", target, "averageValue");
        out.insert("object".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "pods") {
        let (target, id) = (child(source, "target"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        v.insert("targetAverageValue".into(), quantity_or_zero(get(target, "averageValue")));
        copy_to(&mut v, "selector", id, "selector");
        out.insert("pods".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "resource") {
        let target = child(source, "target");
        let mut v = Object::new();
        v.insert("name".into(), Value::String(text(source, "name").into()));
        copy_to(&mut v, "targetAverageUtilization", target, "averageUtilization");
        copy_to(&mut v, "targetAverageValue", target, "averageValue");
        out.insert("resource".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "containerResource") {
        let target = child(source, "target");
        let mut v = Object::new();
        v.insert("name".into(), Value::String(text(source, "name").into()));
        copy_to(&mut v, "targetAverageUtilization", target, "averageUtilization");
        copy_to(&mut v, "targetAverageValue", target, "averageValue");
        v.insert("container".into(), Value::String(text(source, "container").into()));
        out.insert("containerResource".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "external") {
        let (target, id) = (child(source, "target"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        copy_to(&mut v, "metricSelector", id, "selector");
        copy_to(&mut v, "targetValue", target, "value");
        copy_to(&mut v, "targetAverageValue", target, "averageValue");
        out.insert("external".into(), Value::Object(v));
    }
    Value::Object(out)
}

/// A v2 `MetricStatus` in the autoscaling/v1 `MetricStatus` JSON form.
fn metric_status_to_v1(metric: &Value) -> Value {
    let mut out = Object::new();
    out.insert("type".into(), Value::String(text(metric, "type").into()));
    if let Some(source) = get(metric, "object") {
        let (current, id) = (child(source, "current"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("target".into(), cross_ref_to_v1(child(source, "describedObject")));
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        v.insert("currentValue".into(), quantity_or_zero(get(current, "value")));
        copy_to(&mut v, "selector", id, "selector");
        copy_to(&mut v, "averageValue", current, "averageValue");
        out.insert("object".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "pods") {
        let (current, id) = (child(source, "current"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        v.insert("currentAverageValue".into(), quantity_or_zero(get(current, "averageValue")));
        copy_to(&mut v, "selector", id, "selector");
        out.insert("pods".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "resource") {
        let current = child(source, "current");
        let mut v = Object::new();
        v.insert("name".into(), Value::String(text(source, "name").into()));
        copy_to(&mut v, "currentAverageUtilization", current, "averageUtilization");
        v.insert("currentAverageValue".into(), quantity_or_zero(get(current, "averageValue")));
        out.insert("resource".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "containerResource") {
        let current = child(source, "current");
        let mut v = Object::new();
        v.insert("name".into(), Value::String(text(source, "name").into()));
        copy_to(&mut v, "currentAverageUtilization", current, "averageUtilization");
        v.insert("currentAverageValue".into(), quantity_or_zero(get(current, "averageValue")));
        v.insert("container".into(), Value::String(text(source, "container").into()));
        out.insert("containerResource".into(), Value::Object(v));
    }
    if let Some(source) = get(metric, "external") {
        let (current, id) = (child(source, "current"), child(source, "metric"));
        let mut v = Object::new();
        v.insert("metricName".into(), Value::String(text(id, "name").into()));
        copy_to(&mut v, "metricSelector", id, "selector");
        v.insert("currentValue".into(), quantity_or_zero(get(current, "value")));
        copy_to(&mut v, "currentAverageValue", current, "averageValue");
        out.insert("external".into(), Value::Object(v));
    }
    Value::Object(out)
}

/// A v2 condition in the autoscaling/v1 JSON form: `lastTransitionTime` is a non-pointer
/// `metav1.Time`, so Go always writes it (null when zero).
fn condition_to_v1(condition: &Value) -> Value {
    let mut out = Object::new();
    out.insert("type".into(), Value::String(text(condition, "type").into()));
    out.insert("status".into(), Value::String(text(condition, "status").into()));
    out.insert("lastTransitionTime".into(), get(condition, "lastTransitionTime").cloned().unwrap_or(Value::Null));
    copy_non_empty_text(&mut out, "reason", condition, "reason");
    copy_non_empty_text(&mut out, "message", condition, "message");
    copy_to(&mut out, "observedGeneration", condition, "observedGeneration");
    Value::Object(out)
}

/// A v2 behavior as upstream's internal `HorizontalPodAutoscalerBehavior` marshals: Go field names
/// for keys, nil pointers and slices as null.
fn behavior_to_internal(behavior: &Value) -> Value {
    let rules = |key: &str| match get(behavior, key).filter(|r| r.is_object()) {
        Some(r) => {
            let policies = match get(r, "policies") {
                Some(Value::Array(items)) => Value::Array(
                    items
                        .iter()
                        .map(|p| {
                            json!({
                                "Type": text(p, "type"),
                                "Value": get(p, "value").cloned().unwrap_or(json!(0)),
                                "PeriodSeconds": get(p, "periodSeconds").cloned().unwrap_or(json!(0)),
                            })
                        })
                        .collect(),
                ),
                _ => Value::Null,
            };
            json!({
                "StabilizationWindowSeconds": get(r, "stabilizationWindowSeconds").cloned().unwrap_or(Value::Null),
                "SelectPolicy": get(r, "selectPolicy").cloned().unwrap_or(Value::Null),
                "Policies": policies,
                "Tolerance": get(r, "tolerance").cloned().unwrap_or(Value::Null),
            })
        }
        None => Value::Null,
    };
    json!({"ScaleUp": rules("scaleUp"), "ScaleDown": rules("scaleDown")})
}

/// Copies `metadata`, dropping any round-trip annotations and then adding `added`.
fn hpa_metadata(obj: &Value, added: &[(&str, String)]) -> Option<Value> {
    let mut meta = match obj.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) if !added.is_empty() => Object::new(),
        other => return other.cloned(),
    };
    let mut dropped = false;
    if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
        for key in ROUND_TRIP_ANNOTATIONS {
            dropped |= annotations.remove(key).is_some();
        }
    }
    if !added.is_empty() {
        if matches!(meta.get("annotations"), None | Some(Value::Null)) {
            meta.insert("annotations".into(), Value::Object(Object::new()));
        }
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            for (key, value) in added {
                annotations.insert((*key).to_string(), Value::String(value.clone()));
            }
        }
    } else if dropped && meta.get("annotations").and_then(Value::as_object).is_some_and(Object::is_empty) {
        // Go omits the emptied map.
        meta.remove("annotations");
    }
    Some(Value::Object(meta))
}

/// autoscaling/v2 HorizontalPodAutoscaler -> autoscaling/v1.
pub fn hpa_v2_to_v1(obj: &Value) -> Value {
    let spec = child(obj, "spec");
    let status = child(obj, "status");
    let metrics = list(spec, "metrics");
    let current_metrics = list(status, "currentMetrics");
    let conditions = list(status, "conditions");

    let mut added: Vec<(&str, String)> = Vec::new();
    let other_metrics: Vec<Value> = metrics.iter().filter(|m| cpu_utilization_target(m).is_none()).map(metric_spec_to_v1).collect();
    if !other_metrics.is_empty() {
        added.push((METRIC_SPECS_ANNOTATION, go_json(&Value::Array(other_metrics))));
    }
    if !current_metrics.is_empty() {
        let statuses = current_metrics.iter().map(metric_status_to_v1).collect();
        added.push((METRIC_STATUSES_ANNOTATION, go_json(&Value::Array(statuses))));
    }
    if let Some(behavior) = get(spec, "behavior").filter(|b| b.is_object()) {
        added.push((BEHAVIOR_ANNOTATION, go_json(&behavior_to_internal(behavior))));
    }
    if !conditions.is_empty() {
        let conditions = conditions.iter().map(condition_to_v1).collect();
        added.push((CONDITIONS_ANNOTATION, go_json(&Value::Array(conditions))));
    }

    let mut out = Object::new();
    out.insert("kind".into(), json!(HPA_KIND));
    out.insert("apiVersion".into(), json!("autoscaling/v1"));
    if let Some(meta) = hpa_metadata(obj, &added) {
        out.insert("metadata".into(), meta);
    }

    let mut v1_spec = Object::new();
    copy_to(&mut v1_spec, "scaleTargetRef", spec, "scaleTargetRef");
    copy_to(&mut v1_spec, "minReplicas", spec, "minReplicas");
    copy_to(&mut v1_spec, "maxReplicas", spec, "maxReplicas");
    if let Some(target) = metrics.iter().find_map(cpu_utilization_target) {
        v1_spec.insert("targetCPUUtilizationPercentage".into(), target.clone());
    }
    out.insert("spec".into(), Value::Object(v1_spec));

    if !status.is_null() {
        let mut v1_status = Object::new();
        copy_to(&mut v1_status, "observedGeneration", status, "observedGeneration");
        copy_to(&mut v1_status, "lastScaleTime", status, "lastScaleTime");
        copy_to(&mut v1_status, "currentReplicas", status, "currentReplicas");
        copy_to(&mut v1_status, "desiredReplicas", status, "desiredReplicas");
        if let Some(current) = current_metrics.iter().filter_map(cpu_utilization_current).last() {
            v1_status.insert("currentCPUUtilizationPercentage".into(), current.clone());
        }
        out.insert("status".into(), Value::Object(v1_status));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding the round-trip annotations the way `encoding/json` decodes into the Go types: field
// names match exactly or else case-insensitively, unknown fields are ignored, null leaves the zero
// value, and a value of the wrong type fails the whole annotation.

/// A decoding failure: the annotation is ignored.
struct Invalid;

type Decoded<T> = Result<T, Invalid>;

fn field<'a>(m: &'a Object, key: &str) -> Option<&'a Value> {
    let v = m.get(key).or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v));
    v.filter(|v| !v.is_null())
}

fn d_struct<'a>(m: &'a Object, key: &str) -> Decoded<Option<&'a Object>> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(Invalid),
    }
}

fn d_string<'a>(m: &'a Object, key: &str) -> Decoded<Option<&'a str>> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid),
    }
}

fn d_int(m: &Object, key: &str, min: i64, max: i64) -> Decoded<Option<Value>> {
    match field(m, key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(json!(n))),
            _ => Err(Invalid),
        },
    }
}

fn d_int32(m: &Object, key: &str) -> Decoded<Option<Value>> {
    d_int(m, key, i32::MIN.into(), i32::MAX.into())
}

fn d_int64(m: &Object, key: &str) -> Decoded<Option<Value>> {
    d_int(m, key, i64::MIN, i64::MAX)
}

/// `resource.Quantity` accepts a string or a bare number.
fn d_quantity(m: &Object, key: &str) -> Decoded<Option<Value>> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(Value::String(s.clone()))),
        Some(Value::Number(n)) => Ok(Some(Value::String(n.to_string()))),
        Some(_) => Err(Invalid),
    }
}

/// `metav1.Time`: a string (null is the zero time).
fn d_time(m: &Object, key: &str) -> Decoded<Option<Value>> {
    Ok(d_string(m, key)?.map(|s| Value::String(s.to_string())))
}

fn d_string_list(m: &Object, key: &str) -> Decoded<Option<Vec<Value>>> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(Value::String(s.clone())),
                Value::Null => Ok(Value::String(String::new())),
                _ => Err(Invalid),
            })
            .collect::<Decoded<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Invalid),
    }
}

/// Decodes each element of a list of structs (a null element is the zero struct).
fn d_struct_list<T>(v: Option<&Value>, decode: impl Fn(&Object) -> Decoded<T>) -> Decoded<Vec<T>> {
    let empty = Object::new();
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Object(o) => decode(o),
                Value::Null => decode(&empty),
                _ => Err(Invalid),
            })
            .collect(),
        Some(_) => Err(Invalid),
    }
}

/// `metav1.LabelSelector`, written back in its JSON form.
fn d_selector(m: &Object, key: &str) -> Decoded<Option<Value>> {
    let Some(selector) = d_struct(m, key)? else { return Ok(None) };
    let mut out = Object::new();
    if let Some(labels) = d_struct(selector, "matchLabels")? {
        let mut decoded = Object::new();
        for (k, v) in labels {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                _ => return Err(Invalid),
            };
            decoded.insert(k.clone(), Value::String(v));
        }
        if !decoded.is_empty() {
            out.insert("matchLabels".into(), Value::Object(decoded));
        }
    }
    let expressions = d_struct_list(field(selector, "matchExpressions"), |e| {
        let mut r = Object::new();
        r.insert("key".into(), json!(d_string(e, "key")?.unwrap_or("")));
        r.insert("operator".into(), json!(d_string(e, "operator")?.unwrap_or("")));
        if let Some(values) = d_string_list(e, "values")?.filter(|v| !v.is_empty()) {
            r.insert("values".into(), Value::Array(values));
        }
        Ok(Value::Object(r))
    })?;
    if !expressions.is_empty() {
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Ok(Some(Value::Object(out)))
}

/// A v1 `CrossVersionObjectReference` as the v2 one (the same fields).
fn d_cross_ref(m: &Object, key: &str) -> Decoded<Value> {
    let empty = Object::new();
    let r = d_struct(m, key)?.unwrap_or(&empty);
    let mut out = Object::new();
    out.insert("kind".into(), json!(d_string(r, "kind")?.unwrap_or("")));
    out.insert("name".into(), json!(d_string(r, "name")?.unwrap_or("")));
    if let Some(api_version) = d_string(r, "apiVersion")?.filter(|s| !s.is_empty()) {
        out.insert("apiVersion".into(), json!(api_version));
    }
    Ok(Value::Object(out))
}

fn metric_identifier(name: &str, selector: Option<Value>) -> Value {
    let mut out = Object::new();
    out.insert("name".into(), json!(name));
    if let Some(selector) = selector {
        out.insert("selector".into(), selector);
    }
    Value::Object(out)
}

fn metric_target(kind: &str, value: Option<Value>, average_value: Option<Value>, average_utilization: Option<Value>) -> Value {
    let mut out = Object::new();
    out.insert("type".into(), json!(kind));
    for (key, v) in [("value", value), ("averageValue", average_value), ("averageUtilization", average_utilization)] {
        if let Some(v) = v {
            out.insert(key.into(), v);
        }
    }
    Value::Object(out)
}

fn metric_value_status(value: Option<Value>, average_value: Option<Value>, average_utilization: Option<Value>) -> Value {
    let mut out = Object::new();
    for (key, v) in [("value", value), ("averageValue", average_value), ("averageUtilization", average_utilization)] {
        if let Some(v) = v {
            out.insert(key.into(), v);
        }
    }
    Value::Object(out)
}

fn zero_quantity() -> Value {
    Value::String("0".into())
}

/// An autoscaling/v1 `MetricSpec` (from the annotation) as a v2 `MetricSpec`.
fn metric_spec_from_v1(m: &Object) -> Decoded<Value> {
    let mut out = Object::new();
    out.insert("type".into(), json!(d_string(m, "type")?.unwrap_or("")));
    if let Some(s) = d_struct(m, "object")? {
        let described = d_cross_ref(s, "target")?;
        let name = d_string(s, "metricName")?.unwrap_or("");
        let value = d_quantity(s, "targetValue")?.unwrap_or_else(zero_quantity);
        let selector = d_selector(s, "selector")?;
        let average = d_quantity(s, "averageValue")?;
        let kind = if average.is_some() { "AverageValue" } else { "Value" };
        out.insert(
            "object".into(),
            json!({"describedObject": described, "target": metric_target(kind, Some(value), average, None), "metric": metric_identifier(name, selector)}),
        );
    }
    if let Some(s) = d_struct(m, "pods")? {
        let name = d_string(s, "metricName")?.unwrap_or("");
        let average = d_quantity(s, "targetAverageValue")?.unwrap_or_else(zero_quantity);
        let selector = d_selector(s, "selector")?;
        out.insert("pods".into(), json!({"metric": metric_identifier(name, selector), "target": metric_target("AverageValue", None, Some(average), None)}));
    }
    if let Some(s) = d_struct(m, "resource")? {
        let name = d_string(s, "name")?.unwrap_or("");
        let utilization = d_int32(s, "targetAverageUtilization")?;
        let average = d_quantity(s, "targetAverageValue")?;
        let kind = if utilization.is_some() { "Utilization" } else { "AverageValue" };
        out.insert("resource".into(), json!({"name": name, "target": metric_target(kind, None, average, utilization)}));
    }
    if let Some(s) = d_struct(m, "containerResource")? {
        let name = d_string(s, "name")?.unwrap_or("");
        let utilization = d_int32(s, "targetAverageUtilization")?;
        let average = d_quantity(s, "targetAverageValue")?;
        let container = d_string(s, "container")?.unwrap_or("");
        let kind = if utilization.is_some() { "Utilization" } else { "AverageValue" };
        out.insert(
            "containerResource".into(),
            json!({"name": name, "target": metric_target(kind, None, average, utilization), "container": container}),
        );
    }
    if let Some(s) = d_struct(m, "external")? {
        let name = d_string(s, "metricName")?.unwrap_or("");
        let selector = d_selector(s, "metricSelector")?;
        let value = d_quantity(s, "targetValue")?;
        let average = d_quantity(s, "targetAverageValue")?;
        let kind = if value.is_some() { "Value" } else { "AverageValue" };
        out.insert("external".into(), json!({"metric": metric_identifier(name, selector), "target": metric_target(kind, value, average, None)}));
    }
    Ok(Value::Object(out))
}

/// An autoscaling/v1 `MetricStatus` (from the annotation) as a v2 `MetricStatus`.
fn metric_status_from_v1(m: &Object) -> Decoded<Value> {
    let mut out = Object::new();
    out.insert("type".into(), json!(d_string(m, "type")?.unwrap_or("")));
    if let Some(s) = d_struct(m, "object")? {
        let described = d_cross_ref(s, "target")?;
        let name = d_string(s, "metricName")?.unwrap_or("");
        let value = d_quantity(s, "currentValue")?.unwrap_or_else(zero_quantity);
        let selector = d_selector(s, "selector")?;
        let average = d_quantity(s, "averageValue")?;
        out.insert(
            "object".into(),
            json!({"metric": metric_identifier(name, selector), "current": metric_value_status(Some(value), average, None), "describedObject": described}),
        );
    }
    if let Some(s) = d_struct(m, "pods")? {
        let name = d_string(s, "metricName")?.unwrap_or("");
        let average = d_quantity(s, "currentAverageValue")?.unwrap_or_else(zero_quantity);
        let selector = d_selector(s, "selector")?;
        out.insert("pods".into(), json!({"metric": metric_identifier(name, selector), "current": metric_value_status(None, Some(average), None)}));
    }
    if let Some(s) = d_struct(m, "resource")? {
        let name = d_string(s, "name")?.unwrap_or("");
        let utilization = d_int32(s, "currentAverageUtilization")?;
        let average = d_quantity(s, "currentAverageValue")?.unwrap_or_else(zero_quantity);
        out.insert("resource".into(), json!({"name": name, "current": metric_value_status(None, Some(average), utilization)}));
    }
    if let Some(s) = d_struct(m, "containerResource")? {
        let name = d_string(s, "name")?.unwrap_or("");
        let utilization = d_int32(s, "currentAverageUtilization")?;
        let average = d_quantity(s, "currentAverageValue")?.unwrap_or_else(zero_quantity);
        let container = d_string(s, "container")?.unwrap_or("");
        out.insert(
            "containerResource".into(),
            json!({"name": name, "current": metric_value_status(None, Some(average), utilization), "container": container}),
        );
    }
    if let Some(s) = d_struct(m, "external")? {
        let name = d_string(s, "metricName")?.unwrap_or("");
        let selector = d_selector(s, "metricSelector")?;
        let value = d_quantity(s, "currentValue")?.unwrap_or_else(zero_quantity);
        let average = d_quantity(s, "currentAverageValue")?;
        out.insert("external".into(), json!({"metric": metric_identifier(name, selector), "current": metric_value_status(Some(value), average, None)}));
    }
    Ok(Value::Object(out))
}

/// An autoscaling/v1 condition (from the annotation) as a v2 condition.
fn condition_from_v1(m: &Object) -> Decoded<Value> {
    let mut out = Object::new();
    out.insert("type".into(), json!(d_string(m, "type")?.unwrap_or("")));
    out.insert("status".into(), json!(d_string(m, "status")?.unwrap_or("")));
    if let Some(time) = d_time(m, "lastTransitionTime")? {
        out.insert("lastTransitionTime".into(), time);
    }
    for key in ["reason", "message"] {
        if let Some(s) = d_string(m, key)?.filter(|s| !s.is_empty()) {
            out.insert(key.into(), json!(s));
        }
    }
    if let Some(generation) = d_int64(m, "observedGeneration")? {
        out.insert("observedGeneration".into(), generation);
    }
    Ok(Value::Object(out))
}

/// The internal `HPAScalingRules` (from the annotation) as v2 `HPAScalingRules`.
fn scaling_rules_from_internal(m: &Object) -> Decoded<Value> {
    let mut out = Object::new();
    if let Some(window) = d_int32(m, "StabilizationWindowSeconds")? {
        out.insert("stabilizationWindowSeconds".into(), window);
    }
    if let Some(select) = d_string(m, "SelectPolicy")? {
        out.insert("selectPolicy".into(), json!(select));
    }
    let policies = d_struct_list(field(m, "Policies"), |p| {
        Ok(json!({
            "type": d_string(p, "Type")?.unwrap_or(""),
            "value": d_int32(p, "Value")?.unwrap_or(json!(0)),
            "periodSeconds": d_int32(p, "PeriodSeconds")?.unwrap_or(json!(0)),
        }))
    })?;
    if !policies.is_empty() {
        out.insert("policies".into(), Value::Array(policies));
    }
    if let Some(tolerance) = d_quantity(m, "Tolerance")? {
        out.insert("tolerance".into(), tolerance);
    }
    Ok(Value::Object(out))
}

/// The internal `HorizontalPodAutoscalerBehavior` (from the annotation) as the v2 behavior; `None`
/// when it does not decode or is the zero value, as upstream then leaves the behavior unset.
fn behavior_from_internal(v: &Value) -> Option<Value> {
    let decode = |m: &Object| -> Decoded<Option<Value>> {
        let up = d_struct(m, "ScaleUp")?.map(scaling_rules_from_internal).transpose()?;
        let down = d_struct(m, "ScaleDown")?.map(scaling_rules_from_internal).transpose()?;
        if up.is_none() && down.is_none() {
            return Ok(None);
        }
        let mut out = Object::new();
        if let Some(up) = up {
            out.insert("scaleUp".into(), up);
        }
        if let Some(down) = down {
            out.insert("scaleDown".into(), down);
        }
        Ok(Some(Value::Object(out)))
    };
    match v {
        Value::Object(m) => decode(m).ok().flatten(),
        _ => None,
    }
}

/// Parses a JSON-encoded list annotation and decodes each element; `None` if it fails anywhere.
fn decode_list_annotation(encoded: Option<&str>, decode: impl Fn(&Object) -> Decoded<Value>) -> Option<Vec<Value>> {
    let parsed: Value = serde_json::from_str(encoded?).ok()?;
    d_struct_list(Some(&parsed), decode).ok()
}

// ---------------------------------------------------------------------------------------------
// HorizontalPodAutoscaler: v1 -> v2

/// autoscaling/v1 HorizontalPodAutoscaler -> autoscaling/v2.
pub fn hpa_v1_to_v2(obj: &Value) -> Value {
    let spec = child(obj, "spec");
    let status = child(obj, "status");
    let annotations = obj.get("metadata").and_then(|m| m.get("annotations"));
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);

    // Spec: the metrics from the annotation, then the CPU one, else the old implicit default.
    let mut metrics = decode_list_annotation(annotation(METRIC_SPECS_ANNOTATION), metric_spec_from_v1).unwrap_or_default();
    let cpu_metric = |utilization: Value| json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilization}}});
    if let Some(target) = get(spec, "targetCPUUtilizationPercentage") {
        metrics.push(cpu_metric(target.clone()));
    }
    if metrics.is_empty() {
        metrics.push(cpu_metric(json!(DEFAULT_CPU_UTILIZATION)));
    }
    let behavior = annotation(BEHAVIOR_ANNOTATION).and_then(|s| serde_json::from_str::<Value>(s).ok()).and_then(|v| behavior_from_internal(&v));

    let mut v2_spec = Object::new();
    copy_to(&mut v2_spec, "scaleTargetRef", spec, "scaleTargetRef");
    copy_to(&mut v2_spec, "minReplicas", spec, "minReplicas");
    copy_to(&mut v2_spec, "maxReplicas", spec, "maxReplicas");
    v2_spec.insert("metrics".into(), Value::Array(metrics));
    if let Some(behavior) = behavior {
        v2_spec.insert("behavior".into(), behavior);
    }

    // Status: the annotation's current metrics replace the CPU one (they hold more).
    let current_metrics = decode_list_annotation(annotation(METRIC_STATUSES_ANNOTATION), metric_status_from_v1).or_else(|| {
        get(status, "currentCPUUtilizationPercentage")
            .map(|current| vec![json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current.clone()}}})])
    });
    let conditions = decode_list_annotation(annotation(CONDITIONS_ANNOTATION), condition_from_v1);

    let mut v2_status = Object::new();
    copy_to(&mut v2_status, "observedGeneration", status, "observedGeneration");
    copy_to(&mut v2_status, "lastScaleTime", status, "lastScaleTime");
    copy_to(&mut v2_status, "currentReplicas", status, "currentReplicas");
    copy_to(&mut v2_status, "desiredReplicas", status, "desiredReplicas");
    if let Some(current_metrics) = current_metrics.filter(|m| !m.is_empty()) {
        v2_status.insert("currentMetrics".into(), Value::Array(current_metrics));
    }
    if let Some(conditions) = conditions.filter(|c| !c.is_empty()) {
        v2_status.insert("conditions".into(), Value::Array(conditions));
    }

    let mut out = Object::new();
    out.insert("kind".into(), json!(HPA_KIND));
    out.insert("apiVersion".into(), json!("autoscaling/v2"));
    if let Some(meta) = hpa_metadata(obj, &[]) {
        out.insert("metadata".into(), meta);
    }
    out.insert("spec".into(), Value::Object(v2_spec));
    if !status.is_null() || !v2_status.is_empty() {
        out.insert("status".into(), Value::Object(v2_status));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Event: core/v1 <-> events.k8s.io/v1

/// (events.k8s.io/v1 field, core/v1 field), in the order of the events.k8s.io/v1 type.
const EVENTS_FIELDS: [(&str, &str); 15] = [
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("note", "message"),
    ("type", "type"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// (core/v1 field, events.k8s.io/v1 field), in the order of the core/v1 type.
const CORE_FIELDS: [(&str, &str); 15] = [
    ("metadata", "metadata"),
    ("involvedObject", "regarding"),
    ("reason", "reason"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("action", "action"),
    ("related", "related"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
];

/// `EventSeries` has the same two fields in both versions; anything else (core/v1's long-removed
/// `state`) does not map.
fn event_series(series: &Value) -> Value {
    match series {
        Value::Object(m) => Value::Object(m.iter().filter(|(k, _)| *k == "count" || *k == "lastObservedTime").map(|(k, v)| (k.clone(), v.clone())).collect()),
        other => other.clone(),
    }
}

fn convert_event(obj: &Value, api_version: &str, fields: &[(&str, &str)]) -> Value {
    let mut out = Object::new();
    out.insert("kind".into(), json!("Event"));
    out.insert("apiVersion".into(), json!(api_version));
    for &(to, from) in fields {
        if let Some(v) = obj.get(from) {
            let v = if to == "series" { event_series(v) } else { v.clone() };
            out.insert(to.to_string(), v);
        }
    }
    Value::Object(out)
}

/// core/v1 Event -> events.k8s.io/v1 Event.
pub fn event_core_to_events(obj: &Value) -> Value {
    convert_event(obj, "events.k8s.io/v1", &EVENTS_FIELDS)
}

/// events.k8s.io/v1 Event -> core/v1 Event.
pub fn event_events_to_core(obj: &Value) -> Value {
    convert_event(obj, "v1", &CORE_FIELDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
        obj.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
    }

    fn annotation_json(obj: &Value, key: &str) -> Value {
        serde_json::from_str(annotation(obj, key).unwrap_or_else(|| panic!("no annotation {key}"))).unwrap()
    }

    fn full_v2_hpa() -> Value {
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "uid": "1234", "resourceVersion": "7", "labels": {"app": "web"}, "annotations": {"team": "blue"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [
                    {"type": "Pods", "pods": {"metric": {"name": "qps", "selector": {"matchLabels": {"verb": "GET"}}}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchExpressions": [{"key": "q", "operator": "In", "values": ["a", "b"]}]}}, "target": {"type": "Value", "value": "30"}}},
                    {"type": "External", "external": {"metric": {"name": "backlog"}, "target": {"type": "AverageValue", "averageValue": "5"}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
                    {"type": "ContainerResource", "containerResource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}, "container": "app"}},
                    {"type": "Object", "object": {"describedObject": {"kind": "Ingress", "name": "main", "apiVersion": "networking.k8s.io/v1"}, "target": {"type": "Value", "value": "2k"}, "metric": {"name": "rps"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
                ],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                    "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}], "tolerance": "50m"}
                }
            },
            "status": {
                "observedGeneration": 3,
                "lastScaleTime": "2026-01-02T03:04:05Z",
                "currentReplicas": 3,
                "desiredReplicas": 4,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageValue": "250m", "averageUtilization": 65}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps", "selector": {"matchLabels": {"verb": "GET"}}}, "current": {"averageValue": "12"}}},
                    {"type": "External", "external": {"metric": {"name": "queue"}, "current": {"value": "25"}}},
                    {"type": "ContainerResource", "containerResource": {"name": "cpu", "current": {"averageValue": "100m", "averageUtilization": 50}, "container": "app"}},
                    {"type": "Object", "object": {"metric": {"name": "rps"}, "current": {"value": "1500"}, "describedObject": {"kind": "Ingress", "name": "main", "apiVersion": "networking.k8s.io/v1"}}}
                ],
                "conditions": [
                    {"type": "AbleToScale", "status": "True", "lastTransitionTime": "2026-01-02T03:00:00Z", "reason": "ReadyForNewScale", "message": "recommended size matches current size"},
                    {"type": "ScalingActive", "status": "True", "lastTransitionTime": "2026-01-02T03:00:00Z", "reason": "ValidMetricFound", "message": "the HPA was able to compute the replica count", "observedGeneration": 3}
                ]
            }
        })
    }

    #[test]
    fn hpa_v2_v1_v2_round_trip_preserves_everything() {
        let v2 = full_v2_hpa();
        let v1 = hpa_v2_to_v1(&v2);
        assert_eq!(hpa_v1_to_v2(&v1), v2);
    }

    #[test]
    fn hpa_v2_to_v1_maps_fields() {
        let v1 = hpa_v2_to_v1(&full_v2_hpa());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["kind"], "HorizontalPodAutoscaler");
        assert_eq!(
            v1["spec"],
            json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70})
        );
        assert_eq!(
            v1["status"],
            json!({"observedGeneration": 3, "lastScaleTime": "2026-01-02T03:04:05Z", "currentReplicas": 3, "desiredReplicas": 4, "currentCPUUtilizationPercentage": 65})
        );
        assert_eq!(v1["metadata"]["name"], "web");
        assert_eq!(v1["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(v1["metadata"]["annotations"]["team"], "blue");

        // The other metrics, in the autoscaling/v1 MetricSpec form; the CPU utilization one is not there.
        let metrics = annotation_json(&v1, METRIC_SPECS_ANNOTATION);
        assert_eq!(
            metrics,
            json!([
                {"type": "Pods", "pods": {"metricName": "qps", "targetAverageValue": "10", "selector": {"matchLabels": {"verb": "GET"}}}},
                {"type": "External", "external": {"metricName": "queue", "metricSelector": {"matchExpressions": [{"key": "q", "operator": "In", "values": ["a", "b"]}]}, "targetValue": "30"}},
                {"type": "External", "external": {"metricName": "backlog", "targetAverageValue": "5"}},
                {"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "500Mi"}},
                {"type": "ContainerResource", "containerResource": {"name": "cpu", "targetAverageUtilization": 60, "container": "app"}},
                {"type": "Object", "object": {"target": {"kind": "Ingress", "name": "main", "apiVersion": "networking.k8s.io/v1"}, "metricName": "rps", "targetValue": "2k"}}
            ])
        );
        // Exactly Go's encoding: compact, fields in struct order.
        assert!(annotation(&v1, METRIC_SPECS_ANNOTATION).unwrap().starts_with(r#"[{"type":"Pods","pods":{"metricName":"qps","targetAverageValue":"10","selector":"#));

        let current = annotation_json(&v1, METRIC_STATUSES_ANNOTATION);
        assert_eq!(current[0], json!({"type": "Resource", "resource": {"name": "cpu", "currentAverageUtilization": 65, "currentAverageValue": "250m"}}));
        assert_eq!(current[2], json!({"type": "External", "external": {"metricName": "queue", "currentValue": "25"}}));
        assert_eq!(current.as_array().unwrap().len(), 5);

        assert_eq!(
            annotation(&v1, BEHAVIOR_ANNOTATION).unwrap(),
            r#"{"ScaleUp":{"StabilizationWindowSeconds":0,"SelectPolicy":"Max","Policies":[{"Type":"Pods","Value":4,"PeriodSeconds":15},{"Type":"Percent","Value":100,"PeriodSeconds":15}],"Tolerance":null},"ScaleDown":{"StabilizationWindowSeconds":300,"SelectPolicy":"Min","Policies":[{"Type":"Percent","Value":10,"PeriodSeconds":60}],"Tolerance":"50m"}}"#
        );
        assert_eq!(
            annotation_json(&v1, CONDITIONS_ANNOTATION)[0],
            json!({"type": "AbleToScale", "status": "True", "lastTransitionTime": "2026-01-02T03:00:00Z", "reason": "ReadyForNewScale", "message": "recommended size matches current size"})
        );
    }

    #[test]
    fn hpa_v2_with_only_cpu_needs_no_annotations() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 3,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            "status": {"currentReplicas": 1, "desiredReplicas": 1}
        });
        let v1 = hpa_v2_to_v1(&v2);
        assert_eq!(v1["metadata"], json!({"name": "web"}));
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"], json!({"currentReplicas": 1, "desiredReplicas": 1}));
        assert_eq!(hpa_v1_to_v2(&v1), v2);
    }

    #[test]
    fn hpa_v2_to_v1_first_cpu_target_last_cpu_current() {
        let v2 = json!({
            "spec": {"metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "500m"}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 40}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 90}}}
            ]},
            "status": {"currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 10}}},
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 20}}},
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageValue": "1"}}}
            ]}
        });
        let v1 = hpa_v2_to_v1(&v2);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 40);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 20);
        // Only the CPU metric without a utilization target goes to the annotation.
        assert_eq!(annotation_json(&v1, METRIC_SPECS_ANNOTATION), json!([{"type": "Resource", "resource": {"name": "cpu", "targetAverageValue": "500m"}}]));
    }

    #[test]
    fn hpa_v1_to_v2_cpu_target_becomes_metric() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 55},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 61}
        });
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(
            v2,
            json!({
                "kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}]
                },
                "status": {
                    "currentReplicas": 2, "desiredReplicas": 3,
                    "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 61}}}]
                }
            })
        );
        // Back in v1, the current metrics are also kept whole in their annotation (even when they
        // are only the CPU one, to keep its raw value), so a second trip gains a "0" raw value.
        let back = hpa_v2_to_v1(&v2);
        assert_eq!(back["spec"], v1["spec"]);
        assert_eq!(back["status"], v1["status"]);
        assert_eq!(
            back["metadata"]["annotations"],
            json!({METRIC_STATUSES_ANNOTATION: r#"[{"type":"Resource","resource":{"name":"cpu","currentAverageUtilization":61,"currentAverageValue":"0"}}]"#})
        );
        assert_eq!(
            hpa_v1_to_v2(&back)["status"]["currentMetrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageValue": "0", "averageUtilization": 61}}}])
        );
    }

    #[test]
    fn hpa_v1_without_target_gets_the_default_cpu_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 4}});
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(v2["spec"]["metrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]));
        assert!(v2["spec"].get("minReplicas").is_none(), "minReplicas is defaulting's business");
        assert!(v2.get("status").is_none());
        // Served back through v1, the default shows as the CPU target.
        assert_eq!(hpa_v2_to_v1(&v2)["spec"]["targetCPUUtilizationPercentage"], 80);

        // No default when the annotation brings other metrics.
        let mut with_other = v1.clone();
        with_other["metadata"]["annotations"] = json!({METRIC_SPECS_ANNOTATION: r#"[{"type":"Pods","pods":{"metricName":"qps","targetAverageValue":"7"}}]"#});
        let v2 = hpa_v1_to_v2(&with_other);
        assert_eq!(v2["spec"]["metrics"], json!([{"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "7"}}}]));
    }

    #[test]
    fn hpa_v1_to_v2_cpu_metric_goes_after_the_annotated_ones() {
        let v1 = json!({
            "metadata": {"name": "web", "annotations": {"keep": "me", METRIC_SPECS_ANNOTATION: r#"[{"type":"Resource","resource":{"name":"memory","targetAverageUtilization":70}}]"#}},
            "spec": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 30}
        });
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(
            v2["spec"]["metrics"],
            json!([
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 70}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 30}}}
            ])
        );
        assert_eq!(v2["metadata"], json!({"name": "web", "annotations": {"keep": "me"}}));
    }

    #[test]
    fn hpa_v1_annotations_decode_like_encoding_json() {
        let v1 = json!({
            "metadata": {"name": "web", "annotations": {
                // Keys match case-insensitively; a bare number is a quantity.
                METRIC_SPECS_ANNOTATION: r#"[{"Type":"External","External":{"MetricName":"q","TargetAverageValue":3}},{"type":"Object","object":{"target":{"kind":"Service","name":"s"},"metricName":"m","averageValue":"4"}}]"#,
                // Camel-case keys from other writers decode too.
                BEHAVIOR_ANNOTATION: r#"{"scaleDown":{"stabilizationWindowSeconds":60,"policies":[{"type":"Pods","value":1,"periodSeconds":30}]}}"#,
                METRIC_STATUSES_ANNOTATION: r#"[{"type":"Resource","resource":{"name":"memory"}}]"#,
                CONDITIONS_ANNOTATION: r#"[{"type":"ScalingLimited","status":"False","lastTransitionTime":null}]"#
            }},
            "spec": {"maxReplicas": 4},
            "status": {"currentReplicas": 1, "desiredReplicas": 1, "currentCPUUtilizationPercentage": 5}
        });
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(
            v2["spec"]["metrics"],
            json!([
                {"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "AverageValue", "averageValue": "3"}}},
                // An Object target with an average value comes back with value "0", as upstream.
                {"type": "Object", "object": {"describedObject": {"kind": "Service", "name": "s"}, "target": {"type": "AverageValue", "value": "0", "averageValue": "4"}, "metric": {"name": "m"}}}
            ])
        );
        assert_eq!(v2["spec"]["behavior"], json!({"scaleDown": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}));
        // The annotation's current metrics win over currentCPUUtilizationPercentage.
        assert_eq!(v2["status"]["currentMetrics"], json!([{"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "0"}}}]));
        assert_eq!(v2["status"]["conditions"], json!([{"type": "ScalingLimited", "status": "False"}]));
        assert_eq!(v2["metadata"], json!({"name": "web"}), "round-trip annotations are dropped");
    }

    #[test]
    fn hpa_v1_bad_annotations_are_ignored_and_dropped() {
        let v1 = json!({
            "metadata": {"name": "web", "annotations": {
                METRIC_SPECS_ANNOTATION: "not json",
                BEHAVIOR_ANNOTATION: r#"{"ScaleUp":{"StabilizationWindowSeconds":"soon"}}"#,
                METRIC_STATUSES_ANNOTATION: r#"[{"type":"Resource","resource":{"name":"cpu","currentAverageUtilization":1.5}}]"#,
                CONDITIONS_ANNOTATION: r#"{"type":"AbleToScale"}"#,
                TOLERANCE_SCALE_UP_ANNOTATION: "10m"
            }},
            "spec": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 20},
            "status": {"currentCPUUtilizationPercentage": 9}
        });
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(v2["spec"]["metrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 20}}}]));
        assert!(v2["spec"].get("behavior").is_none());
        assert_eq!(v2["status"]["currentMetrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 9}}}]));
        assert!(v2["status"].get("conditions").is_none());
        assert_eq!(v2["metadata"], json!({"name": "web"}));

        // The zero behavior ({} or both rules null) sets nothing either.
        let mut empty_behavior = v1.clone();
        empty_behavior["metadata"]["annotations"] = json!({BEHAVIOR_ANNOTATION: r#"{"ScaleUp":null}"#});
        assert!(hpa_v1_to_v2(&empty_behavior)["spec"].get("behavior").is_none());
    }

    #[test]
    fn hpa_v2_stale_round_trip_annotations_are_replaced() {
        let v2 = json!({
            "metadata": {"name": "web", "annotations": {METRIC_SPECS_ANNOTATION: "stale", CONDITIONS_ANNOTATION: "stale"}},
            "spec": {"maxReplicas": 2, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}
        });
        let v1 = hpa_v2_to_v1(&v2);
        assert_eq!(v1["metadata"], json!({"name": "web"}));

        let mut with_behavior = v2.clone();
        with_behavior["spec"]["behavior"] = json!({"scaleUp": {"selectPolicy": "Disabled"}});
        let v1 = hpa_v2_to_v1(&with_behavior);
        assert_eq!(
            v1["metadata"]["annotations"],
            json!({BEHAVIOR_ANNOTATION: r#"{"ScaleUp":{"StabilizationWindowSeconds":null,"SelectPolicy":"Disabled","Policies":null,"Tolerance":null},"ScaleDown":null}"#})
        );
        assert_eq!(hpa_v1_to_v2(&v1)["spec"]["behavior"], json!({"scaleUp": {"selectPolicy": "Disabled"}}));
    }

    #[test]
    fn go_json_writes_struct_fields_in_go_order_and_maps_sorted() {
        let spec = json!([{"resource": {"targetAverageUtilization": 50, "name": "cpu"}, "type": "Resource"},
                          {"pods": {"selector": {"matchLabels": {"type": "a", "app": "b"}}, "targetAverageValue": "1", "metricName": "qps"}, "type": "Pods"}]);
        assert_eq!(
            go_json(&spec),
            r#"[{"type":"Resource","resource":{"name":"cpu","targetAverageUtilization":50}},{"type":"Pods","pods":{"metricName":"qps","targetAverageValue":"1","selector":{"matchLabels":{"app":"b","type":"a"}}}}]"#
        );
    }

    #[test]
    fn go_json_escapes_html() {
        assert_eq!(go_json(&json!({"a": "<b>&</b>"})), r#"{"a":"\u003cb\u003e\u0026\u003c/b\u003e"}"#);
        let escaped: Value = serde_json::from_str(&go_json(&json!(["x\u{2028}y"]))).unwrap();
        assert_eq!(escaped, json!(["x\u{2028}y"]));
    }

    #[test]
    fn odd_input_never_panics() {
        let odd = [
            json!(null),
            json!(3),
            json!("hpa"),
            json!([1, 2]),
            json!({}),
            json!({"metadata": "x", "spec": [], "status": 7}),
            json!({"metadata": {"annotations": "x"}, "spec": {"metrics": "x", "behavior": []}, "status": {"currentMetrics": {}, "conditions": 1}}),
            json!({"metadata": {"annotations": null}, "spec": {"metrics": [null, 1, {"type": 2, "resource": "cpu"}, {"type": "Resource", "resource": {"name": "cpu", "target": 1}}],
                   "behavior": {"scaleUp": {"policies": [null, 3]}, "scaleDown": 5}},
                   "status": {"currentMetrics": [null, {"type": "Object", "object": []}], "conditions": [null, "x"]}}),
            json!({"metadata": {"annotations": {
                METRIC_SPECS_ANNOTATION: "[null, 1]",
                METRIC_STATUSES_ANNOTATION: "[null, {\"type\":\"Pods\",\"pods\":null}]",
                BEHAVIOR_ANNOTATION: "[]",
                CONDITIONS_ANNOTATION: 5
            }}, "spec": {"targetCPUUtilizationPercentage": "high"}}),
        ];
        for obj in &odd {
            let v1 = hpa_v2_to_v1(obj);
            let _ = hpa_v1_to_v2(&v1);
            let _ = hpa_v1_to_v2(obj);
            let _ = event_events_to_core(&event_core_to_events(obj));
            let _ = event_core_to_events(&event_events_to_core(obj));
        }
        // A null element of an annotated list is the zero struct.
        let v2 = hpa_v1_to_v2(&odd[8]);
        assert_eq!(v2["status"]["currentMetrics"], json!([{"type": ""}, {"type": "Pods"}]));
        assert_eq!(v2["spec"]["metrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": "high"}}}]));
    }

    fn full_core_event() -> Value {
        json!({
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {"name": "web-1.17a", "namespace": "default", "uid": "e-1", "resourceVersion": "42", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "p-1", "apiVersion": "v1", "resourceVersion": "40", "fieldPath": "spec.containers{web}"},
            "reason": "Pulled",
            "message": "Successfully pulled image",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2026-01-02T03:04:05Z",
            "lastTimestamp": "2026-01-02T03:05:05Z",
            "count": 3,
            "type": "Normal",
            "eventTime": "2026-01-02T03:04:05.123456Z",
            "series": {"count": 2, "lastObservedTime": "2026-01-02T03:05:05.000001Z"},
            "action": "Pulling",
            "related": {"kind": "Node", "name": "node-1", "apiVersion": "v1"},
            "reportingComponent": "kubelet",
            "reportingInstance": "node-1"
        })
    }

    #[test]
    fn event_core_events_core_round_trip() {
        let core = full_core_event();
        assert_eq!(event_events_to_core(&event_core_to_events(&core)), core);
    }

    #[test]
    fn event_events_core_events_round_trip() {
        let events = event_core_to_events(&full_core_event());
        assert_eq!(event_core_to_events(&event_events_to_core(&events)), events);
    }

    #[test]
    fn event_core_to_events_maps_fields() {
        let core = full_core_event();
        let events = event_core_to_events(&core);
        assert_eq!(
            events,
            json!({
                "kind": "Event",
                "apiVersion": "events.k8s.io/v1",
                "metadata": core["metadata"],
                "eventTime": "2026-01-02T03:04:05.123456Z",
                "series": {"count": 2, "lastObservedTime": "2026-01-02T03:05:05.000001Z"},
                "reportingController": "kubelet",
                "reportingInstance": "node-1",
                "action": "Pulling",
                "reason": "Pulled",
                "regarding": core["involvedObject"],
                "related": {"kind": "Node", "name": "node-1", "apiVersion": "v1"},
                "note": "Successfully pulled image",
                "type": "Normal",
                "deprecatedSource": {"component": "kubelet", "host": "node-1"},
                "deprecatedFirstTimestamp": "2026-01-02T03:04:05Z",
                "deprecatedLastTimestamp": "2026-01-02T03:05:05Z",
                "deprecatedCount": 3
            })
        );
    }

    #[test]
    fn event_events_to_core_maps_fields() {
        let events = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns"},
            "eventTime": "2026-01-02T03:04:05.000000Z",
            "reportingController": "example.com/controller",
            "reportingInstance": "controller-7",
            "action": "Reconcile",
            "reason": "Synced",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "ns"},
            "note": "synced",
            "type": "Normal",
            "deprecatedFirstTimestamp": null,
            "deprecatedLastTimestamp": null,
            "deprecatedSource": {},
            "unknownField": true
        });
        assert_eq!(
            event_events_to_core(&events),
            json!({
                "kind": "Event", "apiVersion": "v1",
                "metadata": {"name": "e", "namespace": "ns"},
                "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "ns"},
                "reason": "Synced",
                "message": "synced",
                "source": {},
                "firstTimestamp": null,
                "lastTimestamp": null,
                "type": "Normal",
                "eventTime": "2026-01-02T03:04:05.000000Z",
                "action": "Reconcile",
                "reportingComponent": "example.com/controller",
                "reportingInstance": "controller-7"
            })
        );
    }

    #[test]
    fn event_series_keeps_only_its_fields() {
        let core = json!({"series": {"count": 5, "lastObservedTime": "2026-01-02T03:04:05.000000Z", "state": "Ongoing"}});
        assert_eq!(event_core_to_events(&core)["series"], json!({"count": 5, "lastObservedTime": "2026-01-02T03:04:05.000000Z"}));
    }
}
