//! Stand-in for the `selectors` crate while it is written; same call shapes.

pub mod selectors {
    use serde_json::{Map, Value};

    #[derive(Debug)]
    pub struct SelectorError(pub String);
    impl std::fmt::Display for SelectorError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    enum Req {
        Eq(String, String),
        Ne(String, String),
        In(String, Vec<String>),
        NotIn(String, Vec<String>),
        Exists(String),
        NotExists(String),
    }

    pub struct LabelSelector(Vec<Req>);

    fn split_top(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        out.push(cur);
        out
    }

    impl LabelSelector {
        pub fn parse(s: &str) -> Result<Self, SelectorError> {
            let mut reqs = Vec::new();
            for part in split_top(s) {
                let p = part.trim();
                if p.is_empty() {
                    continue;
                }
                let set = |p: &str, op: &str| -> Option<(String, Vec<String>)> {
                    let idx = p.find(op)?;
                    let key = p[..idx].trim().to_string();
                    let rest = p[idx + op.len()..].trim();
                    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
                    Some((key, inner.split(',').map(|v| v.trim().to_string()).collect()))
                };
                if let Some((k, v)) = set(p, " notin ") {
                    reqs.push(Req::NotIn(k, v));
                } else if let Some((k, v)) = set(p, " in ") {
                    reqs.push(Req::In(k, v));
                } else if let Some((k, v)) = p.split_once("!=") {
                    reqs.push(Req::Ne(k.trim().into(), v.trim().into()));
                } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                    reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
                } else if let Some(k) = p.strip_prefix('!') {
                    reqs.push(Req::NotExists(k.trim().into()));
                } else if p.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                    reqs.push(Req::Exists(p.into()));
                } else {
                    return Err(SelectorError(format!("unable to parse requirement: {p:?}")));
                }
            }
            Ok(Self(reqs))
        }

        pub fn matches(&self, labels: &Map<String, Value>) -> bool {
            let get = |k: &str| labels.get(k).and_then(Value::as_str);
            self.0.iter().all(|r| match r {
                Req::Eq(k, v) => get(k) == Some(v.as_str()),
                Req::Ne(k, v) => get(k) != Some(v.as_str()),
                Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
                Req::Exists(k) => get(k).is_some(),
                Req::NotExists(k) => get(k).is_none(),
            })
        }
    }

    pub struct FieldSelector(Vec<(String, bool, String)>);

    impl FieldSelector {
        pub fn parse(s: &str) -> Result<Self, SelectorError> {
            let mut out = Vec::new();
            for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some((k, v)) = p.split_once("!=") {
                    out.push((k.trim().into(), false, v.trim().into()));
                } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                    out.push((k.trim().into(), true, v.trim().into()));
                } else {
                    return Err(SelectorError(format!("invalid selector: '{s}'; can't understand '{p}'")));
                }
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

    pub fn validate_field(_group: &str, _kind: &str, field: &str) -> Result<(), SelectorError> {
        match field {
            "metadata.name" | "metadata.namespace" | "spec.nodeName" | "status.phase" | "type" | "involvedObject.name" | "involvedObject.kind" | "involvedObject.namespace" | "involvedObject.uid" => Ok(()),
            other => Err(SelectorError(format!("field label not supported: {other}"))),
        }
    }

    pub fn field_value(_group: &str, _kind: &str, obj: &Value, field: &str) -> Result<Option<String>, SelectorError> {
        let pointer = format!("/{}", field.replace('.', "/"));
        Ok(obj.pointer(&pointer).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)))
    }
}

