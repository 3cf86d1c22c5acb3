"""Checks the built manifests beyond the schemas: the alerts the issue asks for exist, each links
a runbook file that exists and states the alert's `for:` duration, and every rdev-api metric an
alert uses is one the code exports. (The metrics, endpoints and variables the runbooks name are
checked against a running server by crates/app/tests/runbooks.rs.)"""
import pathlib
import re
import sys

import yaml

REQUIRED_ALERTS = {
    "RdevAPIHighCPU", "RdevAPIHighErrorRate", "RdevAPIQueueBacklog",
    "RdevAPICircuitBreakerOpen", "RdevAPIWebhookFailures", "RdevAPIDatabaseUnavailable",
}
# Series from cAdvisor and kube-state-metrics, not from rdev-api.
EXTERNAL = {"container_cpu_usage_seconds_total", "kube_pod_container_resource_limits"}
ROOT = pathlib.Path(__file__).resolve().parent.parent


def exported_metrics():
    names = set()
    for source in ROOT.glob("crates/*/src/**/*.rs"):
        names.update(re.findall(r'pub const [A-Z_]+: &str = "([a-z_]+)"', source.read_text()))
    return names


def stated_duration(duration):
    """`5m` -> `for 5 minutes`, `1h` -> `for 1 hour`: how runbooks state an alert's `for:`."""
    number, unit = int(duration[:-1]), {"s": "second", "m": "minute", "h": "hour"}[duration[-1]]
    return f"for {number} {unit}{'' if number == 1 else 's'}"


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, "one PrometheusRule"
    exported = exported_metrics()
    seen = set()
    problems = []
    for group in rules[0]["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            seen.add(name)
            url = rule["annotations"].get("runbook_url", "")
            runbook = url.split("/blob/main/", 1)[-1]
            if not runbook.startswith("docs/operations/") or not (ROOT / runbook).is_file():
                problems.append(f"{name}: runbook {url!r} is not a file under docs/operations/")
            elif "for" in rule:
                text = " ".join((ROOT / runbook).read_text().split())
                if stated_duration(rule["for"]) not in text:
                    problems.append(f"{name}: {runbook} does not say '{stated_duration(rule['for'])}' (for: {rule['for']})")
            for metric in set(re.findall(r"\b([a-z_]+)(?:\{|\[)", rule["expr"])):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if metric not in EXTERNAL and base not in exported and metric not in exported:
                    if metric not in {"rate", "sum", "max", "min", "increase", "histogram_quantile", "by", "on"}:
                        problems.append(f"{name}: metric {metric} is not exported by rdev-api")
    missing = REQUIRED_ALERTS - seen
    if missing:
        problems.append(f"missing alerts: {sorted(missing)}")
    for kind in ["Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                 "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Namespace"]:
        if not any(d["kind"] == kind for d in docs):
            problems.append(f"no {kind}")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])
    if any("value" in e and e["name"] == "DATABASE_URL" for e in env):
        problems.append("DATABASE_URL must come from a Secret, not a literal")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"alerts: {len(seen)} rules, runbooks and metrics check out")


if __name__ == "__main__":
    main(sys.argv[1])
