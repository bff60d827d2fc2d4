//! The name and metadata rules every kind shares, and rules of a few kinds, worded as upstream
//! words them so users see the same messages they would from kube-apiserver.

use serde_json::{Value, json};

use crate::status::Cause;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Most kinds: up to 253 characters of dot-separated labels.
    Subdomain,
    /// Namespaces and the like: one label, up to 63 characters.
    Label,
    /// Services: one label that starts with a letter.
    Dns1035,
    /// RBAC objects: anything that is a valid URL path segment.
    PathSegment,
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Problems with `name` under `rule`, as upstream's messages.
pub fn name_problems(name: &str, rule: NameRule) -> Vec<String> {
    let mut out = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push("must be no more than 253 characters".into());
            }
            if !name.is_empty() && !name.split('.').all(is_dns_label) {
                out.push(DNS1123_SUBDOMAIN_MSG.into());
            }
        }
        NameRule::Label => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".into());
            }
            if !name.is_empty() && !is_dns_label(&name[..name.len().min(63)]) {
                out.push(DNS1123_LABEL_MSG.into());
            }
        }
        NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".into());
            }
            if !name.is_empty() && !(is_dns_label(&name[..name.len().min(63)]) && name.as_bytes()[0].is_ascii_lowercase()) {
                out.push(DNS1035_LABEL_MSG.into());
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                out.push(format!("may not be '{name}'"));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    out.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    out
}

/// A label or annotation key: an optional DNS subdomain prefix and a name of up to 63 characters.
pub fn qualified_name_problems(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            out.push("prefix part must be non-empty".into());
        } else if !is_dns_subdomain(prefix) {
            out.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    } else if !name_ok {
        out.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    out
}

pub fn label_value_problems(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    if value.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    let ok = value.is_empty()
        || (value.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric());
    if !ok {
        out.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    out
}

/// Checks name, generateName, labels and annotations of `meta`.
pub fn validate_object_meta(meta: &serde_json::Map<String, Value>, rule: NameRule, causes: &mut Vec<Cause>) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let generate = meta.get("generateName").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        if generate.is_empty() {
            causes.push(Cause::required_because("metadata.name", "name or generateName is required"));
        }
    } else {
        for problem in name_problems(name, rule) {
            causes.push(Cause::invalid("metadata.name", &Value::String(name.into()), problem));
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for problem in qualified_name_problems(k) {
                causes.push(Cause::invalid("metadata.labels", &Value::String(k.clone()), problem));
            }
            if let Some(v) = v.as_str() {
                for problem in label_value_problems(v) {
                    causes.push(Cause::invalid(format!("metadata.labels.{k}"), &Value::String(v.into()), problem));
                }
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            for problem in qualified_name_problems(&k.to_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", &Value::String(k.clone()), problem));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than {} bytes", 256 * 1024),
            });
        }
    }
}

/// `a.b.c.d/n` or `x::y/n`; true for IPv6.
fn parse_cidr(text: &str) -> Option<bool> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let v6 = ip.is_ipv6();
    (prefix <= if v6 { 128 } else { 32 }).then_some(v6)
}

/// The v1 API's two views of one list (the internal type has only `podCIDRs`): a `podCIDR` that
/// disagrees with `podCIDRs[0]` wins, for older clients; then `podCIDR` mirrors `podCIDRs[0]`.
pub fn default_node_pod_cidrs(spec: &mut serde_json::Map<String, Value>) {
    let single = spec.get("podCIDR").and_then(Value::as_str).unwrap_or("").to_string();
    let list: Vec<String> = spec.get("podCIDRs").and_then(Value::as_array).map(|l| l.iter().filter_map(|c| c.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let list = if !single.is_empty() && list.first() != Some(&single) { vec![single] } else { list };
    if let Some(first) = list.first() {
        spec.insert("podCIDR".into(), json!(first));
        spec.insert("podCIDRs".into(), json!(list));
    }
}

/// Upstream's ValidateNode and ValidateNodeUpdate for the spec fields only the node IPAM
/// controller or a cloud provider set, once: `podCIDRs` and `providerID`.
pub fn validate_node(node: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let cidrs = |n: &Value| -> Vec<Value> { n.pointer("/spec/podCIDRs").and_then(Value::as_array).cloned().unwrap_or_default() };
    let list = cidrs(node);
    let mut families = Vec::new();
    for (i, cidr) in list.iter().enumerate() {
        match cidr.as_str().and_then(parse_cidr) {
            Some(v6) => families.push(v6),
            None => causes.push(Cause::invalid(format!("spec.podCIDRs[{i}]"), cidr, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")),
        }
    }
    if list.len() > 2 || (list.len() == 2 && families.len() == 2 && families[0] == families[1]) {
        causes.push(Cause::invalid("spec.podCIDRs", &Value::Array(list.clone()), "may specify no more than one CIDR for each IP family"));
    }
    let Some(old) = old else { return };
    let old_list = cidrs(old);
    const PODCIDR_CHANGE: &str = "node updates may not change podCIDR except from \"\" to valid";
    if !old_list.is_empty() {
        if old_list.len() != list.len() {
            causes.push(Cause::forbidden("spec.podCIDRs", PODCIDR_CHANGE));
        } else {
            for (a, b) in old_list.iter().zip(&list) {
                if a != b {
                    causes.push(Cause::forbidden("spec.podCIDRs", PODCIDR_CHANGE));
                }
            }
        }
    }
    let provider = |n: &Value| n.pointer("/spec/providerID").and_then(Value::as_str).unwrap_or("").to_string();
    let old_provider = provider(old);
    if !old_provider.is_empty() && old_provider != provider(node) {
        causes.push(Cause::forbidden("spec.providerID", "node updates may not change providerID except from \"\" to valid"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(spec: Value) -> Value {
        let mut node = json!({"metadata": {"name": "n"}, "spec": spec});
        if let Some(spec) = node["spec"].as_object_mut() {
            default_node_pod_cidrs(spec);
        }
        node
    }

    fn messages(node: &Value, old: Option<&Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate_node(node, old, &mut causes);
        causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn node_pod_cidrs_are_set_once() {
        let single = node(json!({"podCIDR": "10.42.0.0/24"}));
        assert_eq!(single["spec"]["podCIDRs"], json!(["10.42.0.0/24"]));
        let dual = node(json!({"podCIDRs": ["10.42.0.0/24", "fd00::/64"]}));
        assert_eq!(dual["spec"]["podCIDR"], "10.42.0.0/24");
        assert_eq!(node(json!({"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.42.0.0/24"]}))["spec"]["podCIDRs"], json!(["10.1.0.0/24"]));
        assert!(messages(&dual, None).is_empty());
        assert!(messages(&single, Some(&node(json!({})))).is_empty(), "from none to one is allowed");
        assert_eq!(
            messages(&node(json!({"podCIDR": "10.42.9.0/24"})), Some(&single)),
            ["spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"]
        );
        assert_eq!(messages(&node(json!({})), Some(&single)).len(), 1, "nor may it be cleared");
        assert_eq!(
            messages(&node(json!({"podCIDRs": ["10.42.0.0/24", "10.43.0.0/24"]})), None),
            ["spec.podCIDRs: Invalid value: [\"10.42.0.0/24\",\"10.43.0.0/24\"]: may specify no more than one CIDR for each IP family"]
        );
        assert_eq!(
            messages(&node(json!({"podCIDR": "10.42.0.0"})), None),
            ["spec.podCIDRs[0]: Invalid value: \"10.42.0.0\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
        );
        let with_provider = node(json!({"providerID": "berth://a"}));
        assert_eq!(messages(&node(json!({"providerID": "berth://b"})), Some(&with_provider)).len(), 1);
    }

    #[test]
    fn names() {
        assert!(name_problems("web-1.example", NameRule::Subdomain).is_empty());
        assert!(!name_problems("Web", NameRule::Subdomain).is_empty());
        assert!(!name_problems("a.b", NameRule::Label).is_empty());
        assert!(!name_problems("1abc", NameRule::Dns1035).is_empty());
        assert!(name_problems("system:admin", NameRule::PathSegment).is_empty());
        assert!(!name_problems("a/b", NameRule::PathSegment).is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name_problems("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name_problems("-bad").is_empty());
        assert!(!qualified_name_problems("/x").is_empty());
        assert!(label_value_problems("").is_empty());
        assert!(!label_value_problems("bad value").is_empty());
    }
}
