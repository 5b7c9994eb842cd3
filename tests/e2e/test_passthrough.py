"""Pass-through: any non-fusion model goes to its provider, bytes and errors relayed as they come."""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.conftest import ask_text, server_environ, trio_provider
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.api import completion_events
from openfusion.app import create_app
from openfusion.settings import ProviderConfig

HI = [{"role": "user", "content": "Hi"}]


def test_non_stream_pass_through(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(content="Direct answer.", response_model="plain-2025"))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="sk-client-key", max_retries=0) as sdk:
        response = sdk.chat.completions.create(
            model="fake/plain", messages=[{"role": "user", "content": "Hi"}], extra_body={"top_k": 5}
        )

    assert response.choices[0].message.content == "Direct answer."
    assert response.model == "plain-2025"
    call = upstream.calls_for("plain")[0]
    assert call.body["model"] == "plain"  # strip_prefix
    assert call.body["top_k"] == 5  # unknown fields are forwarded untouched
    assert call.headers["authorization"] == "Bearer sk-provider-secret"  # never the client's key
    assert "sk-client-key" not in str(call.headers)


def test_stream_pass_through_relays_every_chunk(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(chunks=["a", "b", "c"], chunk_interval_s=0.05))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        messages = [{"role": "user", "content": "Hi"}]
        chunks = list(sdk.chat.completions.create(model="fake/plain", messages=messages, stream=True))

    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["a", "b", "c"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.calls_for("plain")[0].stream is True


# OpenRouter's own fields, which OpenAI ("Unrecognized request argument supplied"), Groq or Mistral refuse with a 400.
OPENROUTER_ONLY: dict[str, Any] = {
    "provider": {"order": ["openai"], "allow_fallbacks": False}, "route": "fallback", "preset": "mine",
    "transforms": ["middle-out"], "usage": {"include": True}, "session_id": "conversation-1",
    "trace": {"trace_id": "t-1"}, "debug": {"echo_upstream_body": True}, "plugins": [{"id": "web", "max_results": 3}],
}  # fmt: skip
# Chat Completions fields of OpenAI's own, and one openfusion does not know: they reach any provider as sent.
OPENAIS_OWN: dict[str, Any] = {
    "user": "u-1", "metadata": {"team": "a"}, "service_tier": "auto", "prompt_cache_key": "k-1",
    "safety_identifier": "s-1", "reasoning_effort": "low", "top_k": 5,
}  # fmt: skip


@pytest.fixture
def router_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any]
) -> Iterator[str]:
    """The fake upstream as a plain OpenAI-compatible provider (`fake/*`) and as OpenRouter (`router/*`:
    `reasoning_style = "openrouter"` says it is OpenRouter)."""
    url = f"{fake_upstream[1]}/v1"
    providers = [
        ProviderConfig(name="fake", base_url=url, api_key_env="FAKE_KEY", models=["fake/*"], strip_prefix=True),
        ProviderConfig(name="router", base_url=url, api_key_env="FAKE_KEY", models=["router/*"], strip_prefix=True,
                       reasoning_style="openrouter"),
    ]  # fmt: skip
    server: AbstractContextManager[str] = start_server(providers=providers)
    with server as base:
        yield base


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("model", "openrouter"), [("fake/plain", False), ("router/plain", True)],
                         ids=["openai-compatible", "openrouter"])  # fmt: skip
def test_openrouters_fields_go_to_openrouter_alone(
    upstream: FakeUpstream, router_server: str, model: str, openrouter: bool, stream: bool
) -> None:
    upstream.script("plain", Script(content="Direct answer."))
    extra = {**OPENROUTER_ONLY, **OPENAIS_OWN}
    assert ask_text(router_server, model=model, messages=HI, extra=extra, stream=stream) == "Direct answer."

    sent = upstream.calls_for("plain")[0].body
    streamed = {"stream": True} if stream else {}
    assert sent == {"model": "plain", "messages": HI, **OPENAIS_OWN, **(OPENROUTER_ONLY if openrouter else {}),
                    **streamed}  # fmt: skip


def test_each_fallback_gets_openrouters_fields_only_if_it_is_openrouter(
    upstream: FakeUpstream, router_server: str
) -> None:
    """Decided per `models` candidate: a plain provider, then OpenRouter, then a plain one again."""
    upstream.script("first", Script(status=400, error_message="Unrecognized request argument supplied: provider"))
    upstream.script("second", Script(status=400, error_message="No endpoints found"))
    upstream.script("third", Script(content="From the last fallback."))
    fusion_off = {"id": "fusion", "enabled": False}  # openfusion's own plugin: no provider's business
    extra = {**OPENROUTER_ONLY, "plugins": [*OPENROUTER_ONLY["plugins"], fusion_off],
             "models": ["router/second", "fake/third"]}  # fmt: skip
    with openai.OpenAI(base_url=f"{router_server}/v1", api_key="k", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="fake/first", messages=HI, extra_body=extra)

    assert answer.choices[0].message.content == "From the last fallback."
    assert upstream.calls_for("first")[0].body == {"model": "first", "messages": HI}
    assert upstream.calls_for("second")[0].body == {"model": "second", "messages": HI, **OPENROUTER_ONLY}
    assert upstream.calls_for("third")[0].body == {"model": "third", "messages": HI}


# A Responses or Messages request for a chat provider, sent as a chat completion: the client's `plugins` come along.
TRANSLATED = {
    "responses": {"input": "Hi", "plugins": [{"id": "web"}]},
    "messages": {"max_tokens": 100, "messages": HI, "plugins": [{"id": "web"}]},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("surface", ["responses", "messages"])
def test_a_translated_request_sends_openrouters_plugins_to_openrouter_alone(
    upstream: FakeUpstream, router_server: str, surface: str, stream: bool
) -> None:
    upstream.script("plain", Script(content="Answered"))
    upstream.script("routed", Script(content="Answered"))
    for model in ("fake/plain", "router/routed"):
        body = {**TRANSLATED[surface], "model": model, "stream": stream}
        response = httpx.post(f"{router_server}/v1/{surface}", json=body, headers={"anthropic-version": "2023-06-01"})
        assert response.status_code == 200 and "Answered" in response.text

    assert "plugins" not in upstream.calls_for("plain")[0].body  # OpenAI, Groq, Mistral: a 400 for it
    assert upstream.calls_for("routed")[0].body["plugins"] == [{"id": "web"}]  # OpenRouter's web search, as sent


def test_upstream_errors_are_relayed_verbatim(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(status=400, error_message="context length exceeded"))

    direct = httpx.post(
        f"{server}/v1/chat/completions", json={"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}
    )
    streamed = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "fake/plain", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    )

    for response in (direct, streamed):
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "context length exceeded"
    assert len(upstream.calls_for("plain")) == 2  # a 400 is not retried


def test_server_errors_are_retried_then_relayed(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(status=503, error_message="overloaded"), Script(content="Recovered."))

    response = httpx.post(
        f"{server}/v1/chat/completions", json={"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Recovered."
    assert len(upstream.calls_for("plain")) == 2


def test_a_stream_cut_by_the_upstream_ends_with_an_error_chunk(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(chunks=["a", "b", "c", "d"], cut_stream_after=2))

    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json={"model": "fake/plain", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        text = r.read().decode()

    assert '"finish_reason":"error"' in text
    assert text.rstrip().endswith("data: [DONE]")


def test_an_unreachable_provider_is_a_clear_502(
    start_server: object, upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str]
) -> None:
    dead = ProviderConfig(name="dead", base_url="http://127.0.0.1:9/v1", models=["dead/*"])
    providers = [dead, trio_provider(fake_upstream[1])]
    with start_server(providers=providers, default_preset="trio") as url:  # type: ignore[operator]
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "dead/m", "messages": [{"role": "user", "content": "Hi"}]}
        )
    assert response.status_code in (502, 504)
    error = response.json()["error"]
    assert error["code"] in ("upstream_unreachable", "upstream_timeout") and "dead/m" in error["message"]


# ---- streams that end without finishing: the client is told, and activity records the failure ---------------


def _recorded(url: str, generation_id: str) -> dict[str, Any]:
    """The generation as the activity API returns it, once the writer has stored it."""
    found: dict[str, Any] = {}

    def stored() -> bool:
        response = httpx.get(f"{url}/api/v1/generation", params={"id": generation_id})
        found.update(response.json().get("data") or {} if response.status_code == 200 else {})
        return bool(found)

    wait_until(stored, timeout=10)
    return found


def _stream(url: str, model: str) -> tuple[str, str]:
    """A streamed pass-through request read to its end; (body text, generation id)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200
        return response.read().decode(), response.headers["x-generation-id"]


def _payloads(text: str) -> list[Any]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(content="one two three", end_stream_after=2), "upstream_invalid_response"),
        (Script(raw_body=b""), "upstream_invalid_response"),
        (Script(content="one two", error_event={"message": "provider overloaded", "code": 502}), "upstream_error"),
    ],
    ids=["ends-early", "empty", "error-event"],
)
def test_a_stream_that_ends_without_finishing_ends_with_an_error_chunk(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, script: Script, code: str
) -> None:
    upstream.script("plain", script)

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        text, generation_id = _stream(url, "fake/plain")
        record = _recorded(url, generation_id)

    call = upstream.calls_for("plain")[0]
    assert call.finished is not None and not call.disconnected  # the upstream ended cleanly …
    assert call.ended_early or script.raw_body == b""  # … before its answer was complete
    payloads = _payloads(text)
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    last = payloads[-2]
    assert last["choices"][0]["finish_reason"] == "error" and last["error"]["code"] == code
    assert record["status"] == "error" and record["failure_reason"] == code
    assert record["calls"][0]["status"] == "error"
    if script.error_event:
        assert "provider overloaded" in last["error"]["message"]


def test_a_whole_stream_is_relayed_untouched_and_recorded_ok(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path
) -> None:
    upstream.script("plain", Script(content="one two"))

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        text, generation_id = _stream(url, "fake/plain")
        record = _recorded(url, generation_id)

    assert '"error"' not in text and text.endswith("data: [DONE]\n\n")
    assert record["status"] == "ok"


def test_an_empty_answer_is_a_502(upstream: FakeUpstream, start_server: Any, tmp_path: Path) -> None:
    upstream.script("plain", Script(raw_body=b""))

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "fake/plain", "messages": HI}, timeout=20)
        wait_until(lambda: bool(httpx.get(f"{url}/v1/activity").json()["data"]), timeout=10)
        record = httpx.get(f"{url}/v1/activity").json()["data"][0]  # an error response names no generation

    assert upstream.calls_for("plain")[0].finished is not None  # the upstream answered: 200, no body
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_invalid_response"
    assert record["status"] == "error" and record["failure_reason"] == "upstream_invalid_response"


@pytest.mark.parametrize("body", [b'{"id": "x", "choices": [ {garbage', b"<html>oops</html>", b'["not", "an object"]'])
def test_an_answer_no_client_could_parse_is_a_502_and_the_next_fallback_answers(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, body: bytes
) -> None:
    """A 200 whose body is not a JSON object is no answer: it was relayed as a success and recorded `ok`, and the
    `models` fallbacks were never tried."""
    upstream.script("broken", Script(raw_body=body))
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        alone = httpx.post(f"{url}/v1/chat/completions", json={"model": "fake/broken", "messages": HI}, timeout=20)
        wait_until(lambda: bool(httpx.get(f"{url}/v1/activity").json()["data"]), timeout=10)
        record = httpx.get(f"{url}/v1/activity").json()["data"][0]
        fallen_back = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "fake/broken", "models": ["fake/plain"], "messages": HI}
        )

    assert alone.status_code == 502 and alone.json()["error"]["code"] == "upstream_invalid_response", alone.text
    # What it was, as for an error page: the status, the content type and the first words, without markup.
    message = alone.json()["error"]["message"]
    assert "HTTP 200 with a body that is not a JSON object (application/json)" in message, message
    excerpt = {b"<": "oops", b"[": '["not", "an object"]', b"{": '{"id": "x", "choices": [ {garbage'}[body[:1]]
    assert message.endswith(f": {excerpt}") and "<" not in message, message
    assert record["status"] == "error" and record["failure_reason"] == "upstream_invalid_response"
    assert fallen_back.status_code == 200 and fallen_back.json()["choices"][0]["message"]["content"]


def test_a_stream_client_that_leaves_closes_the_upstream_stream(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(chunks=[f"t{i} " for i in range(20)], chunk_interval_s=0.5))
    body = {"model": "fake/plain", "stream": True, "messages": HI}

    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()  # keep the iterator: a collected one closes the response
        assert any("t0" in line for line in lines)

    # The client went away: the relay stops and closes the upstream stream, long before its last chunk (~10 s).
    wait_until(lambda: upstream.calls_for("plain")[0].disconnected, timeout=3.0)


# ---- an error status whose body is not JSON (a proxy's HTML error page) ------------------------------------

PROXY_PAGE = (
    b"<html><head><title>500 Internal Server Error</title><style>h1 { color: red }</style></head>"
    b"<body><h1>500 Internal Server Error</h1><hr><center>nginx</center>"
    b"<!-- upstream key sk-provider-secret --></body></html>"
)


def proxy_page(status: int = 500) -> Script:
    return Script(status=status, raw_body=PROXY_PAGE, raw_media_type="text/html")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_non_json_error_page_is_an_openai_error(upstream: FakeUpstream, server: str, stream: bool) -> None:
    """An HTML 500 from a proxy in front of the provider was relayed as is, status and HTML, to a client that
    expects an OpenAI error object."""
    upstream.script("plain", proxy_page())

    response = httpx.post(
        f"{server}/v1/chat/completions", json={"model": "fake/plain", "messages": HI, "stream": stream}, timeout=20
    )

    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and error["type"] == "upstream_error"
    assert error["metadata"]["upstream_status"] == 500 and error["metadata"]["model"] == "fake/plain"
    message = error["message"]
    assert "fake/plain" in message and "HTTP 500" in message and "not a JSON object" in message, message
    assert "500 Internal Server Error" in message  # a short excerpt of what the page says …
    assert "<" not in message and "color" not in message and len(message) < 400  # … without its markup
    assert "sk-provider-secret" not in response.text


def test_the_sdk_reads_a_non_json_error_page_as_an_api_error(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", proxy_page())
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as raised:
                sdk.chat.completions.create(model="fake/plain", messages=HI, stream=stream)  # type: ignore[arg-type,call-overload]
            assert raised.value.status_code == 502
            assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "upstream_error"


def test_a_non_json_refusal_the_client_can_act_on_keeps_its_status(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", proxy_page(413))

    response = httpx.post(f"{server}/v1/chat/completions", json={"model": "fake/plain", "messages": HI}, timeout=20)

    assert response.status_code == 413, response.text
    assert response.json()["error"]["metadata"]["upstream_status"] == 413


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_non_json_error_page_moves_on_to_the_next_fallback(upstream: FakeUpstream, server: str, stream: bool) -> None:
    upstream.script("broken", proxy_page())
    upstream.script("plain", Script(content="From the fallback."))
    body = {"model": "fake/broken", "models": ["fake/broken", "fake/plain"], "messages": HI, "stream": stream}

    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=20)

    assert response.status_code == 200, response.text
    assert "From" in response.text and "fallback" in response.text
    assert upstream.calls_for("broken") and upstream.calls_for("plain")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_other_surfaces_tell_a_non_json_error_page_the_same_way(upstream: FakeUpstream, server: str, path: str) -> None:
    upstream.script("plain", proxy_page())
    body = {"model": "fake/plain", "max_tokens": 16, "messages": HI} if "messages" in path else {
        "model": "fake/plain", "input": "Hi"}  # fmt: skip

    response = httpx.post(server + path, json=body, timeout=20)

    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "HTTP 500" in message and "not a JSON object" in message and "<" not in message, message


class LeavesAsTheStreamStarts:
    """An ASGI wrapper whose client is gone the instant the response begins: the first time the app listens for the
    client after the request's work is done (the streamed response's own listener), it hears `http.disconnect`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.left = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        listening = 0

        async def leaving() -> Any:
            nonlocal listening
            if listening:  # the request's body was read: this is the app listening for the client
                listening += 1
                if listening > 2:  # the first is the watcher of the request's work; the next, the response's
                    self.left = True
                    return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                listening = 1
            return message

        await self.app(scope, leaving, send)


def test_a_stream_client_that_leaves_as_the_stream_starts_closes_the_upstream_stream(
    upstream: FakeUpstream, make_settings: Any
) -> None:
    """A client gone in the instant before its stream's first byte: the relay never began, so nothing closed the
    upstream response; its connection stayed open (the provider generating on) until the garbage collector ran."""
    upstream.script("plain", Script(chunks=[f"t{i} " for i in range(40)], chunk_interval_s=0.25))
    app = LeavesAsTheStreamStarts(create_app(make_settings(), environ=server_environ()))
    body = {"model": "fake/plain", "stream": True, "messages": HI}
    gc.disable()  # what only a collection would close stays open: the test sees it
    try:
        with serve_in_thread(app) as url, httpx.Client(timeout=10) as client:
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"{url}/v1/chat/completions", json=body)
            assert app.left and upstream.calls_for("plain")  # the stream was asked for, and its client left first
            # The upstream stream runs ~10 s; its connection closes as soon as openfusion lets go of it.
            wait_until(lambda: upstream.calls_for("plain")[0].disconnected, timeout=4)
    finally:
        gc.enable()


def test_a_stream_answered_with_an_html_page_is_an_openai_error(upstream: FakeUpstream, server: str) -> None:
    """A 200 to a streamed request whose body is a proxy's HTML page was relayed to the client as is: the SDK read
    no event from it and the stream ended empty, as if the model had said nothing."""
    upstream.script("plain", Script(raw_body=PROXY_PAGE, raw_media_type="text/html"))
    sdk = openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0)
    with sdk, pytest.raises(openai.APIStatusError) as raised:
        list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))  # type: ignore[arg-type]

    assert upstream.calls_for("plain")[0].fault == "raw body"  # the page was sent, with a 200
    assert raised.value.status_code == 502
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_invalid_response"
    assert error["metadata"]["upstream_status"] == 200 and error["metadata"]["model"] == "fake/plain"
    message = error["message"]
    assert "HTTP 200" in message and "not an event stream (text/html)" in message, message
    assert "500 Internal Server Error" in message and "<" not in message and "color" not in message
    assert "sk-provider-secret" not in str(error)


@pytest.mark.parametrize("media_type", ["text/plain", "application/octet-stream", "TEXT/EVENT-STREAM; charset=utf-8"])
def test_a_stream_labelled_otherwise_is_still_relayed(upstream: FakeUpstream, server: str, media_type: str) -> None:
    events = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"plain","choices":[{"index":0,'
    events += b'"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    upstream.script("plain", Script(raw_body=b"\n" + events, raw_media_type=media_type))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        chunks = list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))  # type: ignore[arg-type]

    assert [chunk.choices[0].delta.content for chunk in chunks] == ["Hi"]


def test_a_stream_answered_with_an_html_page_moves_on_to_the_next_fallback(upstream: FakeUpstream, server: str) -> None:
    upstream.script("broken", Script(raw_body=PROXY_PAGE, raw_media_type="text/html"))
    upstream.script("plain", Script(chunks=["From the ", "fallback."]))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="fake/broken",
                messages=HI,  # type: ignore[arg-type]
                stream=True,
                extra_body={"models": ["fake/broken", "fake/plain"]},
            )
        )

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "From the fallback."
    assert upstream.calls_for("broken") and upstream.calls_for("plain")


# ---- a provider that ignores `stream: true` and answers with one completion ------------------------------------
def _whole(message: dict[str, Any], finish_reason: str = "stop") -> bytes:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "plain", "choices": [choice]}
    return json.dumps({**completion, "usage": usage}).encode()


def test_a_stream_answered_with_one_completion_reaches_the_client_as_a_stream(
    upstream: FakeUpstream, server: str
) -> None:
    """Its JSON was relayed into the event stream as it was: the SDK found no event in it and gave an empty answer."""
    message = {"role": "assistant", "content": "Whole answer.", "refusal": None}
    upstream.script("plain", Script(raw_body=_whole(message), raw_media_type="application/json"))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="fake/plain",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)

    told = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in told) == "Whole answer."
    assert told[-1].choices[0].finish_reason == "stop" and told[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}


def test_tool_calls_answered_in_one_completion_arrive_numbered(upstream: FakeUpstream, server: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "sky"}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    upstream.script("plain", Script(raw_body=_whole(message, "tool_calls"), raw_media_type="application/json"))
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        chunks = list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))  # type: ignore[arg-type]

    deltas = [chunk.choices[0] for chunk in chunks if chunk.choices]
    calls = [tool for choice in deltas for tool in choice.delta.tool_calls or []]
    assert [(c.index, c.id, c.function.name, c.function.arguments) for c in calls if c.function] == [
        (0, "call_1", "lookup", '{"q": "sky"}')
    ]
    assert deltas[-1].finish_reason == "tool_calls"


def test_an_error_object_answered_to_a_stream_is_an_error_the_sdk_raises(upstream: FakeUpstream, server: str) -> None:
    error = json.dumps({"error": {"message": "the model is overloaded", "code": 503}}).encode()
    upstream.script("plain", Script(raw_body=error, raw_media_type="application/json"))
    with (
        openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk,
        pytest.raises(openai.APIError) as raised,
    ):
        list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))  # type: ignore[arg-type]

    assert "the model is overloaded" in str(raised.value.message)


def test_a_whole_answer_to_a_stream_is_read_only_up_to_its_bound(
    upstream: FakeUpstream, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(completion_events, "MAX_WHOLE_BYTES", 64)
    message = {"role": "assistant", "content": "An answer longer than the bound allows. " * 4}
    upstream.script("plain", Script(raw_body=_whole(message), raw_media_type="application/json"))
    with (
        openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk,
        pytest.raises(openai.APIError) as raised,
    ):
        list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))  # type: ignore[arg-type]

    assert "whole answer over 64 bytes" in str(raised.value.message)
