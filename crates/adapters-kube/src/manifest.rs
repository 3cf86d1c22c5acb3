//! The pod a project gets: its name, its labels and its spec.

use std::collections::BTreeMap;

use domain::pod::PodSpec;
use domain::project::ProjectName;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSecurityContext, PodSpec as K8sPodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use crate::config::KubeConfig;

/// Label every pod rdev-api creates carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "rdev-api";
/// Label naming the project a pod belongs to.
pub const PROJECT_LABEL: &str = "rdev.dev/project";

/// The container's main process: it only keeps the container alive, and exits at once on SIGTERM
/// so a stopped pod goes away without waiting out its grace period.
pub const KEEPALIVE_COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"];

/// The pod name of `project` (a project name is a DNS label, so the result is a valid name).
pub fn pod_name(project: &ProjectName) -> String {
    format!("rdev-{}", project.as_str())
}

/// The label selector that finds every pod rdev-api manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The pod object `start` creates for `spec`.
pub fn pod_manifest(spec: &PodSpec, config: &KubeConfig) -> Pod {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (PROJECT_LABEL.to_owned(), spec.project.as_str().to_owned()),
    ]);
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(name, value)| EnvVar { name: name.clone(), value: Some(value.clone()), ..EnvVar::default() })
        .collect();
    let container = Container {
        name: config.container_name.clone(),
        image: Some(spec.image.clone()),
        command: Some(KEEPALIVE_COMMAND.iter().map(|s| (*s).to_owned()).collect()),
        working_dir: Some(spec.workdir.clone()),
        env: (!env.is_empty()).then_some(env),
        resources: resources(spec),
        // Commands are other people's code: no way to regain privileges, no capabilities.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.project)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(K8sPodSpec {
            containers: vec![container],
            restart_policy: Some("Always".to_owned()),
            // Commands are arbitrary code: they get no credentials for the cluster itself.
            automount_service_account_token: Some(false),
            security_context: Some(pod_security(config)),
            ..K8sPodSpec::default()
        }),
        status: None,
    }
}

/// Never root, whatever the image says: an explicit uid and gid (runAsNonRoot alone would make
/// the kubelet refuse the many images that default to root), and the runtime's default seccomp
/// profile. This meets the `restricted` Pod Security Standard.
fn pod_security(config: &KubeConfig) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(config.command_uid),
        run_as_group: Some(config.command_gid),
        fs_group: Some(config.command_gid),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

/// Requests equal to limits (the Guaranteed QoS class when both are set), so a project gets what
/// it asked for and never more.
fn resources(spec: &PodSpec) -> Option<ResourceRequirements> {
    let quantities: BTreeMap<String, Quantity> = [("cpu", &spec.resources.cpu), ("memory", &spec.resources.memory)]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name.to_owned(), Quantity(v.clone()))))
        .collect();
    (!quantities.is_empty()).then(|| ResourceRequirements {
        limits: Some(quantities.clone()),
        requests: Some(quantities),
        ..ResourceRequirements::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap as Map;

    use domain::command::EnvMap;
    use domain::project::Resources;
    use domain::testing::project_name;

    use super::*;

    #[test]
    fn the_pod_carries_the_project_settings() {
        let spec = PodSpec {
            project: project_name("web-app"),
            image: "alpine:3.20".into(),
            workdir: "/src".into(),
            env: EnvMap::parse(Map::from([("A".to_owned(), "1".to_owned())])).unwrap(),
            resources: Resources { cpu: Some("500m".into()), memory: Some("256Mi".into()) },
        };
        let pod = pod_manifest(&spec, &KubeConfig::new("dev"));
        let json = serde_json::to_value(&pod).unwrap();
        assert_eq!(json["metadata"]["name"], "rdev-web-app");
        assert_eq!(json["metadata"]["namespace"], "dev");
        assert_eq!(json["metadata"]["labels"][MANAGED_BY_LABEL], "rdev-api");
        assert_eq!(json["metadata"]["labels"][PROJECT_LABEL], "web-app");
        let c = &json["spec"]["containers"][0];
        assert_eq!(c["name"], "main");
        assert_eq!(c["image"], "alpine:3.20");
        assert_eq!(c["workingDir"], "/src");
        assert_eq!(c["env"], serde_json::json!([{"name": "A", "value": "1"}]));
        assert_eq!(c["resources"]["requests"], serde_json::json!({"cpu": "500m", "memory": "256Mi"}));
        assert_eq!(c["resources"]["limits"], c["resources"]["requests"]);
        assert_eq!(c["command"][0], "sh");
        assert_eq!(json["spec"]["restartPolicy"], "Always");
        assert_eq!(json["spec"]["automountServiceAccountToken"], false);
    }

    #[test]
    fn pods_run_unprivileged_as_the_configured_ids() {
        let spec = PodSpec {
            project: project_name("locked"),
            image: "debian:12".into(),
            workdir: "/workspace".into(),
            env: EnvMap::default(),
            resources: Resources::default(),
        };
        let json = serde_json::to_value(pod_manifest(&spec, &KubeConfig::new("dev"))).unwrap();
        assert_eq!(
            json["spec"]["securityContext"],
            serde_json::json!({
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            })
        );
        assert_eq!(
            json["spec"]["containers"][0]["securityContext"],
            serde_json::json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
        );
        assert_eq!(json["spec"]["automountServiceAccountToken"], false);

        let config = KubeConfig { command_uid: 1001, command_gid: 2002, ..KubeConfig::new("dev") };
        let json = serde_json::to_value(pod_manifest(&spec, &config)).unwrap();
        let context = &json["spec"]["securityContext"];
        assert_eq!(
            (&context["runAsUser"], &context["runAsGroup"], &context["fsGroup"]),
            (&1001.into(), &2002.into(), &2002.into())
        );
    }

    #[test]
    fn no_resources_means_no_requirements() {
        let spec = PodSpec {
            project: project_name("bare"),
            image: "busybox".into(),
            workdir: "/".into(),
            env: EnvMap::default(),
            resources: Resources::default(),
        };
        let json = serde_json::to_value(pod_manifest(&spec, &KubeConfig::new("dev"))).unwrap();
        assert!(json["spec"]["containers"][0].get("resources").is_none());
        assert!(json["spec"]["containers"][0].get("env").is_none());
    }
}
