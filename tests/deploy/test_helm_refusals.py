"""Values the Helm chart refuses to render, each with a message that says what to do; and their safe neighbours."""

from __future__ import annotations

import pytest

from deploy.chart import Helm

pytestmark = pytest.mark.helm

POSTGRES = {"database.url": "postgresql://db.internal/openfusion"}
CLIENT_KEYS = {"clientKeys.existingSecret": "openfusion-clients"}


@pytest.mark.parametrize(
    "settings",
    [{"replicaCount": 2}, {"replicaCount": 3, "redis.url": "redis://r:6379/0"}],
    ids=["two", "three-with-redis"],
)
def test_several_replicas_on_sqlite_are_refused(helm: Helm, settings: dict[str, object]) -> None:
    message = helm.refusal(settings=settings)
    assert f"replicaCount is {settings['replicaCount']} but no DATABASE_URL is configured" in message
    assert "database.existingSecret" in message
    helm.template(settings={**settings, **POSTGRES})
    helm.template(settings={**settings, "database.existingSecret": "openfusion-db"})
    helm.template(
        settings={**settings, "devSecret.create": True, "devSecret.stringData.DATABASE_URL": "postgresql://x/y"}
    )


def test_the_autoscaler_on_sqlite_is_refused(helm: Helm) -> None:
    message = helm.refusal(settings={"autoscaling.enabled": True})
    assert "autoscaling.enabled needs DATABASE_URL" in message
    assert helm.template(settings={"autoscaling.enabled": True, **POSTGRES}).one("HorizontalPodAutoscaler")


@pytest.mark.parametrize(
    "exposure",
    [{"ingress.enabled": True}, {"service.type": "LoadBalancer"}, {"service.type": "NodePort"}],
    ids=["ingress", "load-balancer", "node-port"],
)
def test_exposure_without_client_keys_is_refused(helm: Helm, exposure: dict[str, object]) -> None:
    message = helm.refusal(settings=exposure)
    assert "without client keys" in message
    assert "clientKeys.existingSecret" in message
    # Client keys from a Secret, or [[keys]] in the config, or an explicit opt-out, make it render.
    helm.template(settings={**exposure, **CLIENT_KEYS})
    helm.template(settings={**exposure, "config": '[[keys]]\nname = "a"\nkey_sha256 = "' + "0" * 64 + '"\n'})
    helm.template(settings={**exposure, "clientKeys.allowExposureWithoutKeys": True})


def test_an_exposed_gateway_with_an_empty_client_key_reference_is_refused(helm: Helm) -> None:
    """A Secret name alone is not keys: with neither OPENFUSION_API_KEYS nor key_env entries it reads nothing."""
    settings = {"ingress.enabled": True, **CLIENT_KEYS, "clientKeys.apiKeysKey": ""}
    assert "without client keys" in helm.refusal(settings=settings)


def test_the_gateway_values_without_client_keys_are_refused(helm: Helm) -> None:
    settings = {"clientKeys.existingSecret": "", "config": ""}
    assert "ingress.enabled exposes openfusion outside the cluster without client keys" in helm.refusal(
        "gateway", settings=settings
    )


@pytest.mark.parametrize(
    ("settings", "budget"),
    [
        ({"terminationGracePeriodSeconds": 40}, 40),  # 10 s preStop + 30 s grace: no margin at all
        ({"terminationGracePeriodSeconds": 30}, 40),
        ({"shutdownGraceSeconds": 120, "terminationGracePeriodSeconds": 100}, 130),
        ({"shutdownGraceSeconds": 29.5, "terminationGracePeriodSeconds": 40}, 40),  # grace rounds up
    ],
    ids=["no-margin", "shorter", "long-grace", "fractional-grace"],
)
def test_a_termination_grace_too_short_for_streams_to_drain_is_refused(
    helm: Helm, settings: dict[str, object], budget: int
) -> None:
    message = helm.refusal(settings=settings)
    limit = settings["terminationGracePeriodSeconds"]
    assert f"terminationGracePeriodSeconds ({limit}) must be larger than" in message
    assert f"preStopSleepSeconds + shutdownGraceSeconds ({budget})" in message
    ok = helm.template(settings={**settings, "terminationGracePeriodSeconds": budget + 1})
    assert ok.pod()["spec"]["terminationGracePeriodSeconds"] == budget + 1


def test_a_longer_shutdown_grace_lengthens_the_default_termination_grace(helm: Helm) -> None:
    manifests = helm.template(settings={"shutdownGraceSeconds": 120, "preStopSleepSeconds": 5})
    assert manifests.pod()["spec"]["terminationGracePeriodSeconds"] == 135
    assert manifests.env()["OPENFUSION_SHUTDOWN_GRACE_S"]["value"] == "120"


def test_shutdown_grace_set_behind_the_charts_back_is_refused(helm: Helm) -> None:
    """The config file wins over the environment, so a grace set there would outlive the pod's."""
    message = helm.refusal(settings={"config": "default_preset = 'fast'\nshutdown_grace_s = 600\n"})
    assert "config sets shutdown_grace_s: set shutdownGraceSeconds instead" in message
    message = helm.refusal(settings={"env": {"OPENFUSION_SHUTDOWN_GRACE_S": "600"}})
    assert "env sets OPENFUSION_SHUTDOWN_GRACE_S" in message


def test_workers_set_behind_the_charts_back_is_refused(helm: Helm) -> None:
    message = helm.refusal(settings={"env": {"OPENFUSION_WORKERS": "4"}})
    assert "env sets OPENFUSION_WORKERS: set workers instead" in message


def test_a_fingerprint_key_in_plain_values_is_refused(helm: Helm) -> None:
    message = helm.refusal(settings={"env": {"OPENFUSION_FINGERPRINT_KEY": "a-secret-long-enough-to-keep"}})
    assert "put it in a Secret and name it in fingerprintKey.existingSecret" in message
    assert "a-secret-long-enough-to-keep" not in message


def test_a_disruption_budget_with_both_bounds_is_refused(helm: Helm) -> None:
    message = helm.refusal(settings={"podDisruptionBudget.minAvailable": 1})
    assert "set minAvailable or maxUnavailable, not both" in message
    pdb = helm.template(settings={"podDisruptionBudget.minAvailable": 1, "podDisruptionBudget.maxUnavailable": ""})
    assert pdb.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_an_autoscaler_whose_floor_is_above_its_ceiling_is_refused(helm: Helm) -> None:
    settings = {"autoscaling.enabled": True, "autoscaling.minReplicas": 5, "autoscaling.maxReplicas": 3, **POSTGRES}
    assert "autoscaling.minReplicas (5) is larger than autoscaling.maxReplicas (3)" in helm.refusal(settings=settings)


def test_an_autoscaler_without_a_metric_is_refused(helm: Helm) -> None:
    settings = {"autoscaling.enabled": True, "autoscaling.targetCPUUtilizationPercentage": "", **POSTGRES}
    assert "the autoscaler has no metric" in helm.refusal(settings=settings)
    hpa = helm.template(settings={**settings, "autoscaling.inFlight.enabled": True}).one("HorizontalPodAutoscaler")
    assert [metric["type"] for metric in hpa["spec"]["metrics"]] == ["Pods"]


def test_a_service_monitor_that_could_not_scrape_through_client_keys_is_refused(helm: Helm) -> None:
    message = helm.refusal("autoscaled", settings={"serviceMonitor.bearerTokenSecret": {"name": "", "key": ""}})
    assert "every scrape would get 401" in message
    # Without client keys /metrics is open, so no token is needed.
    helm.template(settings={"serviceMonitor.enabled": True})


@pytest.mark.parametrize("name", ["Careful", "../etc", "a b", "-x"])
def test_a_preset_name_openfusion_would_not_load_is_refused(helm: Helm, name: str) -> None:
    message = helm.refusal(settings={"presets": {name: 'analysis_models = ["a/b"]\nmodel = "a/b"\n'}})
    assert "is not a valid preset name" in message


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"replicas": 3}, "(root): Additional property replicas is not allowed"),
        ({"ingress.enable": True}, "ingress: Additional property enable is not allowed"),
        ({"database.URL": "postgresql://db/x"}, "database: Additional property URL is not allowed"),
        ({"replicaCount": "three"}, "replicaCount: Invalid type"),
        ({"database.url": "sqlite:////var/lib/openfusion/activity.sqlite3"}, "database.url: Does not match pattern"),
        ({"service.type": "ExternalName"}, "service.type: service.type must be one of"),
        ({"env": {"OPENFUSION-DEFAULT-PRESET": "fast"}}, "env: Does not match pattern"),
        ({"image.digest": "0123abcd"}, "image.digest: Does not match pattern"),
        ({"terminationGracePeriodSeconds": "60"}, "terminationGracePeriodSeconds"),
        ({"workers": 0}, "workers"),
        ({"workers": "many"}, "workers"),
        ({"fingerprintKey.secret": "x"}, "fingerprintKey: Additional property secret is not allowed"),
        ({"fingerprintKey.existingSecretKey": ""}, "fingerprintKey.existingSecretKey"),
    ],
    ids=[
        *("typo", "nested-typo", "case", "type", "sqlite-url", "service-type", "env-name", "digest"),
        *("grace-string", "no-workers", "workers-word", "fingerprint-typo", "fingerprint-no-key"),
    ],
)
def test_values_the_schema_refuses(helm: Helm, settings: dict[str, object], complaint: str) -> None:
    """A misspelt or mistyped value fails the render instead of being silently ignored."""
    assert complaint in helm.refusal(settings=settings, by="schema")
