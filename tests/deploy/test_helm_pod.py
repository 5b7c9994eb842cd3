"""The rendered pod run as a real `openfusion serve` process: probes answer, keys work, SIGTERM ends it.

No cluster here, so the pod is played by a process: the container's environment as rendered, each
secretKeyRef resolved from the Secrets a test cluster would hold (PostgreSQL and Redis are the real
local ones), each volume a directory (ConfigMap items written into it), every other absolute path
moved under a "root filesystem" directory holding the directories the image makes, which must stay
as it was (the pod's root filesystem is read-only).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from deploy.chart import REPO, SERVICE_MONITOR_API, Helm, Manifests
from openfusion.access.config import AccessConfig, fingerprint_key
from openfusion.access.refusals import RefusalLog

pytestmark = pytest.mark.helm

REDIS_URL = "redis://127.0.0.1:6379/0"
CLIENT_KEY = "sk-client-" + secrets.token_hex(8)
SCRAPE_KEY = "sk-scrape-" + secrets.token_hex(8)


@dataclass
class Pod:
    """A process standing in for the pod."""

    url: str
    process: subprocess.Popen[bytes]
    manifests: Manifests
    root: Path  # where absolute paths outside the pod's volumes went

    def probe(self, name: str) -> httpx.Response:
        http_get = self.manifests.container()[name]["httpGet"]
        assert http_get["port"] == "http"
        return httpx.get(self.url + http_get["path"], timeout=10)


def _image_directories() -> list[str]:
    """The directories docker/Dockerfile makes in the runtime image (`mkdir -p ...`)."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    directories = [path for match in re.findall(r"mkdir -p ((?:/\S+ ?)+)", text) for path in match.split()]
    assert "/etc/openfusion/presets" in directories, directories
    return directories


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _volumes(manifests: Manifests, base: Path) -> dict[str, Path]:
    """mountPath -> a directory holding what the volume holds."""
    volumes = {volume["name"]: volume for volume in manifests.pod()["spec"]["volumes"]}
    config_maps = {doc["metadata"]["name"]: doc["data"] for doc in manifests.all("ConfigMap")}
    mounts = {}
    for mount in manifests.container()["volumeMounts"]:
        directory = base / mount["name"]
        directory.mkdir()
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]
            for item in volume["configMap"]["items"]:
                (directory / item["path"]).write_text(data[item["key"]])
        else:
            assert "emptyDir" in volume, volume
        mounts[mount["mountPath"]] = directory
    return mounts


def _environment(
    manifests: Manifests, cluster_secrets: dict[str, dict[str, str]], *, mounts: dict[str, Path], root: Path
) -> dict[str, str]:
    """The container's environment, secret references resolved and paths moved onto this machine."""

    def local(value: str) -> str:
        if not value.startswith("/"):
            return value
        for mount_path, directory in mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(directory) + value.removeprefix(mount_path)
        return str(root) + value

    # envFrom first: an explicit env entry wins over it, as in Kubernetes.
    chart_secrets = {doc["metadata"]["name"]: doc.get("stringData", {}) for doc in manifests.all("Secret")}
    env = {}
    for source in manifests.container().get("envFrom", []):
        name = source["secretRef"]["name"]
        env |= chart_secrets.get(name) or cluster_secrets[name]
    for name, entry in manifests.env().items():
        if "value" in entry:
            env[name] = local(entry["value"])
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        value = cluster_secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"the pod would not start: {ref} is missing and required"
            continue
        env[name] = value
    return env


@contextmanager
def running(manifests: Manifests, cluster_secrets: dict[str, dict[str, str]], tmp_path: Path) -> Iterator[Pod]:
    """Start the pod's process; yields once its startup probe has passed."""
    root = tmp_path / "rootfs"
    for directory in _image_directories():
        (root / directory.lstrip("/")).mkdir(parents=True)
    mounts = _volumes(manifests, tmp_path)
    env = _environment(manifests, cluster_secrets, mounts=mounts, root=root)
    prefix = f"openfusion-helm-test-{secrets.token_hex(4)}"
    # Kept apart from other runs in the shared Redis; HOME like the image's user: nowhere.
    env |= {"PATH": os.environ["PATH"], "HOME": str(root / "nonexistent"), "TMPDIR": str(mounts["/tmp"])}
    env["OPENFUSION_LIMITS__REDIS_PREFIX"] = prefix
    port = _free_port()
    # The image's entrypoint: `openfusion serve --host $OPENFUSION_HOST --port $OPENFUSION_PORT ARGS`, on the
    # rendered host (beyond loopback: it refuses to start without client keys unless allowed) and a free port.
    host = env["OPENFUSION_HOST"]
    assert host == "0.0.0.0"
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--host", host, "--port", str(port)]
    command += manifests.container().get("args", [])
    log = (tmp_path / "pod.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=mounts["/tmp"], stdout=log, stderr=subprocess.STDOUT)
    pod = Pod(f"http://127.0.0.1:{port}", process, manifests, root)
    try:
        startup = manifests.container()["startupProbe"]
        deadline = time.monotonic() + startup["failureThreshold"] * startup["periodSeconds"]
        while True:
            try:
                if pod.probe("startupProbe").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"the pod's process exited:\n{(tmp_path / 'pod.log').read_text()}"
            assert time.monotonic() < deadline, "the startup probe never passed"
            time.sleep(0.1)
        yield pod
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()
        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"{prefix}*", f"{{{prefix}}}*"):  # the cache's keys, the limits' (a hash tag)
            for key in client.scan_iter(pattern):
                client.delete(key)
        client.close()


def _assert_ready_and_stops_in_time(pod: Pod) -> None:
    assert pod.probe("livenessProbe").status_code == 200
    ready = pod.probe("readinessProbe")
    assert ready.status_code == 200, ready.text
    checks = {"providers": "ok", "activity_store": "ok"}
    if "REDIS_URL" in pod.manifests.env():
        checks["limits_store"] = "ok"
    assert ready.json()["checks"] == checks
    spec = pod.manifests.pod()["spec"]
    sleep_s = int(pod.manifests.container()["lifecycle"]["preStop"]["exec"]["command"][1])
    # After the preStop sleep, SIGTERM: the process must be gone before Kubernetes' SIGKILL.
    pod.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    # uvicorn ends by re-raising the signal it caught: either status is a clean stop.
    assert pod.process.wait(timeout=spec["terminationGracePeriodSeconds"] - sleep_s) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < spec["terminationGracePeriodSeconds"] - sleep_s
    found = {"/" + str(path.relative_to(pod.root)) for path in pod.root.rglob("*")}
    image = {
        str(parent) for directory in _image_directories() for parent in [Path(directory), *Path(directory).parents]
    }
    written = sorted(found - image)
    assert written == [], f"the process wrote outside the pod's volumes (a read-only root there): {written}"


def test_the_gateway_pod_starts_passes_its_probes_and_stops_in_time(
    helm: Helm, postgres_url: str, tmp_path: Path
) -> None:
    manifests = helm.template("gateway")
    fingerprint_secret = secrets.token_hex(24)
    cluster_secrets = {
        "openfusion-providers": {"OPENROUTER_API_KEY": "sk-or-not-a-real-key"},
        "openfusion-clients": {"OPENFUSION_API_KEYS": CLIENT_KEY, "TEAM_A_KEY": "sk-team-a-" + secrets.token_hex(8)},
        "openfusion-fingerprint": {"OPENFUSION_FINGERPRINT_KEY": fingerprint_secret},
        "openfusion-db": {"DATABASE_URL": postgres_url},
        "openfusion-redis": {"REDIS_URL": REDIS_URL},
    }
    with running(manifests, cluster_secrets, tmp_path) as pod:
        # The gateway values make the careful preset the default, from the ConfigMap.
        models = httpx.get(pod.url + "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
        assert models.status_code == 200, models.text
        assert "fusion/careful" in {model["id"] for model in models.json()["data"]}
        assert httpx.get(pod.url + "/v1/models", timeout=10).status_code == 401
        stale = "sk-stale-" + secrets.token_hex(8)
        wrong = httpx.get(pod.url + "/v1/models", headers={"Authorization": f"Bearer {stale}"}, timeout=10)
        assert wrong.status_code == 401
        _assert_ready_and_stops_in_time(pod)
    # The wrong key is named under the Secret's fingerprint key, as every other replica names it; never shown.
    log = (tmp_path / "pod.log").read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [refused] = [record for record in records if record.get("reason") == "unknown"]
    shared = RefusalLog(key=fingerprint_key(AccessConfig(fingerprint_key=SecretStr(fingerprint_secret))))
    assert refused["key_fingerprint"] == shared.fingerprint(stale)
    assert fingerprint_secret not in log and stale not in log


def test_the_sidecar_pod_keeps_its_sqlite_store_on_its_volume(helm: Helm, tmp_path: Path) -> None:
    """Without DATABASE_URL the activity store is SQLite, on the state emptyDir and nowhere else."""
    manifests = helm.template("sidecar")
    with running(manifests, {}, tmp_path) as pod:
        answer = httpx.get(pod.url + "/v1/models", timeout=10)
        assert answer.status_code == 200, answer.text
        _assert_ready_and_stops_in_time(pod)
    databases = [path.name for path in (tmp_path / "state").rglob("*.sqlite3")]
    assert databases == ["activity.sqlite3"]


def test_the_autoscaled_pod_serves_its_metrics_to_the_scrape_key_only(
    helm: Helm, postgres_url: str, tmp_path: Path
) -> None:
    # The values file names a Redis in its cluster; here it is the local one.
    manifests = helm.template("autoscaled", settings={"redis.url": REDIS_URL}, api_versions=(SERVICE_MONITOR_API,))
    cluster_secrets = {
        "openfusion-providers": {"OPENAI_API_KEY": "sk-not-a-real-key"},
        "openfusion-clients": {"OPENFUSION_API_KEYS": CLIENT_KEY},
        "openfusion-db": {"url": postgres_url},
    }
    # The key Prometheus sends is the Secret entry the ServiceMonitor names.
    [endpoint] = manifests.one("ServiceMonitor")["spec"]["endpoints"]
    scrape_secret = endpoint["authorization"]["credentials"]
    cluster_secrets[scrape_secret["name"]][scrape_secret["key"]] = SCRAPE_KEY
    with running(manifests, cluster_secrets, tmp_path) as pod:
        metrics = httpx.get(pod.url + "/metrics", headers={"Authorization": f"Bearer {SCRAPE_KEY}"}, timeout=10)
        assert metrics.status_code == 200
        metric = manifests.one("HorizontalPodAutoscaler")["spec"]["metrics"][1]["pods"]["metric"]["name"]
        assert f"# TYPE {metric} gauge" in metrics.text
        assert httpx.get(pod.url + "/metrics", timeout=10).status_code == 401
        # A client's key does not read the whole server's traffic and spend.
        other = httpx.get(pod.url + "/metrics", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)
        assert other.status_code == 403 and other.json()["error"]["code"] == "metrics_not_allowed"
        # The scrape key cannot spend: no model is in its scope.
        body: dict[str, Any] = {"model": "openai/gpt-5", "messages": [{"role": "user", "content": "Hi"}]}
        refused = httpx.post(
            pod.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {SCRAPE_KEY}"}, timeout=10
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "model_not_allowed"
        _assert_ready_and_stops_in_time(pod)
