#!/usr/bin/env bash
# Refresh the lock files and the image's base digest (for a person, or a scheduled job that opens a PR).
#
#   requirements.lock      what the image installs: openfusion's dependencies and the postgres and otel extras,
#                          every version pinned with the SHA-256 of each of its files (pip --require-hashes);
#                          docker/Dockerfile builds from it, docker/ci-build.sh fills its wheelhouse from it
#   requirements-dev.lock  what CI installs: the test, docs, postgres and otel extras too, versions pinned;
#                          .ci/run installs the README's '.[test]' with it as pip's constraints
#   docker/Dockerfile      ARG PYTHON_IMAGE: python:<tag>@sha256:<digest of the tag's image index today>,
#                          when Docker Hub's registry answers (without it the line is left as it is)
#
# pyproject.toml keeps its ranges (`pip install .` resolves freshly); these files pin one resolution of
# them for the image and CI. Both are universal (markers kept): one file serves every platform, and the
# image's Python 3.11.2 on Debian gets the async-timeout that redis needs there.
#
# Usage: scripts/refresh-lock.sh          (from anywhere; needs python3 and network access to PyPI)
#        scripts/refresh-lock.sh --upgrade    every package at its newest allowed version; without it the
#                                             pins already in the locks are kept where pyproject.toml allows
# Env:   UV_VERSION                       the uv release used to resolve (default below)
#        OPENFUSION_LOCK_INDEX            the index to resolve against (default https://pypi.org/simple)
set -euo pipefail
cd "$(dirname "$0")/.."

uv_version=${UV_VERSION:-0.13.9}
index=${OPENFUSION_LOCK_INDEX:-https://pypi.org/simple}
base_tag=python:3.11-slim-bookworm   # keep in step with docker/Dockerfile's ARG PYTHON_IMAGE

upgrade=()
[[ ${1:-} == --upgrade ]] && upgrade=(--upgrade)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/uv"
"$work/uv/bin/pip" install --quiet --disable-pip-version-check "uv==$uv_version"
compile() {  # compile LOCK ARGS...: the lock on stdout (the current one read for its pins), a summary on stderr
    local lock=$1
    shift
    grep -v '^#' "$lock" >"$work/current" || true
    "$work/uv/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --index-url "$index" \
        --no-header --output-file "$work/current" "${upgrade[@]}" "$@" >/dev/null
    sed "s|$work/||" "$work/current"
}
header() {
    printf '# %s\n# Regenerate with scripts/refresh-lock.sh (uv %s, --universal, Python 3.11); do not edit by hand.\n' "$1" \
        "$uv_version"
}

{ header "What CI installs (.ci/run): openfusion[test,docs,postgres,otel]'s dependencies, as pip constraints."
  compile requirements-dev.lock --extra test --extra docs --extra postgres --extra otel; } >"$work/requirements-dev.lock"
# Within CI's resolution, so that CI tests the very versions the image ships.
{ header "What the image installs (docker/Dockerfile): openfusion[postgres,otel]'s dependencies, hash-checked."
  compile requirements.lock --extra postgres --extra otel --generate-hashes --constraint "$work/requirements-dev.lock"
} >"$work/requirements.lock"
for lock in requirements.lock requirements-dev.lock; do
    if cmp -s "$work/$lock" "$lock"; then
        echo "$lock: unchanged"
    else
        mv "$work/$lock" "$lock"
        echo "$lock: refreshed ($(grep -c '==' "$lock") pins)"
    fi
done

# The image index digest of the base tag, from the registry's API (a HEAD of the manifest).
repo=library/${base_tag%%:*}
tag=${base_tag#*:}
digest=""
if token=$(curl -fsS --max-time 20 "https://auth.docker.io/token?service=registry.docker.io&scope=repository:$repo:pull" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' 2>/dev/null); then
    digest=$(curl -fsSI --max-time 20 -H "Authorization: Bearer $token" \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        "https://registry-1.docker.io/v2/$repo/manifests/$tag" \
        | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}') || digest=""
fi
if [[ $digest == sha256:* ]]; then
    sed -i -E "s|^ARG PYTHON_IMAGE=.*$|ARG PYTHON_IMAGE=$base_tag@$digest|" docker/Dockerfile
    echo "docker/Dockerfile: base image $base_tag@$digest"
else
    echo "docker/Dockerfile: the registry did not answer; base image left as $(grep -m1 '^ARG PYTHON_IMAGE=' docker/Dockerfile)" >&2
fi
