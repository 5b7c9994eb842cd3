"""What `helm install` prints afterwards: where openfusion is, and what is missing or risky in the values."""

from __future__ import annotations

import pytest

from deploy.chart import Helm

pytestmark = pytest.mark.helm

NO_PROVIDERS = "no provider keys are configured"
NO_CLIENT_KEYS = "No client keys are configured"
SQLITE = "Activity (history, spend) is kept in SQLite"
TRIAL = "devSecret.create is on"
NO_OPERATOR = "none was created"
ADAPTER = "custom metrics adapter"


def test_defaults_warn_about_what_a_first_install_lacks(helm: Helm) -> None:
    notes = helm.notes()
    assert "http://openfusion.ai.svc:8000/v1" in notes
    for warning in (NO_PROVIDERS, NO_CLIENT_KEYS, SQLITE, "it is lost with the pod"):
        assert warning in notes
    assert "Kubernetes kills it after 50 s" in notes
    assert "keeps serving for 10 s (preStop)" in notes


def test_the_gateway_is_told_its_address_and_nothing_is_missing(helm: Helm) -> None:
    notes = helm.notes("gateway")
    assert "https://fusion.example.com/v1" in notes
    for warning in (NO_PROVIDERS, NO_CLIENT_KEYS, SQLITE, TRIAL, ADAPTER):
        assert warning not in notes
    assert "in-flight streams 60 s to finish; Kubernetes kills it after 85 s" in notes.replace("\n", " ")


def test_the_trial_secret_and_the_autoscaler_metric_are_called_out(helm: Helm) -> None:
    assert TRIAL in helm.notes("sidecar")
    notes = helm.notes("autoscaled")
    assert ADAPTER in notes
    assert "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ai/pods/*/openfusion_requests_in_flight" in notes
    # helm template knows of no Prometheus Operator here: the ServiceMonitor was skipped, and the notes say so.
    assert NO_OPERATOR in notes
