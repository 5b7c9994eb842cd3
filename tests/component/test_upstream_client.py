"""UpstreamClient against a respx-mocked provider: request translation, parsing, retries, streaming, pass-through."""

from __future__ import annotations

from typing import Any

import httpcore
import httpx
import orjson
import pytest
import respx

from component.support import (
    COMPLETIONS_URL,
    UP_KEY,
    ByteStream,
    MakeClient,
    chunk_json,
    completion_json,
    completion_response,
    error_response,
    make_registry,
    sent_json,
    split_at,
    sse_bytes,
    sse_response,
)
from openfusion.errors import (
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from openfusion.settings import HttpSettings, RetrySettings
from openfusion.upstream.client import UpstreamClient, build_http_client

MESSAGES = [{"role": "user", "content": "Hi"}]


# ======================================================================================================================
# complete(): what is sent upstream
# ======================================================================================================================


async def test_complete_sends_upstream_name_provider_key_and_stream_false(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.return_value = completion_response()

    await client.complete(
        "up/gpt-x",
        {"messages": MESSAGES, "temperature": 0.2, "top_p": None, "stream_options": {"include_usage": True}},
    )

    assert upstream.call_count == 1
    request = upstream.calls.last.request
    assert request.url == COMPLETIONS_URL
    assert request.headers["authorization"] == f"Bearer {UP_KEY}"
    assert request.headers["content-type"] == "application/json"
    # None values are dropped, stream_options only belongs to streamed calls
    assert sent_json(request) == {"model": "gpt-x", "messages": MESSAGES, "temperature": 0.2, "stream": False}


@pytest.mark.parametrize(("strip_prefix", "sent_model"), [(True, "gpt-x"), (False, "up/gpt-x")])
async def test_complete_sends_model_stripped_only_when_configured(
    make_client: MakeClient, upstream: respx.Route, strip_prefix: bool, sent_model: str
) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(strip_prefix=strip_prefix))

    await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert sent_json(upstream.calls.last.request)["model"] == sent_model


async def test_complete_sends_provider_extra_headers(make_client: MakeClient, upstream: respx.Route) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(headers={"HTTP-Referer": "https://example.org", "X-Title": "openfusion"}))

    await client.complete("up/gpt-x", {"messages": MESSAGES})

    headers = upstream.calls.last.request.headers
    assert headers["http-referer"] == "https://example.org"
    assert headers["x-title"] == "openfusion"
    assert headers["authorization"] == f"Bearer {UP_KEY}"


@pytest.mark.parametrize(
    ("max_tokens_field", "expected"),
    [
        ("max_completion_tokens", {"max_completion_tokens": 321}),
        ("max_tokens", {"max_tokens": 321}),
    ],
)
async def test_complete_renames_max_completion_tokens_for_max_tokens_providers(
    make_client: MakeClient, upstream: respx.Route, max_tokens_field: str, expected: dict[str, int]
) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(max_tokens_field=max_tokens_field))

    await client.complete("up/gpt-x", {"messages": MESSAGES, "max_completion_tokens": 321})

    body = sent_json(upstream.calls.last.request)
    assert {key: body[key] for key in ("max_tokens", "max_completion_tokens") if key in body} == expected


@pytest.mark.parametrize(
    ("reasoning_style", "reasoning", "expected"),
    [
        ("openrouter", {"effort": "high"}, {"reasoning": {"effort": "high"}}),
        ("openrouter", {"max_tokens": 500, "exclude": True}, {"reasoning": {"max_tokens": 500, "exclude": True}}),
        ("reasoning_effort", {"effort": "high"}, {"reasoning_effort": "high"}),
        ("reasoning_effort", {"effort": "low", "exclude": True}, {"reasoning_effort": "low"}),
        ("reasoning_effort", {"max_tokens": 500}, {"reasoning_effort": "medium"}),  # no output limit: the default
        ("reasoning_effort", {"enabled": True}, {"reasoning_effort": "medium"}),
        ("reasoning_effort", {"enabled": False}, {}),
        ("reasoning_effort", {"exclude": True}, {}),
        ("reasoning_effort", {"effort": None}, {}),  # no effort named: no `reasoning_effort: null`
        ("none", {"effort": "high"}, {}),
        ("none", {"max_tokens": 500}, {}),
    ],
)
async def test_complete_translates_reasoning_per_provider_style(
    make_client: MakeClient,
    upstream: respx.Route,
    reasoning_style: str,
    reasoning: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(reasoning_style=reasoning_style))

    await client.complete("up/gpt-x", {"messages": MESSAGES, "reasoning": reasoning})

    body = sent_json(upstream.calls.last.request)
    assert {key: body[key] for key in ("reasoning", "reasoning_effort") if key in body} == expected


@pytest.mark.parametrize(
    ("budget", "max_tokens_field", "effort"),
    [(800, "max_completion_tokens", "high"), (400, "max_tokens", "medium"), (100, "max_tokens", "low")],
)
async def test_a_pipeline_calls_reasoning_budget_is_an_effort_of_its_output_limit(
    make_client: MakeClient, upstream: respx.Route, budget: int, max_tokens_field: str, effort: str
) -> None:
    """A fusion call's budget (the plugin's `reasoning.max_tokens`), for a provider that takes only an effort: the
    one spending about that share of the call's limit, whichever field carries it."""
    upstream.return_value = completion_response()
    client = make_client(make_registry(max_tokens_field=max_tokens_field))

    await client.complete("up/gpt-x", {"messages": MESSAGES, "max_completion_tokens": 1000,
                                       "reasoning": {"max_tokens": budget}})  # fmt: skip

    body = sent_json(upstream.calls.last.request)
    assert body["reasoning_effort"] == effort and "reasoning" not in body and body[max_tokens_field] == 1000


# ======================================================================================================================
# complete(): what comes back
# ======================================================================================================================


async def test_complete_parses_content_usage_and_reported_model(client: UpstreamClient, upstream: respx.Route) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46, "cost": 0.0025}
    upstream.return_value = completion_response(
        "Bonjour", model="gpt-x-2025-01-01", usage=usage, finish_reason="length"
    )

    completion = await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert completion.content == "Bonjour"
    assert completion.message == {"role": "assistant", "content": "Bonjour"}
    assert completion.finish_reason == "length"
    assert completion.model == "gpt-x-2025-01-01"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 34)
    assert completion.usage.total_tokens == 46
    assert completion.usage.cost == pytest.approx(0.0025)


@pytest.mark.parametrize("reported", [None, ""], ids=["absent", "empty"])
async def test_complete_falls_back_to_the_requested_slug_when_no_model_is_reported(
    client: UpstreamClient, upstream: respx.Route, reported: str | None
) -> None:
    upstream.return_value = completion_response(model=reported)

    completion = await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert completion.model == "up/gpt-x"


async def test_complete_joins_text_content_parts(client: UpstreamClient, upstream: respx.Route) -> None:
    body = completion_json()
    body["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "Hello, "},
        {"type": "image_url", "image_url": {"url": "https://x"}},
        {"type": "text", "text": "world"},
    ]
    upstream.return_value = httpx.Response(200, json=body)

    completion = await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert completion.content == "Hello, world"


async def test_complete_without_usage_counts_zero(client: UpstreamClient, upstream: respx.Route) -> None:
    body = completion_json()
    del body["usage"]
    upstream.return_value = httpx.Response(200, json=body)

    completion = await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert completion.usage.total_tokens == 0
    assert completion.usage.cost is None


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not json",
        b'{"choices": [{"message": {"content": "cut o',
        b"[1, 2, 3]",
        b'{"id": "x"}',
        b'{"choices": []}',
        b'{"choices": ["text"]}',
        b'{"choices": [{"message": "hello", "finish_reason": "stop"}]}',
    ],
    ids=["not-json", "truncated", "array", "no-choices", "empty-choices", "choice-not-object", "message-not-object"],
)
async def test_complete_malformed_response_is_a_protocol_error_and_not_retried(
    client: UpstreamClient, upstream: respx.Route, raw: bytes
) -> None:
    upstream.return_value = httpx.Response(200, content=raw, headers={"content-type": "application/json"})

    with pytest.raises(UpstreamProtocolError) as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert raised.value.model == "up/gpt-x"
    assert raised.value.provider == "up"
    assert upstream.call_count == 1


async def test_complete_error_object_in_a_200_body_raises_status_error(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.return_value = httpx.Response(200, json={"error": {"message": "model overloaded", "code": 503}})

    with pytest.raises(UpstreamStatusError, match="model overloaded"):
        await client.complete("up/gpt-x", {"messages": MESSAGES})


# ======================================================================================================================
# complete(): the retry policy
# ======================================================================================================================


@pytest.mark.parametrize(
    "side_effect",
    [
        [error_response(500), error_response(503), completion_response("ok")],
        [error_response(502), error_response(504), completion_response("ok")],
        [httpx.ConnectError, completion_response("ok")],
        [httpcore.ConnectError, completion_response("ok")],
        [httpcore.ReadTimeout, completion_response("ok")],
        [error_response(429, headers={"Retry-After": "0"}), completion_response("ok")],
        [error_response(429), completion_response("ok")],
    ],
    ids=[
        "500-503-200",
        "502-504-200",
        "connect-error",
        "httpcore-connect-error",
        "read-timeout",
        "429-retry-after-0",
        "429-no-retry-after",
    ],
)
async def test_complete_retries_transient_failures_then_succeeds(
    client: UpstreamClient, upstream: respx.Route, side_effect: list[Any]
) -> None:
    upstream.side_effect = side_effect

    completion = await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert completion.content == "ok"
    assert upstream.call_count == len(side_effect)
    # every attempt sends the same body
    assert len({call.request.content for call in upstream.calls}) == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_complete_retry_after_above_the_cap_is_not_retried(
    make_client: MakeClient, upstream: respx.Route, status: int
) -> None:
    upstream.side_effect = [error_response(status, "slow down", headers={"Retry-After": "60"}), completion_response()]
    client = make_client(max_retry_after_s=20)

    with pytest.raises(UpstreamStatusError) as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 1
    assert raised.value.upstream_status == status
    assert raised.value.retry_after == 60.0
    assert "slow down" in raised.value.message


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422])
async def test_complete_client_errors_are_not_retried(
    client: UpstreamClient, upstream: respx.Route, status: int
) -> None:
    upstream.side_effect = [error_response(status, "no way"), completion_response()]

    with pytest.raises(UpstreamStatusError) as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 1
    assert raised.value.upstream_status == status
    assert raised.value.message == f"up/gpt-x (up) returned HTTP {status}: no way"


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
async def test_complete_attempts_are_capped_at_max_attempts(
    make_client: MakeClient, upstream: respx.Route, max_attempts: int
) -> None:
    upstream.side_effect = [error_response(503, f"attempt {n}") for n in range(1, 11)]
    client = make_client(max_attempts=max_attempts)

    with pytest.raises(UpstreamStatusError) as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == max_attempts
    assert raised.value.upstream_status == 503
    assert raised.value.message.endswith(f"attempt {max_attempts}")  # the last failure is the one raised


async def test_complete_unreachable_upstream_raises_connection_error_after_retries(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.side_effect = httpx.ConnectError

    with pytest.raises(UpstreamConnectionError, match="could not be reached"):
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 3


async def test_complete_timeout_from_the_transport_raises_upstream_timeout_after_retries(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    # httpcore's ReadTimeout is what httpx's own transport maps to httpx.ReadTimeout
    upstream.side_effect = httpcore.ReadTimeout

    with pytest.raises(UpstreamTimeout, match="timed out") as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 3
    assert raised.value.status_code == 504


async def test_complete_timeout_while_reading_the_body_raises_upstream_timeout(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.side_effect = lambda request: httpx.Response(200, stream=ByteStream([b'{"choi', httpcore.ReadTimeout()]))

    with pytest.raises(UpstreamTimeout):
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 3


async def test_complete_httpx_read_timeout_raises_upstream_timeout_after_retries(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    """An httpx.ReadTimeout is a timeout whatever its __cause__ (respx chains a SideEffectError as the cause)."""
    upstream.side_effect = httpx.ReadTimeout

    with pytest.raises(UpstreamTimeout):
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    assert upstream.call_count == 3


@pytest.mark.parametrize(
    ("status", "response"),
    [
        (401, error_response(401, f"Incorrect API key provided: {UP_KEY}. Check your key.")),
        (400, httpx.Response(400, text=f"bad header Authorization: Bearer {UP_KEY}")),
        (403, httpx.Response(403, json={"message": f"key {UP_KEY} is disabled"})),
        (403, httpx.Response(403, json={"error": f"key {UP_KEY} is disabled"})),
        (500, error_response(500, f"internal error for {UP_KEY} and again {UP_KEY}")),
    ],
    ids=["openai-error-object", "plain-text", "top-level-message", "error-string", "5xx-after-retries"],
)
async def test_provider_key_echoed_in_an_upstream_error_is_masked(
    client: UpstreamClient, upstream: respx.Route, status: int, response: httpx.Response
) -> None:
    upstream.return_value = response

    with pytest.raises(UpstreamStatusError) as raised:
        await client.complete("up/gpt-x", {"messages": MESSAGES})

    error = raised.value
    assert error.upstream_status == status
    assert "***" in error.message
    assert UP_KEY not in error.message
    assert UP_KEY not in str(error)
    assert UP_KEY.encode() not in orjson.dumps(error.to_body())


# ======================================================================================================================
# stream()
# ======================================================================================================================

STREAM_CHUNKS = [
    chunk_json("Hel"),
    chunk_json("lo, wörld — ünïcödé ✓"),
    chunk_json('{"quoted": "data: [DONE]"}'),
    chunk_json(finish_reason="stop"),
    chunk_json(usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
]


def _awkward_cuts(data: bytes) -> list[int]:
    """Offsets that cut mid `data:`, mid JSON key, mid multi-byte character, between CR and LF, mid [DONE]."""
    cuts = [
        data.index(b"data:") + 2,
        data.index(b'"choices"') + 4,
        data.index("ö".encode()) + 1,
        data.index("✓".encode()) + 2,
        data.index(b"[DONE]") + 3,
        data.index(b"\n") + 1,
    ]
    if b"\r\n" in data:
        cuts.append(data.index(b"\r\n") + 1)
        cuts.append(data.rindex(b"\r\n") + 1)
    return [cut for cut in cuts if 0 < cut < len(data)]


async def _collect(client: UpstreamClient, model: str = "up/gpt-x", body: dict[str, Any] | None = None) -> list[Any]:
    async with client.stream(model, body or {"messages": MESSAGES}) as chunks:
        return [chunk async for chunk in chunks]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("splitting", ["whole", "awkward", "bytewise"])
async def test_stream_yields_every_chunk_in_order_however_the_bytes_are_split(
    client: UpstreamClient, upstream: respx.Route, newline: bytes, splitting: str
) -> None:
    data = sse_bytes(STREAM_CHUNKS, newline=newline)
    if splitting == "whole":
        parts = [data]
    elif splitting == "awkward":
        parts = split_at(data, *_awkward_cuts(data))
        assert len(parts) > 6
    else:
        parts = [data[i : i + 1] for i in range(len(data))]
    stream = ByteStream(parts)
    upstream.return_value = sse_response(stream)

    chunks = await _collect(client)

    assert chunks == STREAM_CHUNKS
    assert stream.closed


async def test_stream_requests_streaming_with_usage(client: UpstreamClient, upstream: respx.Route) -> None:
    upstream.return_value = sse_response(sse_bytes(STREAM_CHUNKS))

    await _collect(client, body={"messages": MESSAGES, "max_completion_tokens": 50})

    request = upstream.calls.last.request
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == f"Bearer {UP_KEY}"
    body = sent_json(request)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-x"
    assert body["max_completion_tokens"] == 50


async def test_stream_does_not_ask_for_usage_when_the_provider_cannot(
    make_client: MakeClient, upstream: respx.Route
) -> None:
    upstream.return_value = sse_response(sse_bytes(STREAM_CHUNKS))
    client = make_client(make_registry(stream_usage=False))

    await _collect(client, body={"messages": MESSAGES, "stream_options": {"include_usage": True}})

    body = sent_json(upstream.calls.last.request)
    assert body["stream"] is True
    assert "stream_options" not in body


async def test_stream_ends_at_done_and_ignores_anything_after_it(client: UpstreamClient, upstream: respx.Route) -> None:
    # no finish_reason at all: [DONE] alone is a proper end
    data = sse_bytes([chunk_json("a"), chunk_json("b")]) + sse_bytes([chunk_json("after done")], done=False)
    upstream.return_value = sse_response(data)

    chunks = await _collect(client)

    assert chunks == [chunk_json("a"), chunk_json("b")]


async def test_stream_skips_comments_and_empty_data(client: UpstreamClient, upstream: respx.Route) -> None:
    data = b": OPENROUTER PROCESSING\n\n" + b"data:\n\n" + b"event: ping\n\n" + sse_bytes(STREAM_CHUNKS)
    upstream.return_value = sse_response(data)

    assert await _collect(client) == STREAM_CHUNKS


async def test_stream_mid_stream_error_chunk_raises_status_error(client: UpstreamClient, upstream: respx.Route) -> None:
    error = {"error": {"message": "provider overloaded", "code": 502}, "choices": []}
    upstream.return_value = sse_response(sse_bytes([chunk_json("partial"), error]))
    received = []

    with pytest.raises(UpstreamStatusError, match="provider overloaded") as raised:
        async with client.stream("up/gpt-x", {"messages": MESSAGES}) as chunks:
            async for chunk in chunks:
                received.append(chunk)

    assert received == [chunk_json("partial")]
    assert raised.value.upstream_status == 502
    assert raised.value.model == "up/gpt-x"
    assert upstream.call_count == 1  # nothing is retried once the stream has begun


async def test_stream_cut_before_finish_and_done_is_a_protocol_error(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.return_value = sse_response(sse_bytes([chunk_json("Hel"), chunk_json("lo")], done=False))
    received = []

    with pytest.raises(UpstreamProtocolError, match="ended before the completion finished"):
        async with client.stream("up/gpt-x", {"messages": MESSAGES}) as chunks:
            async for chunk in chunks:
                received.append(chunk)

    assert received == [chunk_json("Hel"), chunk_json("lo")]


async def test_stream_with_finish_reason_but_no_done_is_complete(client: UpstreamClient, upstream: respx.Route) -> None:
    chunks = [chunk_json("Hi"), chunk_json(finish_reason="stop")]
    upstream.return_value = sse_response(sse_bytes(chunks, done=False))

    assert await _collect(client) == chunks


async def test_stream_invalid_json_event_is_a_protocol_error(client: UpstreamClient, upstream: respx.Route) -> None:
    upstream.return_value = sse_response(sse_bytes([chunk_json("ok")], done=False) + b"data: {not json\n\n")

    with pytest.raises(UpstreamProtocolError, match="not valid JSON"):
        await _collect(client)


async def test_stream_answered_without_an_event_stream_is_a_protocol_error(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    """A 200 JSON body to a streamed request (a server ignoring stream=true) is an invalid response, not unreachable."""
    upstream.return_value = completion_response("I do not stream")

    with pytest.raises(UpstreamProtocolError):
        await _collect(client)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(httpcore.ReadError(), UpstreamConnectionError), (httpcore.ReadTimeout(), UpstreamTimeout)],
    ids=["connection-dropped", "read-timeout"],
)
async def test_stream_transport_failure_mid_stream_maps_to_upstream_error(
    client: UpstreamClient, upstream: respx.Route, failure: Exception, expected: type[Exception]
) -> None:
    stream = ByteStream([sse_bytes([chunk_json("partial")], done=False), failure])
    upstream.return_value = sse_response(stream)
    received = []

    with pytest.raises(expected, match="during the stream"):
        async with client.stream("up/gpt-x", {"messages": MESSAGES}) as chunks:
            async for chunk in chunks:
                received.append(chunk)

    assert received == [chunk_json("partial")]
    assert stream.closed


@pytest.mark.parametrize(
    "failures",
    [
        [error_response(503)],
        [error_response(500), error_response(502)],
        [httpx.ConnectError],
        [error_response(429, headers={"Retry-After": "0"})],
    ],
    ids=["503", "500-502", "connect-error", "429"],
)
async def test_stream_errors_before_the_stream_are_retried(
    client: UpstreamClient, upstream: respx.Route, failures: list[Any]
) -> None:
    upstream.side_effect = [*failures, sse_response(sse_bytes(STREAM_CHUNKS))]

    assert await _collect(client) == STREAM_CHUNKS
    assert upstream.call_count == len(failures) + 1


@pytest.mark.parametrize("status", [400, 401, 402, 404])
async def test_stream_client_errors_before_the_stream_raise_without_retry(
    client: UpstreamClient, upstream: respx.Route, status: int
) -> None:
    upstream.side_effect = [error_response(status, "rejected"), sse_response(sse_bytes(STREAM_CHUNKS))]

    with pytest.raises(UpstreamStatusError, match="rejected") as raised:
        await _collect(client)

    assert raised.value.upstream_status == status
    assert upstream.call_count == 1


async def test_stream_gives_up_after_max_attempts(make_client: MakeClient, upstream: respx.Route) -> None:
    upstream.return_value = error_response(503)
    client = make_client(max_attempts=2)

    with pytest.raises(UpstreamStatusError):
        await _collect(client)

    assert upstream.call_count == 2


async def test_stream_closes_the_upstream_response_when_the_consumer_leaves_early(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    many = [chunk_json(f"word {n} ") for n in range(50)] + [chunk_json(finish_reason="stop")]
    stream = ByteStream([sse_bytes([chunk], done=False) for chunk in many] + [b"data: [DONE]\n\n"])
    upstream.return_value = sse_response(stream)

    async with client.stream("up/gpt-x", {"messages": MESSAGES}) as chunks:
        async for chunk in chunks:
            assert chunk == many[0]
            break
        assert not stream.closed

    assert stream.closed
    assert stream.sent < len(stream.parts)  # the rest of the body was never pulled


async def test_stream_closes_the_upstream_response_when_the_consumer_fails(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    stream = ByteStream([sse_bytes([chunk], done=False) for chunk in STREAM_CHUNKS])
    upstream.return_value = sse_response(stream)

    with pytest.raises(RuntimeError, match="consumer gave up"):
        async with client.stream("up/gpt-x", {"messages": MESSAGES}) as chunks:
            async for _chunk in chunks:
                raise RuntimeError("consumer gave up")

    assert stream.closed


# ======================================================================================================================
# forward(): pass-through
# ======================================================================================================================


async def _read(forwarded: Any) -> bytes:
    try:
        return b"".join([part async for part in forwarded.body])
    finally:
        await forwarded.aclose()


async def test_forward_relays_a_streamed_200_verbatim(client: UpstreamClient, upstream: respx.Route) -> None:
    data = sse_bytes(STREAM_CHUNKS)
    stream = ByteStream(split_at(data, 7, 100, 101, 250))
    upstream.return_value = httpx.Response(
        200,
        headers={"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req-42", "set-cookie": "a=b"},
        stream=stream,
    )

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES, "stream": True}, stream=True)

    assert forwarded.status_code == 200
    assert forwarded.headers == {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req-42"}
    assert await _read(forwarded) == data
    assert stream.closed


async def test_forward_relays_a_json_200_verbatim(client: UpstreamClient, upstream: respx.Route) -> None:
    raw = b'{"id":"chatcmpl-9",  "choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],\n "x":1}'
    upstream.return_value = httpx.Response(200, content=raw, headers={"content-type": "application/json"})

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert forwarded.status_code == 200
    assert forwarded.headers["content-type"] == "application/json"
    assert await _read(forwarded) == raw


@pytest.mark.parametrize("status", [400, 401, 402, 404, 422])
async def test_forward_relays_a_client_error_verbatim_without_retry(
    client: UpstreamClient, upstream: respx.Route, status: int
) -> None:
    raw = b'{"error":  {"message": "bad things", "type": "invalid_request_error", "param": "messages"}}\n'
    upstream.side_effect = [
        httpx.Response(status, content=raw, headers={"content-type": "application/json; charset=utf-8"}),
        completion_response(),
    ]

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert upstream.call_count == 1
    assert forwarded.status_code == status
    assert forwarded.headers["content-type"] == "application/json; charset=utf-8"
    assert await _read(forwarded) == raw


async def test_forward_relays_a_429_with_its_retry_after(make_client: MakeClient, upstream: respx.Route) -> None:
    raw = b'{"error": {"message": "rate limited"}}'
    upstream.return_value = httpx.Response(
        429, content=raw, headers={"content-type": "application/json", "retry-after": "120"}
    )
    client = make_client(max_retry_after_s=20)

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert upstream.call_count == 1
    assert forwarded.status_code == 429
    assert forwarded.headers["retry-after"] == "120"
    assert await _read(forwarded) == raw


async def test_forward_retries_5xx_then_relays_the_last_error(client: UpstreamClient, upstream: respx.Route) -> None:
    upstream.side_effect = [
        httpx.Response(502, content=b"bad gateway one", headers={"content-type": "text/plain"}),
        httpx.Response(503, content=b'{"error": "two"}', headers={"content-type": "application/json"}),
        httpx.Response(500, content=b'{"error": {"message": "three"}}', headers={"content-type": "application/json"}),
    ]

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert upstream.call_count == 3
    assert forwarded.status_code == 500
    assert forwarded.headers["content-type"] == "application/json"
    assert await _read(forwarded) == b'{"error": {"message": "three"}}'


async def test_forward_retries_5xx_then_relays_the_success(client: UpstreamClient, upstream: respx.Route) -> None:
    upstream.side_effect = [error_response(503), completion_response("finally")]

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert upstream.call_count == 2
    assert forwarded.status_code == 200
    assert orjson.loads(await _read(forwarded))["choices"][0]["message"]["content"] == "finally"


async def test_forward_raises_when_the_upstream_cannot_be_reached(
    client: UpstreamClient, upstream: respx.Route
) -> None:
    upstream.side_effect = httpx.ConnectError

    with pytest.raises(UpstreamConnectionError):
        await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)

    assert upstream.call_count == 3


@pytest.mark.parametrize(("strip_prefix", "sent_model"), [(True, "gpt-x"), (False, "up/gpt-x")])
async def test_forward_rewrites_only_the_model_and_the_name_of_a_bound_the_server_would_ignore(
    make_client: MakeClient, upstream: respx.Route, strip_prefix: bool, sent_model: str
) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(strip_prefix=strip_prefix, max_tokens_field="max_tokens"))
    body = {
        "model": "up/gpt-x",
        "messages": MESSAGES,
        "stream": False,
        "max_completion_tokens": 10,
        "reasoning": {"effort": "low"},
        "vendor_extension": {"keep": [1, None]},
    }

    forwarded = await client.forward("up/gpt-x", body, stream=False)
    await _read(forwarded)

    # A server that knows only max_tokens would ignore max_completion_tokens: the bound goes by its name there.
    expected = {key: value for key, value in body.items() if key != "max_completion_tokens"}
    assert sent_json(upstream.calls.last.request) == {**expected, "model": sent_model, "max_tokens": 10}


@pytest.mark.parametrize(
    ("api_key_env", "expected_authorization"),
    [("UP_KEY", [f"Bearer {UP_KEY}"]), (None, [])],
    ids=["provider-with-key", "provider-without-key"],
)
async def test_forward_sends_only_the_provider_key(
    make_client: MakeClient, upstream: respx.Route, api_key_env: str | None, expected_authorization: list[str]
) -> None:
    upstream.return_value = completion_response()
    client = make_client(make_registry(api_key_env=api_key_env))

    forwarded = await client.forward("up/gpt-x", {"messages": MESSAGES}, stream=False)
    await _read(forwarded)

    assert upstream.calls.last.request.headers.get_list("authorization") == expected_authorization


# ======================================================================================================================
# build_http_client(): the production client works end to end with the upstream client
# ======================================================================================================================


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_build_http_client_drives_the_upstream_client(transport: str) -> None:
    settings = HttpSettings(transport=transport, connect_timeout_s=3, read_timeout_s=42)
    http = build_http_client(settings)
    try:
        assert http.timeout == httpx.Timeout(connect=3, read=42, write=3, pool=3)
        assert http.trust_env is False
        # respx's "httpx" mocker patches the client's transport, whichever transport it is
        with respx.mock(using="httpx", assert_all_mocked=True) as router:
            route = router.post(COMPLETIONS_URL).mock(
                side_effect=[error_response(503), completion_response("via " + transport)]
            )
            client = UpstreamClient(http, make_registry(), RetrySettings(initial_backoff_s=0, max_backoff_s=0))
            completion = await client.complete("up/gpt-x", {"messages": MESSAGES})
        assert completion.content == f"via {transport}"
        assert route.call_count == 2
        assert sent_json(route.calls.last.request)["model"] == "gpt-x"
    finally:
        await http.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_forward_raises_an_error_status_whose_body_is_not_json(
    client: UpstreamClient, upstream: respx.Route, stream: bool
) -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1><script>track()</script></body></html>"
    upstream.return_value = httpx.Response(502, content=page, headers={"content-type": "text/html"})

    with pytest.raises(UpstreamStatusError) as raised:
        await client.forward("up/gpt-x", {"messages": MESSAGES, "stream": stream}, stream=stream)

    assert raised.value.upstream_status == 502 and raised.value.status_code == 502
    assert raised.value.message == (
        "up/gpt-x (up) returned HTTP 502 with a body that is not a JSON object (text/html): 502 Bad Gateway"
    )
