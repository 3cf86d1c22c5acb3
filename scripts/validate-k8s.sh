#!/usr/bin/env bash
# Builds the kustomization and validates every object against the Kubernetes 1.31 schemas
# (kubernetes-validate from PyPI, strict: unknown fields fail), then checks the PrometheusRule
# (a CRD the schemas do not cover) against the metrics and runbooks that really exist.
#   scripts/validate-k8s.sh        (run by `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${K8S_VALIDATE_VENV:-target/venv-k8s}
command -v kubectl >/dev/null || { echo "kubectl not found: it builds the kustomization" >&2; exit 1; }
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'kubernetes-validate>=1.31' pyyaml
fi
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
kubectl kustomize k8s/ > "$OUT"
"$VENV/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "$OUT" 2>&1 | { grep -v "Couldn't find schema for kind PrometheusRule" || true; } | tee /tmp/k8s-validate.log
if grep -q "ERROR\|failed" /tmp/k8s-validate.log; then echo "manifests do not validate" >&2; exit 1; fi
"$VENV/bin/python" scripts/check_alerts.py "$OUT"
echo "k8s manifests: valid"
