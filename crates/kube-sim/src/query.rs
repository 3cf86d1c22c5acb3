//! Query strings as the apiserver reads them: repeated keys, `?&` empty pairs, Go booleans.

/// The decoded pairs of a query string, in order (repeated keys kept).
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query (without `?`); empty pairs such as kube-rs's leading `&` are skipped.
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default();
        Self { pairs }
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// Whether `key` is present at all.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// A boolean as apimachinery converts it: absent, `false` (any case) or `0` are false;
    /// any other value, even empty, is true.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| !(v.eq_ignore_ascii_case("false") || v == "0"))
    }

    /// A non-negative integer parameter; `Err` carries the offending text.
    pub(crate) fn number(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| v.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_exec_query_is_read() {
        let q = Query::parse(Some("&stdout=true&stderr=true&container=c&command=echo&command=hi+there"));
        assert!(q.flag("stdout") && q.flag("stderr") && !q.flag("stdin"));
        assert_eq!(q.get("container"), Some("c"));
        assert_eq!(q.all("command"), vec!["echo".to_owned(), "hi there".to_owned()]);
    }

    #[test]
    fn go_boolean_rules() {
        let q = Query::parse(Some("a=FALSE&b=0&c=&d=yes&e=1"));
        assert!(!q.flag("a") && !q.flag("b") && !q.flag("missing"));
        assert!(q.flag("c") && q.flag("d") && q.flag("e"));
    }

    #[test]
    fn numbers() {
        let q = Query::parse(Some("tailLines=5&bad=x"));
        assert_eq!(q.number("tailLines"), Ok(Some(5)));
        assert_eq!(q.number("none"), Ok(None));
        assert_eq!(q.number("bad"), Err("x".to_owned()));
    }
}
