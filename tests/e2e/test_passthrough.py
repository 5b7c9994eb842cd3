"""Pass-through: any non-fusion model goes to its provider, bytes and errors relayed as they come."""

from __future__ import annotations

import httpx
import openai

from fakes.upstream import FakeUpstream, Script


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


def test_an_unreachable_provider_is_a_clear_502(start_server: object, upstream: FakeUpstream) -> None:
    from openfusion.settings import ProviderConfig

    dead = ProviderConfig(name="dead", base_url="http://127.0.0.1:9/v1", models=["dead/*"])
    with start_server(providers=[dead], default_preset="trio") as url:  # type: ignore[operator]
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "dead/m", "messages": [{"role": "user", "content": "Hi"}]}
        )
    assert response.status_code in (502, 504)
    error = response.json()["error"]
    assert error["code"] in ("upstream_unreachable", "upstream_timeout") and "dead/m" in error["message"]
