//! metav1.LabelSelector matching, as controllers select their pods.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. As upstream, a selector with no requirements matches
/// everything; controllers reject empty selectors at validation, not here.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(required) = &selector.match_labels
        && !required.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    for expr in selector.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The `matchLabels`-style map form (ReplicationController selectors).
pub fn matches_map(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `a=b,c=d` for `status.selector` of the scale subresource.
pub fn to_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into();
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["front".into(), "back".into()]) },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        assert!(matches(&sel, &labels));
        let mut other = labels.clone();
        other.insert("canary".into(), "yes".into());
        assert!(!matches(&sel, &other));
        assert_eq!(to_string(&sel), "app=web,tier in (front,back),!canary");
    }
}
