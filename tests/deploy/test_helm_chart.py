"""The Helm chart: lint, render each CI values file, validate against the Kubernetes schemas, check its promises."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.chart import CHART, NAMESPACE, SERVICE_MONITOR_API, VALUES_FILES, Helm, Manifests, values_of
from openfusion.presets import load_presets, shipped_presets_dir
from openfusion.settings import load_settings

pytestmark = pytest.mark.helm

# The chart's floor (Chart.yaml kubeVersion) and the releases most clusters run.
KUBERNETES_VERSIONS = ("1.25.0", "1.30.0", "1.31.0")
# Custom resources have no schema in kubernetes-validate; their fields are checked below instead.
WITHOUT_SCHEMA = {"ServiceMonitor"}

EXPECTED_KINDS = {
    "defaults": ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"],
    "gateway": ["ConfigMap", "Deployment", "Ingress", "PodDisruptionBudget", "Service", "ServiceAccount"],
    "sidecar": ["Deployment", "Secret", "Service"],
    "autoscaled": [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
        "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor",
    ],
}  # fmt: skip
SETUPS = list(VALUES_FILES)


@pytest.fixture(scope="module", params=SETUPS)
def setup(request: pytest.FixtureRequest, helm: Helm) -> tuple[str, Manifests]:
    """(name, manifests) for each CI values file, rendered as if the Prometheus Operator were installed."""
    return request.param, helm.template(request.param, api_versions=(SERVICE_MONITOR_API,))


@pytest.mark.parametrize("values", SETUPS)
def test_helm_lint_strict_passes(helm: Helm, values: str) -> None:
    path = VALUES_FILES[values]
    result = helm.run("lint", "--strict", str(CHART), *(["--values", str(path)] if path else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert not re.search(r"\[(WARNING|ERROR)\]", result.stdout), result.stdout


def test_every_manifest_matches_the_kubernetes_schemas(setup: tuple[str, Manifests]) -> None:
    name, manifests = setup
    assert manifests.kinds() == EXPECTED_KINDS[name]
    for doc in manifests:
        assert doc["metadata"]["namespace"] == NAMESPACE or doc["kind"] in {"ClusterRole"}, doc["metadata"]
        for version in KUBERNETES_VERSIONS:
            if doc["kind"] in WITHOUT_SCHEMA:
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(doc, version, strict=True)
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                pytest.fail(f"{name}: {doc['kind']} is invalid for Kubernetes {version} at {path}: {exc.message}")


def test_the_schema_check_catches_a_broken_deployment(helm: Helm) -> None:
    """The validation above is not vacuous: a misspelt field or a wrong type is an error."""
    deployment = helm.template().one("Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness(setup: tuple[str, Manifests]) -> None:
    _, manifests = setup
    container = manifests.container()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # /readyz gives each store 2 s: the probe must wait longer than that.
    assert container["readinessProbe"]["timeoutSeconds"] > 2
    [port] = container["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert manifests.env()["OPENFUSION_PORT"]["value"] == "8000"


def test_pods_without_client_keys_are_allowed_to_listen_open_only_inside_the_cluster(
    setup: tuple[str, Manifests],
) -> None:
    # openfusion refuses to listen beyond loopback without client keys; the chart allows it where it has
    # checked that nothing outside the cluster reaches the pods.
    name, manifests = setup
    env = manifests.env()
    assert env["OPENFUSION_HOST"]["value"] == "0.0.0.0"
    if name in {"gateway", "autoscaled"}:
        assert "OPENFUSION_API_KEYS" in env
        assert "OPENFUSION_ALLOW_OPEN" not in env
    else:
        assert manifests.one("Service")["spec"]["type"] == "ClusterIP"
        assert not manifests.all("Ingress")
        assert env["OPENFUSION_ALLOW_OPEN"]["value"] == "1"


def test_pod_runs_as_uid_10001_with_a_read_only_root_and_no_privileges(setup: tuple[str, Manifests]) -> None:
    _, manifests = setup
    pod = manifests.pod()["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = manifests.container()["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["runAsUser"] == 10001
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # A Service named "openfusion" would otherwise inject OPENFUSION_PORT=tcp://..., the entrypoint's port.
    assert pod["enableServiceLinks"] is False


def test_only_tmp_and_the_sqlite_directory_are_writable(setup: tuple[str, Manifests]) -> None:
    name, manifests = setup
    pod = manifests.pod()["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in manifests.container()["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    has_database = "DATABASE_URL" in manifests.env()
    assert has_database == (name in {"gateway", "autoscaled"})
    if has_database:
        assert "/var/lib/openfusion" not in mounts
    else:
        assert "emptyDir" in volumes[mounts["/var/lib/openfusion"]["name"]]
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable <= {"/tmp", "/var/lib/openfusion"}
    assert manifests.env()["XDG_STATE_HOME"]["value"] == "/var/lib/openfusion"


def test_termination_grace_outlasts_the_prestop_sleep_and_openfusions_own_grace(setup: tuple[str, Manifests]) -> None:
    name, manifests = setup
    values = values_of(name)
    container = manifests.container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["/bin/sleep", str(values["preStopSleepSeconds"])]
    sleep_s = int(command[1])
    grace_s = float(manifests.env()["OPENFUSION_SHUTDOWN_GRACE_S"]["value"])
    assert grace_s == values["shutdownGraceSeconds"]
    termination_s = manifests.pod()["spec"]["terminationGracePeriodSeconds"]
    assert termination_s > sleep_s + grace_s, (termination_s, sleep_s, grace_s)
    assert sleep_s > 0, "without the sleep, SIGTERM would close the listener while proxies still send to the pod"
    expected = values["terminationGracePeriodSeconds"] or sleep_s + grace_s + 10
    assert termination_s == expected


def test_pods_run_the_workers_the_values_say_not_the_images_auto(helm: Helm) -> None:
    """The image alone runs one worker per CPU of the node (no CPU limit by default): the chart says 1."""
    assert helm.template().env()["OPENFUSION_WORKERS"]["value"] == "1"
    manifests = helm.template(settings={"workers": "auto", "resources.limits.cpu": "2"})
    assert manifests.env()["OPENFUSION_WORKERS"]["value"] == "auto"
    assert helm.template(settings={"workers": 3}).env()["OPENFUSION_WORKERS"]["value"] == "3"


def test_secrets_reach_the_pod_by_reference_only(helm: Helm) -> None:
    manifests = helm.template("gateway")
    env = manifests.env()

    def ref(name: str) -> dict[str, Any]:
        return env[name]["valueFrom"]["secretKeyRef"]

    assert ref("DATABASE_URL") == {"name": "openfusion-db", "key": "DATABASE_URL"}
    assert ref("REDIS_URL") == {"name": "openfusion-redis", "key": "REDIS_URL"}
    # Client keys are required: a missing entry stops the pod instead of opening the gateway.
    assert ref("OPENFUSION_API_KEYS") == {"name": "openfusion-clients", "key": "OPENFUSION_API_KEYS"}
    assert ref("TEAM_A_KEY") == {"name": "openfusion-clients", "key": "TEAM_A_KEY"}
    # One fingerprint key for every replica, required: a pod must not start with one of its own instead.
    assert ref("OPENFUSION_FINGERPRINT_KEY") == {"name": "openfusion-fingerprint", "key": "OPENFUSION_FINGERPRINT_KEY"}
    # Provider keys are optional one by one: the Secret holds the providers in use.
    for provider in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "BRAVE_API_KEY"):
        assert ref(provider) == {"name": "openfusion-providers", "key": provider, "optional": True}
    assert "envFrom" not in manifests.container()
    assert manifests.all("Secret") == [], "the gateway uses existing Secrets only"


def test_the_fingerprint_key_comes_from_the_secret_and_entry_named(helm: Helm) -> None:
    assert "OPENFUSION_FINGERPRINT_KEY" not in helm.template().env(), "unset: each pod makes its own"
    settings = {"fingerprintKey.existingSecret": "shared", "fingerprintKey.existingSecretKey": "fingerprint"}
    manifests = helm.template(settings=settings)
    assert manifests.env()["OPENFUSION_FINGERPRINT_KEY"] == {
        "name": "OPENFUSION_FINGERPRINT_KEY",
        "valueFrom": {"secretKeyRef": {"name": "shared", "key": "fingerprint"}},
    }
    kubernetes_validate.validate(manifests.one("Deployment"), KUBERNETES_VERSIONS[-1], strict=True)


def test_the_trial_secret_is_the_only_place_its_values_appear(helm: Helm) -> None:
    manifests = helm.template("sidecar")
    secret = manifests.one("Secret")
    assert secret["stringData"] == {"OPENROUTER_API_KEY": "sk-or-trial-not-a-real-key"}
    assert manifests.container()["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    others = yaml.safe_dump_all([doc for doc in manifests if doc["kind"] != "Secret"])
    assert "sk-or-trial" not in others
    # Changing the trial Secret rolls the pods too.
    annotations = manifests.pod()["metadata"]["annotations"]
    changed = helm.template("sidecar", settings={"devSecret.stringData.OPENROUTER_API_KEY": "sk-or-other"})
    assert changed.pod()["metadata"]["annotations"]["checksum/secret"] != annotations["checksum/secret"]


def test_a_changed_config_or_preset_rolls_the_pods_and_nothing_else_does(helm: Helm) -> None:
    def checksum(**settings: Any) -> str:
        return helm.template("gateway", settings=settings).pod()["metadata"]["annotations"]["checksum/config"]

    base = checksum()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum() == base
    assert checksum(replicaCount=5) == base
    assert checksum(config="[guards]\nmax_panel_size = 4\n") != base
    assert checksum(**{"presets.careful": 'analysis_models = ["openai/gpt-5"]\nmodel = "openai/gpt-5"\n'}) != base


def test_config_and_presets_are_mounted_where_openfusion_reads_them(helm: Helm) -> None:
    manifests = helm.template("gateway")
    env = manifests.env()
    mounts = {mount["name"]: mount for mount in manifests.container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in manifests.pod()["spec"]["volumes"]}
    config_map = manifests.one("ConfigMap")
    assert env["OPENFUSION_CONFIG"]["value"] == mounts["config"]["mountPath"] + "/config.toml"
    assert volumes["config"]["configMap"] == {
        "name": config_map["metadata"]["name"],
        "items": [{"key": "config.toml", "path": "config.toml"}],
    }
    assert env["OPENFUSION_PRESETS_DIR"]["value"] == mounts["presets"]["mountPath"]
    assert volumes["presets"]["configMap"]["items"] == [{"key": "preset-careful.toml", "path": "careful.toml"}]
    assert set(config_map["data"]) == {"config.toml", "preset-careful.toml"}


@pytest.mark.parametrize("values", ["gateway", "autoscaled"])
def test_rendered_config_is_one_openfusion_accepts(
    helm: Helm, values: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's files and the pod's plain settings load in openfusion; every key_env is in the pod."""
    manifests = helm.template(values)
    data = manifests.one("ConfigMap")["data"]
    (tmp_path / "config.toml").write_text(data["config.toml"])
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    for key, text in data.items():
        if key.startswith("preset-"):
            (presets_dir / key.removeprefix("preset-")).write_text(text)
    env = manifests.env()
    for name, entry in env.items():
        if name.startswith("OPENFUSION_") and "value" in entry and name not in {"OPENFUSION_CONFIG"}:
            monkeypatch.setenv(name, entry["value"])
    monkeypatch.setenv("OPENFUSION_PRESETS_DIR", str(presets_dir))
    settings = load_settings(tmp_path / "config.toml")
    assert settings.shutdown_grace_s == values_of(values)["shutdownGraceSeconds"]
    presets = load_presets(shipped_presets_dir(), settings.presets_dir)
    assert settings.default_preset in presets
    key_envs = {key.key_env for key in settings.keys if key.key_env}
    assert key_envs, "these setups configure [[keys]]"
    assert key_envs <= env.keys(), f"[[keys]] read {key_envs - env.keys()} but the pod does not get them"
    assert tomllib.loads(data["config.toml"])  # valid TOML on its own, too


def test_gateway_runs_three_replicas_behind_a_streaming_ingress(helm: Helm) -> None:
    manifests = helm.template("gateway")
    assert manifests.one("Deployment")["spec"]["replicas"] == 3
    assert manifests.all("HorizontalPodAutoscaler") == []
    ingress = manifests.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    # Longer than a non-streamed fusion run's stages (300 s each by default) keep the line silent.
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 900
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 900
    service = manifests.one("Service")
    [rule] = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert [port["name"] for port in service["spec"]["ports"]] == ["http"]
    assert ingress["spec"]["tls"] == [{"secretName": "fusion-example-tls", "hosts": ["fusion.example.com"]}]
    assert manifests.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": {"matchLabels": manifests.one("Deployment")["spec"]["selector"]["matchLabels"]},
    }


def test_every_selector_picks_the_openfusion_pods(setup: tuple[str, Manifests]) -> None:
    _, manifests = setup
    pod_labels = manifests.pod()["metadata"]["labels"]
    deployment = manifests.one("Deployment")
    selectors = [deployment["spec"]["selector"]["matchLabels"], manifests.one("Service")["spec"]["selector"]]
    selectors += [doc["spec"]["selector"]["matchLabels"] for doc in manifests.all("PodDisruptionBudget")]
    selectors += [doc["spec"]["podSelector"]["matchLabels"] for doc in manifests.all("NetworkPolicy")]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items(), (selector, pod_labels)
    service_labels = manifests.one("Service")["metadata"]["labels"]
    for monitor in manifests.all("ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    for account in manifests.all("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
        assert manifests.pod()["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_autoscaler_scales_the_deployment_on_cpu_and_requests_in_flight(helm: Helm) -> None:
    manifests = helm.template("autoscaled")
    deployment = manifests.one("Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa = manifests.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    cpu, in_flight = hpa["spec"]["metrics"]
    assert cpu == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
    }
    assert in_flight == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "openfusion_requests_in_flight"},
            "target": {"type": "AverageValue", "averageValue": "200"},
        },
    }
    # CPU utilisation is measured against the request: there must be one.
    assert manifests.container()["resources"]["requests"]["cpu"]


def test_the_in_flight_metric_is_optional(helm: Helm) -> None:
    hpa = helm.template("autoscaled", settings={"autoscaling.inFlight.enabled": False}).one("HorizontalPodAutoscaler")
    assert [metric["type"] for metric in hpa["spec"]["metrics"]] == ["Resource"]


def test_the_in_flight_metric_is_one_openfusion_exports() -> None:
    """The HPA's default metric name is the gauge in openfusion's /metrics (prometheus-adapter keeps the name)."""
    from openfusion.observability.metrics import Metrics

    default = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["inFlight"]["metricName"]
    exported = Metrics().render().decode()
    assert re.search(rf"^# TYPE {re.escape(default)} gauge$", exported, re.M)


def test_service_monitor_only_where_the_prometheus_operator_is(helm: Helm) -> None:
    assert helm.template("autoscaled").all("ServiceMonitor") == []
    monitor = helm.template("autoscaled", api_versions=(SERVICE_MONITOR_API,)).one("ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    # With client keys, /metrics needs one.
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "openfusion-clients", "key": "PROMETHEUS_KEY"}
    }  # fmt: skip
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_network_policy_admits_only_the_listed_peers_on_the_http_port(helm: Helm) -> None:
    policy = helm.template("autoscaled").one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]] == [
        "ingress-nginx",
        "monitoring",
    ]


def test_image_defaults_to_the_project_image_at_the_app_version(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert helm.template().container()["image"] == f"openfusion:{app_version}"
    digest = values_of("autoscaled")["image"]["digest"]
    assert helm.template("autoscaled").container()["image"] == f"openfusion@{digest}"
    assert helm.template("gateway").container()["image"] == "registry.example.com/openfusion:0.1.0"


def test_several_replicas_with_a_database_drop_the_sqlite_volume(helm: Helm) -> None:
    manifests = helm.template(settings={"replicaCount": 2, "database.url": "postgresql://db.internal/openfusion"})
    assert manifests.one("Deployment")["spec"]["replicas"] == 2
    assert manifests.env()["DATABASE_URL"] == {"name": "DATABASE_URL", "value": "postgresql://db.internal/openfusion"}
    assert "state" not in {volume["name"] for volume in manifests.pod()["spec"]["volumes"]}
