"""The documentation's Kubernetes (Helm) page: its `helm install` commands render, and say what they claim."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from deploy.chart import CHART, REPO, Helm, Manifests

pytestmark = pytest.mark.helm


def _section() -> str:
    """The page docs/deployment/kubernetes.md."""
    return (REPO / "docs" / "deployment" / "kubernetes.md").read_text()


def _install_commands() -> list[list[str]]:
    """Each `helm install` of the section's bash blocks, continuation lines joined, as arguments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", _section(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("helm install "):
                commands.append(shlex.split(line, comments=True))
    return commands


def _render(helm: Helm, command: list[str]) -> Manifests:
    release, chart, *options = command[2:]
    assert chart == "deploy/helm/openfusion"
    result = helm.run("template", release, str(CHART), "--kube-version", "1.31.0", *options)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr}"
    return Manifests(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def test_the_gateway_install_renders_a_keyed_three_replica_gateway(helm: Helm) -> None:
    gateway, _ = _install_commands()
    manifests = _render(helm, gateway)
    assert manifests.one("Deployment")["spec"]["replicas"] == 3
    env = manifests.env()
    for name, secret in [
        ("OPENFUSION_API_KEYS", "openfusion-clients"),
        ("DATABASE_URL", "openfusion-db"),
        ("REDIS_URL", "openfusion-redis"),
        ("OPENFUSION_FINGERPRINT_KEY", "openfusion-fingerprint"),
        ("OPENROUTER_API_KEY", "openfusion-providers"),
    ]:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
    [rule] = manifests.one("Ingress")["spec"]["rules"]
    assert rule["host"] == "fusion.example.com"
    assert manifests.container()["image"].startswith("registry.example.com/openfusion:")


def test_the_private_install_renders_one_pod_at_the_address_the_docs_give(helm: Helm) -> None:
    _, private = _install_commands()
    manifests = _render(helm, private)
    assert manifests.one("Deployment")["spec"]["replicas"] == 1
    assert "Ingress" not in manifests.kinds()
    assert manifests.one("Service")["spec"]["type"] == "ClusterIP"
    service = manifests.one("Service")
    address = f"http://{service['metadata']['name']}.ai.svc:{service['spec']['ports'][0]['port']}/v1"
    assert address in _section()
    assert "OPENFUSION_API_KEYS" not in manifests.env()


def test_the_prometheus_adapter_rule_names_the_metric_the_hpa_asks_for() -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", _section(), re.S)
    [rule] = yaml.safe_load(block)["rules"]["custom"]
    default = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["inFlight"]["metricName"]
    assert rule["name"]["as"] == default
    assert rule["seriesQuery"].startswith(default + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
