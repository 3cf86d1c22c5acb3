//! The kubeconfig that points kube-rs and kubectl at the simulator.

/// Renders a single-context kubeconfig; strings are JSON-quoted, which YAML reads verbatim.
pub(crate) fn render(server: &str, namespace: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(token) => format!("\n    token: {}", quote(token)),
        // client-go and kube-rs both accept an empty user for an unauthenticated cluster.
        None => " {}".to_owned(),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: kube-sim\n  cluster:\n    server: {server}\n\
         contexts:\n\
         - name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: {namespace}\n\
         current-context: kube-sim\n\
         users:\n\
         - name: kube-sim\n  user:{user}\n\
         preferences: {{}}\n",
        server = quote(server),
        namespace = quote(namespace),
    )
}

fn quote(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_config_has_an_empty_user() {
        let yaml = render("http://127.0.0.1:6443", "default", None);
        assert!(yaml.contains("server: \"http://127.0.0.1:6443\""));
        assert!(yaml.contains("namespace: \"default\""));
        assert!(yaml.contains("  user: {}\n"));
        assert!(yaml.contains("current-context: kube-sim\n"));
    }

    #[test]
    fn token_is_quoted() {
        let yaml = render("http://127.0.0.1:1", "ns", Some("a\"b"));
        assert!(yaml.contains("    token: \"a\\\"b\"\n"));
    }
}
