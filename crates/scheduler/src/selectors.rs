//! Label selectors, node selector terms and taint tolerations, parsed once per pod so that
//! matching thousands of nodes allocates nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::Gt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Op::Lt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        }
    }
}

/// A metav1 label selector. A missing selector matches nothing and an empty one everything, as
/// upstream's `LabelSelectorAsSelector` has it; an invalid one matches nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    pub fn nothing() -> Self {
        LabelSelector { requirements: Vec::new(), nothing: true }
    }

    #[cfg(test)]
    pub fn everything() -> Self {
        LabelSelector { requirements: Vec::new(), nothing: false }
    }

    pub fn parse(selector: Option<&KubeLabelSelector>) -> Self {
        let Some(selector) = selector else { return Self::nothing() };
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement { key: k.clone(), op: Op::In(vec![v.clone()]) });
        }
        for e in selector.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" if !values.is_empty() => Op::In(values),
                "NotIn" if !values.is_empty() => Op::NotIn(values),
                "Exists" if values.is_empty() => Op::Exists,
                "DoesNotExist" if values.is_empty() => Op::DoesNotExist,
                _ => return Self::nothing(),
            };
            requirements.push(Requirement { key: e.key.clone(), op });
        }
        LabelSelector { requirements, nothing: false }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Each `In` requirement as (key, values): whatever matches has one of those labels, which
    /// lets a label index narrow the search.
    pub fn in_requirements(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.requirements.iter().filter_map(|r| match &r.op {
            Op::In(values) => Some((r.key.as_str(), values.as_slice())),
            _ => None,
        })
    }

    /// Keys an `Exists` requirement needs.
    pub fn required_keys(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().filter(|r| r.op == Op::Exists).map(|r| r.key.as_str())
    }

    /// `matchLabelKeys`: the selector also requires the pod's own value of `key`.
    pub fn require_equal(&mut self, key: &str, value: &str) {
        self.requirements.push(Requirement { key: key.to_string(), op: Op::In(vec![value.to_string()]) });
    }

    /// `mismatchLabelKeys`: the selector also requires a value other than the pod's own.
    pub fn require_not_equal(&mut self, key: &str, value: &str) {
        self.requirements.push(Requirement { key: key.to_string(), op: Op::NotIn(vec![value.to_string()]) });
    }
}

/// One node selector term: every label expression and every field expression must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTerm {
    labels: Vec<Requirement>,
    /// `metadata.name` is the only selectable node field.
    names: Vec<Requirement>,
    /// A term that cannot be parsed, or has no requirement at all, selects no node.
    nothing: bool,
}

fn node_requirement(r: &NodeSelectorRequirement) -> Option<Requirement> {
    let values = r.values.clone().unwrap_or_default();
    let single_int = || if values.len() == 1 { values[0].parse::<i64>().ok() } else { None };
    let op = match r.operator.as_str() {
        "In" => Op::In(values),
        "NotIn" => Op::NotIn(values),
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => Op::Gt(single_int()?),
        "Lt" => Op::Lt(single_int()?),
        _ => return None,
    };
    Some(Requirement { key: r.key.clone(), op })
}

impl NodeTerm {
    pub fn parse(term: &NodeSelectorTerm) -> Self {
        let mut labels = Vec::new();
        let mut names = Vec::new();
        let mut nothing = false;
        for r in term.match_expressions.iter().flatten() {
            match node_requirement(r) {
                Some(req) => labels.push(req),
                None => nothing = true,
            }
        }
        for r in term.match_fields.iter().flatten() {
            match (r.key.as_str(), node_requirement(r)) {
                ("metadata.name", Some(req @ Requirement { op: Op::In(_) | Op::NotIn(_), .. })) => names.push(req),
                _ => nothing = true,
            }
        }
        if labels.is_empty() && names.is_empty() {
            nothing = true;
        }
        NodeTerm { labels, names, nothing }
    }

    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        if self.nothing || !self.labels.iter().all(|r| r.matches(labels)) {
            return false;
        }
        self.names.iter().all(|r| match &r.op {
            Op::In(values) => values.iter().any(|v| v == node_name),
            Op::NotIn(values) => !values.iter().any(|v| v == node_name),
            _ => false,
        })
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution`: any term may match.
pub fn parse_node_selector(selector: &NodeSelector) -> Vec<NodeTerm> {
    selector.node_selector_terms.iter().map(NodeTerm::parse).collect()
}

pub fn any_term_matches(terms: &[NodeTerm], node_name: &str, labels: &Labels) -> bool {
    terms.iter().any(|t| t.matches(node_name, labels))
}

/// Whether `toleration` tolerates `taint` (upstream's `Toleration.ToleratesTaint`): an empty
/// effect means every effect, an empty key with `Exists` every taint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first taint selected by `relevant` that no toleration tolerates.
pub fn first_untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration], relevant: impl Fn(&Taint) -> bool) -> Option<&'a Taint> {
    taints.iter().find(|t| relevant(t) && !tolerated(tolerations, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn term(value: serde_json::Value) -> NodeTerm {
        NodeTerm::parse(&serde_json::from_value(value).expect("term"))
    }

    #[test]
    fn label_selector_semantics() {
        let node = labels(&[("app", "web"), ("tier", "front")]);
        assert!(!LabelSelector::parse(None).matches(&node));
        assert!(LabelSelector::parse(Some(&KubeLabelSelector::default())).matches(&node));
        let sel: KubeLabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}, {"key": "gone", "operator": "DoesNotExist"}]
        }))
        .expect("selector");
        assert!(LabelSelector::parse(Some(&sel)).matches(&node));
        let bad: KubeLabelSelector = serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})).expect("selector");
        assert!(!LabelSelector::parse(Some(&bad)).matches(&node), "Gt is not a label selector operator");
        let mut s = LabelSelector::everything();
        s.require_not_equal("app", "web");
        assert!(!s.matches(&node));
    }

    #[test]
    fn node_selector_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8"), ("gpu", "")]);
        assert!(term(json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]})).matches("n", &l));
        assert!(!term(json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]})).matches("n", &l));
        assert!(term(json!({"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["a"]}]})).matches("n", &l), "NotIn holds for a missing label");
        assert!(term(json!({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]})).matches("n", &l));
        assert!(term(json!({"matchExpressions": [{"key": "rack", "operator": "DoesNotExist"}]})).matches("n", &l));
        assert!(term(json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]})).matches("n", &l));
        assert!(!term(json!({"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["8"]}]})).matches("n", &l));
        assert!(!term(json!({"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["1"]}]})).matches("n", &l), "a non-integer label never compares");
        assert!(!term(json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["1", "2"]}]})).matches("n", &l), "Gt needs one value");
        assert!(term(json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]})).matches("n", &l));
        assert!(!term(json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["m"]}]})).matches("n", &l));
        assert!(!term(json!({})).matches("n", &l), "an empty term selects nothing");
        let terms = parse_node_selector(
            &serde_json::from_value(json!({"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            ]}))
            .expect("selector"),
        );
        assert!(any_term_matches(&terms, "n", &l), "terms are ORed");
    }

    #[test]
    fn tolerations() {
        let taint: Taint = serde_json::from_value(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})).expect("taint");
        let t = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("toleration") };
        assert!(tolerates(&t(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})), &taint));
        assert!(tolerates(&t(json!({"key": "dedicated", "operator": "Equal", "value": "gpu"})), &taint), "empty effect tolerates every effect");
        assert!(!tolerates(&t(json!({"key": "dedicated", "value": "cpu"})), &taint));
        assert!(tolerates(&t(json!({"key": "dedicated", "operator": "Exists"})), &taint));
        assert!(tolerates(&t(json!({"operator": "Exists"})), &taint), "empty key with Exists tolerates everything");
        assert!(!tolerates(&t(json!({"operator": "Exists", "effect": "NoExecute"})), &taint));
        assert!(!tolerates(&t(json!({"key": "other", "operator": "Exists"})), &taint));
    }
}
