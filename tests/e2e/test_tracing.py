"""OpenTelemetry traces through the real server, exported over OTLP/HTTP to a real receiver on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import openai
import pytest

from e2e.processes import fusion, post_and_leave, provider_config, serve
from fakes.otlp import CLIENT, SERVER, STATUS_ERROR, Receiver, Span, by_trace, children, otlp_receiver, silent_collector
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.app import create_app
from openfusion.settings import Settings

from .conftest import server_environ

QUESTION = "Why is the sky blue?"
PROVIDER_KEY = "sk-provider-secret"


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with otlp_receiver() as received:
        yield received


@pytest.fixture
def traced_server(
    make_settings: Callable[..., Settings], receiver: tuple[Receiver, str]
) -> Callable[..., AbstractContextManager[str]]:
    """openfusion exporting its traces to the receiver (through OTEL_EXPORTER_OTLP_ENDPOINT, or `[tracing]`).

    Leaving the block stops the server, which flushes every span to the receiver.
    """
    _, collector = receiver

    @contextmanager
    def start(*, tracing: dict[str, Any] | None = None, **overrides: Any) -> Iterator[str]:
        environ = server_environ()
        if tracing is None:
            environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector
        else:
            overrides["tracing"] = {"endpoint": collector, **tracing}
        app = create_app(make_settings(**overrides), environ=environ)
        with serve_in_thread(app) as url:
            yield url

    return start


def ask(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "fusion/trio")
    kwargs.setdefault("messages", [{"role": "user", "content": QUESTION}])
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-key-0123456789", max_retries=0) as sdk:
        result = sdk.chat.completions.with_raw_response.create(**kwargs)
        return result.headers, (list(result.parse()) if kwargs.get("stream") else result.parse())


def server_span(spans: list[Span]) -> Span:
    (root,) = [span for span in spans if span.kind == SERVER]
    return root


def named(spans: list[Span], name: str) -> Span:
    (span,) = [span for span in spans if span.name == name]
    return span


def traceparent_of(span: Span) -> str:
    """The version, trace and parent of a `traceparent` naming this span (its flags left out)."""
    return f"00-{span.trace_id}-{span.span_id}"


def sent_parent(header: str | None) -> str:
    return (header or "").rsplit("-", 1)[0]


@pytest.mark.parametrize("stream", [False, True])
def test_a_fusion_is_one_trace_of_stages_and_calls(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str], stream: bool
) -> None:
    with traced_server() as url:
        headers, _ = ask(url, stream=stream)
    spans = receiver[0].spans

    root = server_span(spans)
    assert {span.trace_id for span in spans} == {root.trace_id}  # one request, one trace
    assert root.name == "POST /v1/chat/completions" and root.parent_id == ""
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["openfusion.preset"] == "trio"
    assert root.attributes["openfusion.status"] == "ok"
    assert root.attributes["openfusion.generation_id"] == headers["x-generation-id"]
    assert root.attributes["openfusion.panel_source"] == "fresh"
    assert root.attributes["gen_ai.request.model"] == "fusion/trio"
    assert root.attributes["gen_ai.usage.input_tokens"] == 5 * 11  # five calls of the fake's usage
    assert root.resource["service.name"] == "openfusion"

    panel, judge, synthesizer = children(spans, root)
    assert (panel.name, judge.name, synthesizer.name) == ("panel", "judge fake/judge", "synthesize fake/synth")
    assert panel.end_ns <= judge.start_ns and judge.end_ns <= synthesizer.start_ns  # in order, not overlapping
    assert panel.attributes["openfusion.panel.answered"] == 3
    assert [event for event, _ in panel.events] == ["panelist"] * 3

    panel_calls = children(spans, panel)
    assert sorted(span.name for span in panel_calls) == ["chat fake/a", "chat fake/b", "chat fake/c"]
    (judge_call,) = children(spans, judge)
    (synth_call,) = children(spans, synthesizer)
    for call, role in [*((c, "panel") for c in panel_calls), (judge_call, "judge"), (synth_call, "synthesizer")]:
        assert call.kind == CLIENT
        attributes = call.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == call.name.removeprefix("chat ")
        assert attributes["gen_ai.provider.name"] == "fake"
        assert attributes["gen_ai.response.model"] == call.name.removeprefix("chat fake/")  # the fake echoes it
        assert attributes["gen_ai.usage.input_tokens"] == 11 and attributes["gen_ai.usage.output_tokens"] == 7
        assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
        assert attributes["openfusion.role"] == role
        assert attributes["openfusion.attempt"] == 1 and attributes["openfusion.retry"] is False
        assert attributes["openfusion.status"] == "ok"
        assert call.status_code != STATUS_ERROR
    # Each upstream call carried its own span's context: the provider's spans join the same trace.
    sent = {call.model: sent_parent(call.headers.get("traceparent")) for call in upstream.calls}
    assert sent == {c.attributes["gen_ai.request.model"].removeprefix("fake/"): traceparent_of(c)
                    for c in [*panel_calls, judge_call, synth_call]}  # fmt: skip
    # No prompt or answer text unless asked for.
    assert not [key for span in spans for key in span.attributes if key.endswith("messages")]


def test_a_failed_panelist_is_an_error_span_in_a_fusion_that_succeeded(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    upstream.script("b", Script(status=400, error_message="no such thing"))
    with traced_server() as url:
        ask(url)
    spans = receiver[0].spans

    root = server_span(spans)
    assert root.attributes["openfusion.status"] == "ok" and root.status_code != STATUS_ERROR
    panel = named(spans, "panel")
    assert panel.attributes["openfusion.panel.answered"] == 2 and panel.attributes["openfusion.panel.failed"] == 1
    failed = [attributes for event, attributes in panel.events if attributes["openfusion.status"] == "error"]
    assert [(f["gen_ai.request.model"], f["openfusion.failure_reason"]) for f in failed] == [
        ("fake/b", "upstream_error")
    ]
    call = named(spans, "chat fake/b")
    assert call.parent_id == panel.span_id
    assert call.status_code == STATUS_ERROR and call.status_message == "upstream_error (HTTP 400)"  # not its words
    assert call.attributes["http.response.status_code"] == 400
    assert call.attributes["openfusion.failure_reason"] == "upstream_error"
    assert call.attributes["openfusion.status"] == "error"


def test_a_retried_call_is_a_span_per_attempt(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    upstream.script("a", Script(status=503), Script(content="second time lucky"))
    with traced_server() as url:
        ask(url)
    spans = receiver[0].spans

    panel = named(spans, "panel")
    first, second = sorted((s for s in spans if s.name == "chat fake/a"), key=lambda s: s.start_ns)
    assert first.parent_id == second.parent_id == panel.span_id
    assert first.end_ns <= second.start_ns
    assert (first.attributes["openfusion.attempt"], first.attributes["openfusion.retry"]) == (1, False)
    assert first.status_code == STATUS_ERROR and first.attributes["http.response.status_code"] == 503
    assert (second.attributes["openfusion.attempt"], second.attributes["openfusion.retry"]) == (2, True)
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["openfusion.status"] == "ok" and second.attributes["gen_ai.usage.output_tokens"] == 7
    # Each attempt went out with its own span as the parent.
    assert [sent_parent(call.headers["traceparent"]) for call in upstream.calls_for("a")] == [
        traceparent_of(first),
        traceparent_of(second),
    ]


def test_a_cancelled_request_ends_every_span_as_cancelled(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    for model in ("a", "b", "c"):
        upstream.script(model, Script(delay_s=30))
    with traced_server() as url:
        post_and_leave(  # the client leaves while the panel is still thinking (30 s)
            f"{url}/v1/chat/completions",
            {"model": "fusion/trio", "messages": [{"role": "user", "content": QUESTION}]},
            lambda: len(upstream.calls) == 3,
        )
        wait_until(lambda: len(upstream.calls) == 3 and all(c.disconnected for c in upstream.calls))
    spans = receiver[0].spans

    root = server_span(spans)
    assert root.attributes["openfusion.status"] == "cancelled"
    assert root.attributes["openfusion.failure_reason"] == "cancelled"
    (panel,) = children(spans, root)  # the run never got past its panel
    assert panel.name == "panel" and panel.attributes["openfusion.status"] == "cancelled"
    calls = children(spans, panel)
    assert sorted(c.name for c in calls) == ["chat fake/a", "chat fake/b", "chat fake/c"]
    assert {c.attributes["openfusion.status"] for c in calls} == {"cancelled"}


def test_an_incoming_traceparent_is_continued(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with traced_server(tracing={}) as url:  # configured by `[tracing]` this time
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "fusion/trio", "messages": [{"role": "user", "content": QUESTION}]},
            headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
            timeout=20,
        )
        assert response.status_code == 200
    spans = receiver[0].spans

    root = server_span(spans)
    assert (root.trace_id, root.parent_id) == (caller_trace, caller_span)
    assert {span.trace_id for span in spans} == {caller_trace}
    assert len(by_trace(spans, caller_trace)) == 3 + 5 + 1  # server, three stages, five calls
    assert all(call.headers["traceparent"].split("-")[1] == caller_trace for call in upstream.calls)


def test_a_callers_tracestate_reaches_no_provider(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    """A client's `tracestate` is its own opaque data (its vendors' entries, user and tenant ids at times): sent
    on with every upstream call, it reached every provider of a fusion run, third parties the operator chose
    for answers, not for the client's tracing data. The trace is continued; the providers get our context only."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    caller_state = "client-vendor=user-4711-acme-corp,other=t61rcWkgMzE"
    headers = {"traceparent": f"00-{caller_trace}-{caller_span}-01", "tracestate": caller_state}
    with traced_server() as url:
        for model in ("fusion/trio", "fake/plain"):
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": QUESTION}]},
                headers=headers,
                timeout=20,
            )
            assert response.status_code == 200, response.text

    assert len(upstream.calls) == 5 + 1  # the fusion run's five calls, the pass-through's one
    assert all(call.headers["traceparent"].split("-")[1] == caller_trace for call in upstream.calls)
    assert [call.headers.get("tracestate") for call in upstream.calls] == [None] * 6
    assert not [call for call in upstream.calls if "4711" in str(call.headers)]


def test_a_caller_that_asks_not_to_be_sampled_is_traced_all_the_same(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    """A client's `traceparent` with the sampled flag off is continued, not obeyed: any client could otherwise take
    its requests out of the operator's traces (and leave their activity records pointing at no trace)."""
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with traced_server() as url:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "fake/plain", "messages": [{"role": "user", "content": QUESTION}]},
            headers={"traceparent": f"00-{caller_trace}-{caller_span}-00"},
            timeout=20,
        )
        assert response.status_code == 200
    spans = receiver[0].spans

    root = server_span(spans)
    assert (root.trace_id, root.parent_id) == (caller_trace, caller_span)
    assert [span.name for span in children(spans, root)] == ["chat fake/plain"]


def test_prompt_and_answer_text_only_when_asked_and_masked(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    upstream.script("a", Script(content=f"my key is {PROVIDER_KEY}, the sky scatters blue"))
    upstream.script("synth", Script(content="Rayleigh scattering."))
    with traced_server(tracing={"capture_content": True}) as url:
        ask(url, messages=[{"role": "user", "content": f"{QUESTION} (use {PROVIDER_KEY})"}])
    spans = receiver[0].spans

    root = server_span(spans)
    assert QUESTION in root.attributes["gen_ai.input.messages"]
    assert "Rayleigh scattering." in root.attributes["gen_ai.output.messages"]
    panel = named(spans, "panel")
    answers = [attributes["gen_ai.output.messages"] for _, attributes in panel.events]
    assert any("the sky scatters blue" in answer for answer in answers)
    assert "consensus" in named(spans, "judge fake/judge").attributes["gen_ai.output.messages"]
    exported = repr([(span.attributes, span.events) for span in spans])
    assert PROVIDER_KEY not in exported and "sk-provider" not in exported  # masked like activity


@pytest.mark.parametrize("capture", [False, True])
def test_a_providers_error_message_is_content_kept_out_of_spans_unless_asked(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str], capture: bool
) -> None:
    """A provider's error message may quote the request it refuses (servers built on pydantic echo the `input` they
    could not read): with capture off, a failed span is told by its code and status, never in the provider's words."""
    quoting = f"cannot read input {QUESTION!r}"
    upstream.script("b", Script(status=400, error_message=quoting))  # a panelist, failing before its answer
    upstream.script("judge", Script(status=400, error_message=quoting))  # the judge: no analysis
    upstream.script("cut", Script(chunks=["Rayleigh"], error_event={"message": quoting, "code": 500}))  # mid-stream
    upstream.script("refused", Script(status=422, error_message=quoting))  # a pass-through's answer
    for model in ("a", "c"):  # two of three answer, so the fusion itself succeeds
        upstream.script(model, Script(content="blue"))
    with traced_server(tracing={"capture_content": capture}) as url:
        ask(url)
        with pytest.raises(openai.APIError):  # the error event, relayed
            ask(url, model="fake/cut", stream=True)
        with pytest.raises(openai.UnprocessableEntityError):
            ask(url, model="fake/refused")
    spans = receiver[0].spans

    failed = [span for span in spans if span.status_code == STATUS_ERROR]
    assert {span.name for span in failed} >= {"chat fake/b", "judge fake/judge", "chat fake/cut", "chat fake/refused"}
    told = {span.name: span.status_message for span in failed}
    if capture:  # the provider's words, masked like all captured text
        assert all(quoting in told[name] for name in ("chat fake/b", "chat fake/cut", "chat fake/refused"))
        return
    exported = repr([(span.name, span.attributes, span.events, span.status_message) for span in spans])
    assert QUESTION not in exported and "cannot read input" not in exported
    assert told["chat fake/b"] == "upstream_error (HTTP 400)"
    assert told["chat fake/refused"] == "upstream_error (HTTP 422)"
    assert told["judge fake/judge"] == "judge_upstream_error"


def test_captured_text_is_cut_so_one_clients_prompt_cannot_swell_every_export(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    """A captured attribute is at most CAPTURED_TEXT_CHARS long: a client's prompt (up to max_body_bytes) would
    otherwise be a span as large, and a batch of them more than a collector takes (it refuses the batch whole,
    every other request's spans with it)."""
    from openfusion.observability.otel import CAPTURED_TEXT_CHARS

    prompt = QUESTION + " " + "x" * (4 * CAPTURED_TEXT_CHARS)
    with traced_server(tracing={"capture_content": True}) as url:
        ask(url, messages=[{"role": "user", "content": prompt}])
    spans = receiver[0].spans

    captured = server_span(spans).attributes["gen_ai.input.messages"]
    assert QUESTION in captured and len(captured) == CAPTURED_TEXT_CHARS
    sizes = [len(str(value)) for span in spans for value in span.attributes.values()]
    sizes += [len(str(value)) for span in spans for _, attributes in span.events for value in attributes.values()]
    assert max(sizes) <= CAPTURED_TEXT_CHARS


def test_tracing_off_never_imports_the_tracing_sdk(tmp_path: Any) -> None:
    """(Other libraries may import parts of OpenTelemetry themselves: redis-py its metrics, FastAPI its API.)"""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from openfusion.app import create_app\n"
        "from openfusion.settings import Settings\n"
        "create_app(Settings(), environ={})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter',"
        " 'openfusion.observability.otel', 'openfusion.api.tracing'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.usefixtures("loopback_only")
def test_research_tool_calls_are_client_spans_of_their_stage(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    from .test_research import SITE, call, research_settings

    with serve_in_thread(SITE) as site:
        upstream.script(
            "a",
            Script(tool_calls=[call("web_search", query="grid curtailment")]),
            Script(tool_calls=[call("web_fetch", url=f"{site}/secret-nothing-here")]),
            Script(content="Curtailment fell by a third."),
        )
        with traced_server(**research_settings(site)) as url:
            ask(url)
    spans = receiver[0].spans

    panel = named(spans, "panel")
    search, fetch = named(spans, "execute_tool web_search"), named(spans, "execute_tool web_fetch")
    for tool, name in ((search, "web_search"), (fetch, "web_fetch")):
        assert tool.parent_id == panel.span_id and tool.kind == CLIENT
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == name
        assert tool.attributes["openfusion.role"] == "panel"
        assert "gen_ai.tool.call.arguments" not in tool.attributes  # the query is the user's text: not captured
    assert search.attributes["openfusion.sources"] == 2 and search.status_code != STATUS_ERROR
    assert fetch.status_code == STATUS_ERROR and "web_fetch error" in fetch.status_message  # a 404 page
    # Between the tool calls, the panelist's three completions, in order.
    a_calls = sorted((s for s in spans if s.name == "chat fake/a"), key=lambda s: s.start_ns)
    assert len(a_calls) == 3
    assert a_calls[0].end_ns <= search.start_ns <= search.end_ns <= a_calls[1].start_ns
    assert a_calls[1].end_ns <= fetch.start_ns <= fetch.end_ns <= a_calls[2].start_ns


def test_the_activity_record_links_the_generation_to_its_trace(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str], tmp_path: Any
) -> None:
    activity = {"path": tmp_path / "activity.sqlite3"}
    trace_url = "http://traces.example/trace/{trace_id}"
    with traced_server(tracing={"trace_url": trace_url}, activity=activity) as url:
        headers, _ = ask(url)
        generation_id = headers["x-generation-id"]
        wait_until(lambda: httpx.get(f"{url}/api/v1/generation", params={"id": generation_id}).status_code == 200)
        recorded = httpx.get(f"{url}/api/v1/generation", params={"id": generation_id}).json()["data"]
        page = httpx.get(f"{url}/activity/{generation_id}").text
    spans = receiver[0].spans
    root = named(spans, "POST /v1/chat/completions")
    # The activity reads are requests too, each its own trace.
    assert {s.name for s in spans if s.kind == SERVER} >= {"GET /api/v1/generation", "GET /activity/{generation_id}"}

    assert root.attributes["openfusion.generation_id"] == generation_id
    assert recorded["trace_id"] == root.trace_id
    assert f'href="http://traces.example/trace/{root.trace_id}"' in page


def test_each_worker_exports_its_own_spans_and_flushes_them_at_exit(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Any, tmp_path: Any, receiver: tuple[Receiver, str]
) -> None:
    import signal

    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, extra=f'[tracing]\nendpoint = "{receiver[1]}"\n')
    with serve(config, presets_dir, tmp_path, args=("--workers", "2")) as served:
        pids = served.wait_serving(2)
        generations = []
        for number in (1, 2):
            with served.only(pids[number], pids):
                response = fusion(served.url)
                assert response.status_code == 200
                generations.append(response.headers["x-generation-id"])
        served.process.send_signal(signal.SIGTERM)  # at once: the spans are still waiting for their batch
        assert served.process.wait(timeout=30) == 0
    spans = receiver[0].spans

    roots = [span for span in spans if span.name == "POST /v1/chat/completions"]
    assert sorted(root.attributes["openfusion.generation_id"] for root in roots) == sorted(generations)
    assert {root.resource["process.pid"] for root in roots} == set(pids.values())  # one exporter per worker
    assert len(spans) == 2 * (1 + 3 + 5)


def test_a_collector_that_never_answers_holds_shutdown_no_longer_than_the_flush_bound(
    fake_upstream: Any, presets_dir: Any, tmp_path: Any
) -> None:
    """The spans queued at shutdown get FLUSH_AT_EXIT_S to leave; an export waiting on a silent collector (here
    up to 60 s, the exporter's timeout) is left behind, not waited for."""
    import signal
    import time

    from openfusion.observability.otel import FLUSH_AT_EXIT_S

    _, upstream_url = fake_upstream
    with silent_collector() as collector:
        config = provider_config(upstream_url, grace_s=1, extra=f'[tracing]\nendpoint = "{collector.url}"\n')
        with serve(config, presets_dir, tmp_path, env={"OTEL_EXPORTER_OTLP_TIMEOUT": "60"}) as served:
            for _ in range(3):
                assert fusion(served.url).status_code == 200
            served.process.send_signal(signal.SIGTERM)  # the spans are still waiting for their batch
            sent = time.monotonic()
            served.process.wait(timeout=90)
            took = time.monotonic() - sent
            log = served.log_text()

    assert collector.connections >= 1 and collector.bytes_read > 0  # the export was sent and never answered
    assert took < 1 + FLUSH_AT_EXIT_S + 10, f"shutdown took {took:.1f} s"
    assert "trace export not finished" in log, log


def test_a_cache_hit_is_a_trace_without_stages_or_calls(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str], presets_dir: Any
) -> None:
    from .conftest import TRIO

    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    with traced_server() as url:
        ask(url, model="fusion/cached")
        ask(url, model="fusion/cached")
    spans = receiver[0].spans

    miss, hit = sorted((s for s in spans if s.kind == SERVER), key=lambda s: s.start_ns)
    assert (miss.attributes["openfusion.cache"], hit.attributes["openfusion.cache"]) == ("miss", "hit")
    assert len(by_trace(spans, miss.trace_id)) == 1 + 3 + 5  # the run, traced as any
    assert by_trace(spans, hit.trace_id) == [hit]  # answered at once: nothing ran, nothing was called
    assert hit.attributes["openfusion.status"] == "ok" and hit.attributes["openfusion.cost"] == 0


def test_tool_mode_outer_calls_frame_the_fusion_stages(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    from .test_tool_mode import call, fusion_tool

    upstream.script(
        "outer", Script(tool_calls=[call("fusion", prompt="Shard or not?")]), Script(content="Do not shard yet.")
    )
    with traced_server() as url:
        ask(url, model="fake/outer", tools=[fusion_tool()])
    spans = receiver[0].spans

    root = server_span(spans)
    first, panel, judge, second = children(spans, root)  # outer call, the fusion it asked for, outer call again
    assert (first.name, panel.name, judge.name, second.name) == (
        "chat fake/outer",
        "panel",
        "judge fake/judge",
        "chat fake/outer",
    )
    assert {first.attributes["openfusion.role"], second.attributes["openfusion.role"]} == {"outer"}
    assert first.attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert first.end_ns <= panel.start_ns and judge.end_ns <= second.start_ns
    assert sorted(s.name for s in children(spans, panel)) == ["chat fake/a", "chat fake/b"]


def test_a_pass_through_request_is_a_server_span_and_its_call(
    upstream: FakeUpstream, traced_server: Any, receiver: tuple[Receiver, str]
) -> None:
    with traced_server() as url:
        ask(url, model="fake/plain", stream=True)
    spans = receiver[0].spans

    root = server_span(spans)
    assert root.attributes["gen_ai.request.model"] == "fake/plain" and "openfusion.preset" not in root.attributes
    (call,) = children(spans, root)
    assert call.name == "chat fake/plain" and call.attributes["openfusion.role"] == "passthrough"
    assert call.attributes["openfusion.status"] == "ok"
    assert sent_parent(upstream.calls_for("plain")[0].headers["traceparent"]) == traceparent_of(call)
