"""Tracing's configuration: when it is on, where spans go, whether text goes with them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openfusion.observability.tracing import TracingSettings, tracing_config


def test_off_without_an_endpoint() -> None:
    assert tracing_config(TracingSettings(), {}) is None
    assert tracing_config(TracingSettings(), {"OTEL_SERVICE_NAME": "x"}) is None


def test_the_standard_variables_turn_it_on() -> None:
    config = tracing_config(TracingSettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert config is not None
    assert config.traces_endpoint == "http://collector:4318/v1/traces"
    assert (config.service_name, config.capture_content) == ("openfusion", False)
    # The signal's own endpoint is taken as given, and wins over the general one.
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/t"}
    assert tracing_config(TracingSettings(), environ).traces_endpoint == "http://b/t"  # type: ignore[union-attr]


def test_the_config_file_wins_and_names_the_service() -> None:
    settings = TracingSettings(endpoint="https://otel.example:4318", service_name="gateway")
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4318", "OTEL_SERVICE_NAME": "other"}
    config = tracing_config(settings, environ)
    assert config is not None
    assert (config.traces_endpoint, config.service_name) == ("https://otel.example:4318/v1/traces", "gateway")
    assert tracing_config(TracingSettings(), {**environ}).service_name == "other"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_sdk_disabled_wins(value: str) -> None:
    settings = TracingSettings(endpoint="http://127.0.0.1:4318")
    assert tracing_config(settings, {"OTEL_SDK_DISABLED": value}) is None


def test_content_capture_is_opt_in_by_either_switch() -> None:
    settings = TracingSettings(endpoint="http://127.0.0.1:4318")
    assert tracing_config(settings, {}).capture_content is False  # type: ignore[union-attr]
    variable = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    assert tracing_config(settings, variable).capture_content is True  # type: ignore[union-attr]
    on = TracingSettings(endpoint="http://127.0.0.1:4318", capture_content=True)
    assert tracing_config(on, {}).capture_content is True  # type: ignore[union-attr]


def test_an_endpoint_must_be_http() -> None:
    with pytest.raises(ValidationError, match="OTLP/HTTP"):
        TracingSettings(endpoint="grpc://collector:4317")
