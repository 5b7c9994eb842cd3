"""OpenTelemetry traces: one per request, with a span per stage, per upstream call attempt and per tool call.

Imported only when tracing is configured (see `observability.tracing`). The spans follow the GenAI
semantic conventions (`gen_ai.*`) and add openfusion's own attributes (`openfusion.*`). The spans are
fed from what the server records anyway: the upstream calls of `upstream.trace` (through the
`CallObserver` hooks) and the pipeline's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from openfusion import __version__
from openfusion.errors import OpenFusionError, UpstreamError
from openfusion.masking import SecretMasker
from openfusion.observability.tracing import TracingConfig
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelDeadline,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisStarted,
)
from openfusion.protocol import ChatRequest, Usage
from openfusion.upstream.trace import CallTrace, RequestTrace, current_role

PROPAGATOR = TraceContextTextMapPropagator()
# The longest attribute value (captured text) a span carries unless OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise.
CAPTURED_TEXT_CHARS = 64 * 1024
# At shutdown, the spans still queued get this long to reach the collector; then they are dropped.
FLUSH_AT_EXIT_S = 5.0
log = logging.getLogger("openfusion")
_CANCELLED = (asyncio.CancelledError, GeneratorExit)


class Tracing:
    """The process's tracer provider: started in each worker's lifespan, flushed and shut down at its end."""

    def __init__(self, config: TracingConfig, masker: SecretMasker) -> None:
        self.config = config
        self.masker = masker
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None

    def start(self) -> None:
        attributes = {"service.name": self.config.service_name, "service.version": __version__}
        resource = Resource.create({**attributes, "process.pid": os.getpid()})  # which worker of several
        provider = TracerProvider(resource=resource, sampler=_sampler(), span_limits=_span_limits())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.config.traces_endpoint)))
        self.provider, self.tracer = provider, provider.get_tracer("openfusion", __version__)

    async def aclose(self) -> None:
        """Export what is left, for at most `FLUSH_AT_EXIT_S`, and stop.

        The exporter's POSTs block, so the provider shuts down in a thread of its own: a daemon, so that one
        stuck on a collector that takes connections and never answers (each batch waits out the exporter's
        timeout, 10 s by default) is left behind when the process exits instead of holding its shutdown.
        """
        provider, self.provider, self.tracer = self.provider, None, None
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def shut_down() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=shut_down, name="openfusion-trace-flush", daemon=True).start()
        try:
            async with asyncio.timeout(FLUSH_AT_EXIT_S):
                await done
        except TimeoutError:
            log.warning(
                "trace export not finished %g s into shutdown (the collector does not answer):"
                " the spans still queued are dropped",
                FLUSH_AT_EXIT_S,
            )

    def request(self, server: Span) -> RequestSpans:
        """The spans of one request, under its server span."""
        assert self.tracer is not None
        masker = self.masker if self.config.capture_content else None
        return RequestSpans(self.tracer, server, capture=masker)


def _sampler() -> Sampler | None:
    """Every request traced, a caller's `traceparent` continued but its sampled flag not obeyed; or, when
    OTEL_TRACES_SAMPLER is set, the SDK's sampler as it says (None).

    The SDK's default obeys the flag, and any client may send one: its requests would be left out of the
    operator's traces.
    """
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    return ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)


def _span_limits() -> SpanLimits:
    """The SDK's limits, attribute values cut at CAPTURED_TEXT_CHARS unless OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT is set.

    The SDK cuts nothing by default, and captured text is as long as a client makes it: one prompt of
    `max_body_bytes` would be a span as large, and a batch of such spans more than a collector takes (it
    refuses the batch whole, every other request's spans with it).
    """
    if os.environ.get("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "").strip():
        return SpanLimits()
    return SpanLimits(max_attribute_length=CAPTURED_TEXT_CHARS)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class RequestSpans:
    """One request's spans. Stage spans follow the pipeline's events; a call's span is the open stage's child."""

    def __init__(self, tracer: Tracer, server: Span, *, capture: SecretMasker | None) -> None:
        self.tracer = tracer
        self.server = server
        self.capture = capture  # masks captured text; None: no text is captured
        self.trace: RequestTrace | None = None
        self._server_context = otel_trace.set_span_in_context(server)
        self._stages: dict[str, Span] = {}  # role -> its open stage span
        self._attempts: dict[int, Span] = {}  # id(call) -> its open attempt's span
        self._panel: dict[str, int] = {}

    @property
    def trace_id(self) -> str:
        return otel_trace.format_trace_id(self.server.get_span_context().trace_id)

    # Upstream calls (the CallObserver hooks).

    def attempt_started(self, call: CallTrace, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        attempt = call.retries + 1
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": call.model,
            "gen_ai.provider.name": call.provider,
            "openfusion.role": call.role,
            "openfusion.attempt": attempt,
            "openfusion.retry": attempt > 1,
        }
        if attempt > 1:
            attributes["http.request.resend_count"] = attempt - 1
        span = self.tracer.start_span(
            f"chat {call.model}", context=self._parent(call.role), kind=SpanKind.CLIENT, attributes=attributes
        )
        self._attempts[id(call)] = span
        carrier = dict(headers or {})
        PROPAGATOR.inject(carrier, context=otel_trace.set_span_in_context(span))
        return carrier

    def attempt_failed(self, call: CallTrace, error: BaseException) -> None:
        span = self._attempts.pop(id(call), None)
        if span is not None:
            _failed(span, error, quote=self.capture is not None)
            span.end()

    def call_ended(self, call: CallTrace) -> None:
        span = self._attempts.pop(id(call), None)
        if span is None:  # the failed attempt's span already ended with its error
            return
        if call.response_model:
            span.set_attribute("gen_ai.response.model", call.response_model)
        if call.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [call.finish_reason])
        if call.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", call.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", call.usage.completion_tokens)
        cost = self.trace.cost_of(call) if self.trace is not None else None
        if cost is not None:
            span.set_attribute("openfusion.cost", cost)
        span.set_attribute("openfusion.status", call.status)
        if call.status == "error":
            if call.upstream_status is not None:
                span.set_attribute("http.response.status_code", call.upstream_status)
            span.set_attribute("error.type", str(call.upstream_status or "upstream_error"))
            told = _told("upstream_error", call.upstream_status)
            span.set_status(Status(StatusCode.ERROR, (call.error or told) if self.capture is not None else told))
        span.end()

    # Research tool calls.

    def tool_started(self, name: str, arguments: str | None) -> Any:
        role = current_role()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
            "openfusion.role": role,
        }
        if self.capture is not None and arguments:
            attributes["gen_ai.tool.call.arguments"] = self.capture.text(arguments)
        return self.tracer.start_span(
            f"execute_tool {name}", context=self._parent(role), kind=SpanKind.CLIENT, attributes=attributes
        )

    def tool_ended(self, handle: Any, *, error: str | None, sources: int) -> None:
        span: Span = handle
        span.set_attribute("openfusion.sources", sources)
        if error is not None:
            span.set_attribute("error.type", "tool_error")
            span.set_status(Status(StatusCode.ERROR, error[:300]))
        span.end()

    # Stages, from the pipeline's events.

    async def events(self, events: AsyncIterator[Event], *, request: ChatRequest) -> AsyncIterator[Event]:
        if self.capture is not None:
            self.server.set_attribute("gen_ai.input.messages", self._text(request.conversation()))
        try:
            async with contextlib.aclosing(events):  # leaving early closes the run (and its calls) at once
                async for event in events:
                    if type(event) is not SynthesisChunk:  # the answer's chunks change no span
                        self._saw(event)
                    yield event
        except BaseException as exc:
            self._end_stages(exc)
            raise
        self._end_stages(None)

    def _saw(self, event: Event) -> None:
        if isinstance(event, PanelStarted):
            self._begin("panel", "panel", {"openfusion.panel.models": event.models})
            self._panel = {"answered": 0, "failed": 0}
        elif isinstance(event, PanelistDone):
            self._panelist(event)
        elif isinstance(event, PanelDeadline) and (panel := self._stages.get("panel")) is not None:
            panel.add_event("panel_deadline", {"openfusion.dropped": event.dropped, "deadline_s": event.deadline_s})
        elif isinstance(event, JudgeStarted):
            self._end("panel")
            attributes = {"gen_ai.request.model": event.model, "openfusion.attempt": event.attempt}
            self._begin("judge", f"judge {event.model}", attributes)
        elif isinstance(event, JudgeOutcome):
            self._judged(event)
        elif isinstance(event, SynthesisStarted):
            self._end("panel")
            if (previous := self._stages.pop("synthesizer", None)) is not None:  # it failed: this is its fallback
                previous.set_attribute("openfusion.status", "error")
                previous.set_status(Status(StatusCode.ERROR, "the synthesizer failed; a fallback follows"))
                previous.end()
            attributes = {"gen_ai.request.model": event.model, "openfusion.attempt": event.attempt}
            self._begin("synthesizer", f"synthesize {event.model}", attributes)
        elif isinstance(event, RunFinished):
            self._finished(event)

    def _panelist(self, event: PanelistDone) -> None:
        panel = self._stages.get("panel")
        if panel is None:
            return
        result = event.result
        attributes: dict[str, Any] = {"gen_ai.request.model": result.model, "openfusion.latency_ms": result.latency_ms}
        if isinstance(result, PanelAnswer):
            self._panel["answered"] += 1
            attributes["openfusion.status"] = "ok"
            if self.capture is not None:
                attributes["gen_ai.output.messages"] = self._text([{"role": "assistant", "content": result.content}])
        else:
            self._panel["failed"] += 1
            attributes["openfusion.status"] = "error"
            attributes["openfusion.failure_reason"] = result.code or "upstream_error"
            attributes["error.type"] = result.code or "upstream_error"
        panel.add_event("panelist", attributes)
        panel.set_attribute("openfusion.panel.answered", self._panel["answered"])
        panel.set_attribute("openfusion.panel.failed", self._panel["failed"])

    def _judged(self, event: JudgeOutcome) -> None:
        judge = self._stages.pop("judge", None)
        if judge is None:
            return
        if event.ok:
            judge.set_attribute("openfusion.status", "ok")
            if self.capture is not None and event.analysis is not None:
                judge.set_attribute("gen_ai.output.messages", self._text(event.analysis.model_dump()))
        else:
            judge.set_attribute("openfusion.status", "error")
            judge.set_attribute("openfusion.failure_reason", event.failure_reason or "judge_failed")
            reason = event.failure_reason or "no analysis"
            judge.set_status(Status(StatusCode.ERROR, (event.detail or reason) if self.capture is not None else reason))
        judge.end()

    def _finished(self, event: RunFinished) -> None:
        synthesizer = self._stages.pop("synthesizer", None)
        if synthesizer is not None:
            synthesizer.set_attribute("openfusion.status", "ok")
            synthesizer.set_attribute("gen_ai.response.model", event.model)
            synthesizer.end()
        self.server.set_attribute("gen_ai.response.model", event.model)
        if (source := event.fusion.get("panel_source")) is not None:
            self.server.set_attribute("openfusion.panel_source", source)
        if self.capture is not None and (answer := event.content.final_answer) is not None:
            self.server.set_attribute("gen_ai.output.messages", self._text([{"role": "assistant", "content": answer}]))

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
        server = self.server
        server.set_attribute("openfusion.generation_id", generation_id)
        server.set_attribute("openfusion.status", status)
        server.set_attribute("openfusion.api_type", api_type)
        server.set_attribute("gen_ai.operation.name", "chat")
        server.set_attribute("gen_ai.request.model", requested_model)
        if preset is not None:
            server.set_attribute("openfusion.preset", preset)
        if model is not None:
            server.set_attribute("gen_ai.response.model", model)
        server.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        server.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if usage.cost is not None:
            server.set_attribute("openfusion.cost", usage.cost)
        if failure_reason is not None:
            server.set_attribute("openfusion.failure_reason", failure_reason)
        if status == "error":
            server.set_status(Status(StatusCode.ERROR, failure_reason or "error"))

    def finish(self) -> None:
        """The response is over: whatever is still open ends (calls a cancelled run left behind)."""
        self._end_stages(None)
        for span in self._attempts.values():
            span.set_attribute("openfusion.status", "cancelled")
            span.end()
        self._attempts.clear()

    def _parent(self, role: str) -> Any:
        stage = self._stages.get(role)
        return otel_trace.set_span_in_context(stage) if stage is not None else self._server_context

    def _begin(self, role: str, name: str, attributes: dict[str, Any]) -> None:
        self._end(role)
        attributes = {"openfusion.stage": role, **attributes}
        self._stages[role] = self.tracer.start_span(name, context=self._server_context, attributes=attributes)

    def _end(self, role: str) -> None:
        span = self._stages.pop(role, None)
        if span is not None:
            span.end()

    def _end_stages(self, error: BaseException | None) -> None:
        for span in self._stages.values():
            if error is not None:
                _failed(span, error, quote=self.capture is not None)
            span.end()
        self._stages.clear()

    def _text(self, value: Any) -> str:
        assert self.capture is not None
        return self.capture.text(orjson.dumps(value).decode())


def _failed(span: Span, error: BaseException, *, quote: bool) -> None:
    """Mark a span as failed by `error`, or as cancelled (the client left, or the run was abandoned).

    `quote`: the error's message describes it (content is captured); else its code and upstream status do, since a
    message may carry a provider's words, and those may quote the request.
    """
    if isinstance(error, _CANCELLED) or (isinstance(error, OpenFusionError) and error.code == "cancelled"):
        span.set_attribute("openfusion.status", "cancelled")
        return
    span.set_attribute("openfusion.status", "error")
    if isinstance(error, OpenFusionError):
        reason = error.code or type(error).__name__
        span.set_attribute("openfusion.failure_reason", reason)
        span.set_attribute("error.type", reason)
        if isinstance(error, UpstreamError) and error.upstream_status is not None:
            span.set_attribute("http.response.status_code", error.upstream_status)
        status = error.upstream_status if isinstance(error, UpstreamError) else None
        span.set_status(Status(StatusCode.ERROR, error.message[:1000] if quote else _told(reason, status)))
    else:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def _told(reason: str, upstream_status: int | None) -> str:
    """A failure in the server's words alone: its reason, and the provider's status when there is one."""
    return f"{reason} (HTTP {upstream_status})" if upstream_status is not None else reason
