//! The name and metadata rules every kind shares, worded as upstream words them so users see the
//! same messages they would from kube-apiserver.

use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;

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
