//! Label and field selectors as `?labelSelector=` and `?fieldSelector=` carry them, parsed and
//! matched with upstream's rules, and the fields each kind can be selected by.

use serde_json::{Map, Value};

use crate::validation::{label_value_problems, qualified_name_problems};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector(Vec<Requirement>);

fn check_key(key: &str) -> Result<(), SelectorError> {
    match qualified_name_problems(key).first() {
        Some(problem) => Err(SelectorError(format!("key: Invalid value: \"{key}\": {problem}"))),
        None => Ok(()),
    }
}

fn check_value(key: &str, value: &str) -> Result<(), SelectorError> {
    match label_value_problems(value).first() {
        Some(problem) => Err(SelectorError(format!("values[0][{key}]: Invalid value: \"{value}\": {problem}"))),
        None => Ok(()),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unable to parse requirement: unexpected ')' in {s:?}")));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unable to parse requirement: found '(', expected: ')' in {s:?}")));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(key: &str, rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("unable to parse requirement: found '{}', expected: '('", rest.trim())))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().all(String::is_empty) && values.len() == 1 {
        return Err(SelectorError(format!("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty in {whole:?}")));
    }
    for v in &values {
        check_value(key, v)?;
    }
    Ok(values)
}

impl LabelSelector {
    /// A metav1.LabelSelector object (`matchLabels`, `matchExpressions`); `None` if malformed.
    pub fn from_value(selector: &Value) -> Option<Self> {
        let mut parts: Vec<String> = Vec::new();
        for (k, v) in selector.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
            parts.push(format!("{k}={}", v.as_str()?));
        }
        for expr in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = expr.get("key")?.as_str()?;
            let values: Vec<&str> = expr.get("values").and_then(Value::as_array).map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            parts.push(match expr.get("operator")?.as_str()? {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                _ => return None,
            });
        }
        Self::parse(&parts.join(",")).ok()
    }

    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_requirements(s)? {
            let p = part.trim();
            if p.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError(format!("unable to parse requirement: found '', expected: identifier in {s:?}")));
            }
            let requirement = if let Some(key) = p.strip_prefix('!') {
                let key = key.trim();
                check_key(key)?;
                Requirement { key: key.to_string(), op: Op::DoesNotExist }
            } else if let Some(idx) = p.find("!=") {
                let (key, value) = (p[..idx].trim(), p[idx + 2..].trim());
                check_key(key)?;
                check_value(key, value)?;
                Requirement { key: key.to_string(), op: Op::NotEquals(value.to_string()) }
            } else if let Some(idx) = p.find("==") {
                let (key, value) = (p[..idx].trim(), p[idx + 2..].trim());
                check_key(key)?;
                check_value(key, value)?;
                Requirement { key: key.to_string(), op: Op::Equals(value.to_string()) }
            } else if let Some(idx) = p.find('=') {
                let (key, value) = (p[..idx].trim(), p[idx + 1..].trim());
                check_key(key)?;
                check_value(key, value)?;
                Requirement { key: key.to_string(), op: Op::Equals(value.to_string()) }
            } else if let Some(idx) = p.find(['>', '<']) {
                let (key, value) = (p[..idx].trim(), p[idx + 1..].trim());
                check_key(key)?;
                let number: i64 = value.parse().map_err(|_| SelectorError(format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer in {p:?}")))?;
                let op = if &p[idx..idx + 1] == ">" { Op::GreaterThan(number) } else { Op::LessThan(number) };
                Requirement { key: key.to_string(), op }
            } else {
                let mut words = p.splitn(2, char::is_whitespace);
                let key = words.next().unwrap_or("").trim();
                let rest = words.next().unwrap_or("").trim();
                check_key(key)?;
                if rest.is_empty() {
                    Requirement { key: key.to_string(), op: Op::Exists }
                } else if let Some(set) = rest.strip_prefix("notin") {
                    Requirement { key: key.to_string(), op: Op::NotIn(parse_set(key, set, p)?) }
                } else if let Some(set) = rest.strip_prefix("in") {
                    Requirement { key: key.to_string(), op: Op::In(parse_set(key, set, p)?) }
                } else {
                    return Err(SelectorError(format!("unable to parse requirement: found '{rest}', expected: in, notin, =, ==, !=, gt, lt")));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match &r.op {
            Op::Equals(v) => get(&r.key) == Some(v.as_str()),
            Op::NotEquals(v) => get(&r.key) != Some(v.as_str()),
            Op::In(vs) => get(&r.key).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => get(&r.key).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Op::Exists => get(&r.key).is_some(),
            Op::DoesNotExist => get(&r.key).is_none(),
            Op::GreaterThan(n) => get(&r.key).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            Op::LessThan(n) => get(&r.key).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-joined, with
/// `\,` `\=` `\!` `\\` escapes in values.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

fn split_unescaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            parts.last_mut().expect("non-empty").push('\\');
            parts.last_mut().expect("non-empty").push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn unescape(value: &str) -> Result<String, SelectorError> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
                Some(other) => return Err(SelectorError(format!("invalid field selector: invalid escape sequence: \\{other}"))),
                None => return Err(SelectorError("invalid field selector: unterminated escape sequence".into())),
            }
        } else if matches!(c, ',' | '=') {
            return Err(SelectorError(format!("invalid field selector: unescaped {c} in value {value:?}")));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut out = Vec::new();
        for part in split_unescaped(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some(i) = p.find("!=") {
                (&p[..i], false, &p[i + 2..])
            } else if let Some(i) = p.find("==") {
                (&p[..i], true, &p[i + 2..])
            } else if let Some(i) = p.find('=') {
                (&p[..i], true, &p[i + 1..])
            } else {
                return Err(SelectorError(format!("invalid selector: '{s}'; can't understand '{p}'")));
            };
            out.push((field.trim().to_string(), equal, unescape(value.trim())?));
        }
        Ok(Self(out))
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _, _)| f.as_str())
    }

    pub fn and(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }

    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(f, eq, v)| (get(f).unwrap_or_default() == *v) == *eq)
    }
}

/// The fields a kind can be selected by, beyond metadata.name and metadata.namespace.
pub(crate) fn kind_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "Event") => &["regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "regarding.apiVersion", "reason", "reportingController", "type"],
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

pub fn validate_field(group: &str, kind: &str, field: &str) -> Result<(), SelectorError> {
    if matches!(field, "metadata.name" | "metadata.namespace") || kind_fields(group, kind).contains(&field) {
        Ok(())
    } else {
        Err(SelectorError(format!("field label not supported: {field}")))
    }
}

/// The value at a dotted path (`spec.color`), rendered for matching: strings as they are, other
/// scalars in their JSON form.
pub fn path_value(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/{}", field.replace('.', "/"))).map(|v| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// The value of a selectable field of `obj`, as upstream renders it for matching.
pub fn field_value(group: &str, kind: &str, obj: &Value, field: &str) -> Result<Option<String>, SelectorError> {
    validate_field(group, kind, field)?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let value = match (kind, field) {
        ("Pod", "status.podIPs") => obj
            .pointer("/status/podIPs")
            .and_then(Value::as_array)
            .map(|ips| ips.iter().filter_map(|ip| ip.get("ip").and_then(Value::as_str)).collect::<Vec<_>>().join(",")),
        ("Pod", "spec.hostNetwork") => Some(obj.pointer("/spec/hostNetwork").and_then(Value::as_bool).unwrap_or(false).to_string()),
        ("Node", "spec.unschedulable") => Some(obj.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false).to_string()),
        ("Event", "source") => obj.pointer("/source/component").map(text),
        ("ReplicaSet" | "ReplicationController", "status.replicas") | ("Job", "status.successful") => {
            Some(obj.pointer(&format!("/{}", field.replace('.', "/"))).and_then(Value::as_i64).unwrap_or(0).to_string())
        }
        _ => path_value(obj, field),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let l = labels(json!({"app": "web", "tier": "front", "rank": "5"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing notin (x)", true),
            ("rank>3", true),
            ("rank<3", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
        for bad in ["app in (web", "app=bad value", "-bad=x", "app in ()", "app foo bar", "a=b,"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors_escape_and_check_fields() {
        let sel = FieldSelector::parse(r"metadata.name=a\,b,status.phase!=Failed").unwrap();
        let pod = json!({"metadata": {"name": "a,b"}, "status": {"phase": "Running"}, "spec": {"nodeName": "n1"}});
        assert!(sel.matches(|f| field_value("", "Pod", &pod, f).ok().flatten()));
        assert!(validate_field("", "Pod", "spec.nodeName").is_ok());
        assert_eq!(validate_field("", "ConfigMap", "data.x").unwrap_err().0, "field label not supported: data.x");
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(field_value("", "Pod", &pod, "spec.hostNetwork").unwrap().as_deref(), Some("false"));
        let node = json!({"spec": {}});
        assert_eq!(field_value("", "Node", &node, "spec.unschedulable").unwrap().as_deref(), Some("false"));
    }
}
