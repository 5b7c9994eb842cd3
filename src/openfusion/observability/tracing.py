"""Tracing's configuration and the per-request hook the rest of the server sees, without OpenTelemetry itself.

OpenTelemetry is imported only when tracing is configured (`openfusion.observability.otel`, the
`openfusion[otel]` extra). With it off, a request pays one context-variable read for it, nothing more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, field_validator

from openfusion.upstream.trace import CallObserver

if TYPE_CHECKING:
    from openfusion.pipeline.events import Event
    from openfusion.protocol import ChatRequest, Usage
    from openfusion.upstream.trace import RequestTrace

_TRUE = ("1", "true", "yes", "on")


class TracingSettings(BaseModel):
    """`[tracing]`: OpenTelemetry traces over OTLP/HTTP (needs `pip install 'openfusion[otel]'`)."""

    model_config = ConfigDict(extra="forbid")

    # The collector's OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); spans go to {endpoint}/v1/traces.
    # Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; none of them: no tracing.
    endpoint: str | None = None
    # Unset: OTEL_SERVICE_NAME, else "openfusion".
    service_name: str | None = None
    # Prompt and answer text on the spans (masked like activity); also
    # OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true. Off: no text leaves in a span.
    capture_content: bool = False
    # The activity page links a generation to its trace here, e.g. "http://jaeger:16686/trace/{trace_id}".
    trace_url: str | None = None

    @field_validator("trace_url")
    @classmethod
    def _trace_link(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(("http://", "https://")) or "{trace_id}" not in value):
            raise ValueError("tracing.trace_url must be an http(s) URL with {trace_id} in it")
        return value

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("tracing.endpoint must be an http:// or https:// URL (OTLP/HTTP)")
        return value


@dataclass(frozen=True)
class TracingConfig:
    """Tracing as resolved from `[tracing]` and the standard OTEL_* variables."""

    traces_endpoint: str
    service_name: str
    capture_content: bool


def tracing_config(settings: TracingSettings, environ: Mapping[str, str]) -> TracingConfig | None:
    """Where spans go and what they carry; None when tracing is off (no endpoint, or OTEL_SDK_DISABLED)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return None
    if settings.endpoint:
        endpoint = settings.endpoint.rstrip("/") + "/v1/traces"
    elif traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        endpoint = traces  # the signal's own endpoint is used as given
    elif base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        endpoint = base.rstrip("/") + "/v1/traces"
    else:
        return None
    capture = environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().lower() in _TRUE
    return TracingConfig(
        traces_endpoint=endpoint,
        service_name=settings.service_name or environ.get("OTEL_SERVICE_NAME", "").strip() or "openfusion",
        capture_content=settings.capture_content or capture,
    )


class RequestSpans(CallObserver, Protocol):
    """One traced request: its server span, its stages' spans, its calls' spans."""

    trace: RequestTrace | None  # the request's upstream calls (for each call's cost)

    @property
    def trace_id(self) -> str:
        """The trace's id (32 hex digits), for the activity record."""

    def events(self, events: AsyncIterator[Event], *, request: ChatRequest) -> AsyncIterator[Event]:
        """The fusion run's events, relayed as they are, each stage in its span."""

    def closed(
        self,
        *,
        generation_id: str,
        status: str,
        failure_reason: str | None,
        preset: str | None,
        requested_model: str,
        model: str | None,
        usage: Usage,
        api_type: str,
    ) -> None:
        """The request's record is closed: what it is known by goes on the server span."""


_request_spans: ContextVar[RequestSpans | None] = ContextVar("openfusion_request_spans", default=None)


def current_request_spans() -> RequestSpans | None:
    """The current request's spans; None when tracing is off."""
    return _request_spans.get()


def set_request_spans(spans: RequestSpans | None) -> Any:
    """Make `spans` the current request's (returns the token to reset it with)."""
    return _request_spans.set(spans)


def reset_request_spans(token: Any) -> None:
    _request_spans.reset(token)
