//! Label and field selectors, with the apiserver's grammar and matching rules.

use std::collections::BTreeSet;

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`: every requirement must hold (comma = AND).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

impl LabelSelector {
    /// Parses the selector text; `Err` is the message of the 400 the apiserver would send.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top_level(text)? {
            reqs.push(parse_requirement(part.trim()).map_err(|e| format!("unable to parse requirement: {e}"))?);
        }
        Ok(Self { reqs })
    }

    /// Whether an object with these labels (`metadata.labels`, possibly absent) is selected.
    pub(crate) fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.reqs.iter().all(|req| match req {
            LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, set) => label(k).is_some_and(|l| set.contains(l)),
            LabelReq::NotIn(k, set) => label(k).is_none_or(|l| !set.contains(l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::DoesNotExist(k) => label(k).is_none(),
            LabelReq::GreaterThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            LabelReq::LessThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        })
    }
}

/// Splits on commas that are not inside a `( … )` value set.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unable to parse requirement: unbalanced parentheses in {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unable to parse requirement: unbalanced parentheses in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn check_key(key: &str) -> Result<String, String> {
    if key.is_empty() || !key.chars().all(is_key_char) || key.starts_with(['-', '.', '_', '/']) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_owned())
}

fn check_value(value: &str) -> Result<String, String> {
    if value.len() > 63 || !value.chars().all(is_value_char) {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(value.to_owned())
}

fn parse_set(rest: &str) -> Result<BTreeSet<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found {rest:?}, expected: '('"))?;
    inner.split(',').map(|v| check_value(v.trim())).collect()
}

fn parse_requirement(part: &str) -> Result<LabelReq, String> {
    if part.is_empty() {
        return Err("found '', expected: !, identifier, or 'end of string'".to_owned());
    }
    if let Some(key) = part.strip_prefix('!') {
        return check_key(key.trim()).map(LabelReq::DoesNotExist);
    }
    let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = check_key(&part[..key_end])?;
    let rest = part[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(LabelReq::Exists(key));
    }
    let number = |v: &str| v.trim().parse::<i64>().map_err(|_| format!("invalid integer value {:?}", v.trim()));
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(LabelReq::NotEquals(key, check_value(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(LabelReq::Equals(key, check_value(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix('>') {
        return Ok(LabelReq::GreaterThan(key, number(v)?));
    }
    if let Some(v) = rest.strip_prefix('<') {
        return Ok(LabelReq::LessThan(key, number(v)?));
    }
    if let Some(v) = rest.strip_prefix("notin").filter(|v| v.trim_start().starts_with('(')) {
        return Ok(LabelReq::NotIn(key, parse_set(v)?));
    }
    if let Some(v) = rest.strip_prefix("in").filter(|v| v.trim_start().starts_with('(')) {
        return Ok(LabelReq::In(key, parse_set(v)?));
    }
    Err(format!("found {rest:?}, expected: in, notin, =, ==, !=, gt, lt"))
}

/// One field requirement: `field=value`, `field==value` or `field!=value`.
#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector` over a fixed set of supported fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    reqs: Vec<FieldReq>,
}

/// Fields a pod `fieldSelector` may name (the apiserver's `PodToSelectableFields`).
pub(crate) const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// Fields a namespace `fieldSelector` may name.
pub(crate) const NAMESPACE_FIELDS: &[&str] = &["metadata.name", "status.phase"];
/// Field selectors the apiserver accepts for leases (the generic object-meta ones).
pub(crate) const LEASE_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses the selector, refusing fields outside `supported` as the apiserver does.
    pub(crate) fn parse(text: &str, supported: &[&str]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!("invalid selector: '{text}'; can't understand '{part}'"));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push(FieldReq { field: field.to_owned(), value: v_unescape(value.trim()), equal });
        }
        Ok(Self { reqs })
    }

    /// Whether `object` is selected; a missing field reads as the empty string.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.reqs.iter().all(|req| {
            let actual = field_value(object, &req.field);
            (actual == req.value) == req.equal
        })
    }
}

fn v_unescape(value: &str) -> String {
    value.replace("\\,", ",").replace("\\=", "=").replace("\\\\", "\\")
}

fn field_value(object: &Value, path: &str) -> String {
    let value = path.split('.').try_fold(object, |v, segment| v.get(segment));
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if path == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(text: &str) -> LabelSelector {
        LabelSelector::parse(text).unwrap()
    }

    #[test]
    fn label_operators() {
        let labels = json!({"app": "rdev", "tier": "web", "n": "5"});
        let l = Some(&labels);
        assert!(sel("").matches(l));
        assert!(sel("app=rdev").matches(l) && sel("app==rdev").matches(l) && !sel("app=x").matches(l));
        assert!(sel("app!=x").matches(l) && !sel("app!=rdev").matches(l) && sel("missing!=x").matches(l));
        assert!(sel("tier in (web, db)").matches(l) && !sel("tier in (db)").matches(l));
        assert!(sel("tier notin (db)").matches(l) && sel("missing notin (db)").matches(l));
        assert!(!sel("tier notin (web,db)").matches(l));
        assert!(sel("app").matches(l) && !sel("missing").matches(l));
        assert!(sel("!missing").matches(l) && !sel("!app").matches(l));
        assert!(sel("n>4").matches(l) && !sel("n<5").matches(l));
        assert!(sel("app=rdev,tier in (web),!missing").matches(l));
        assert!(!sel("app=rdev,tier=db").matches(l));
        assert!(!sel("app").matches(None) && sel("!app").matches(None));
    }

    #[test]
    fn managed_by_key_with_prefix() {
        let labels = json!({"app.kubernetes.io/managed-by": "rdev-api"});
        assert!(sel("app.kubernetes.io/managed-by=rdev-api").matches(Some(&labels)));
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for bad in ["app=", "=x", "app in web", "app=(x", "a b", "app,,b"] {
            if bad == "app=" {
                // An empty value is legal.
                assert!(LabelSelector::parse(bad).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "w1", "namespace": "ns"}, "status": {"phase": "Running"}});
        let fs = |t: &str| FieldSelector::parse(t, POD_FIELDS).unwrap();
        assert!(fs("metadata.name=w1").matches(&pod));
        assert!(fs("metadata.name==w1,metadata.namespace=ns").matches(&pod));
        assert!(!fs("metadata.name!=w1").matches(&pod));
        assert!(fs("status.phase!=Pending").matches(&pod));
        assert!(fs("spec.nodeName=").matches(&pod));
        assert_eq!(FieldSelector::parse("foo=bar", POD_FIELDS), Err("field label not supported: foo".to_owned()));
        assert!(FieldSelector::parse("junk", POD_FIELDS).is_err());
    }
}
