"""Anthropic's error types on /v1/messages, read through the anthropic SDK: the same before the answer and mid-stream.

What went wrong keeps its Anthropic type whichever way the client hears it: as the status and body of a whole
answer, or as the `error` event of a stream that had begun (where the SDK raises with the stream's 200, and the
type in the body is all a client such as Claude Code has to decide on a retry). A provider's 429 is
`rate_limit_error`, its 503 or 529 `overloaded_error` (with Anthropic's 529), anything else `api_error`.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from fakes.upstream import FakeUpstream, Script

from .test_messages_protocol import QUESTION

KEY = "sk-any-client-key-0123"


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)


def streamed_failure(client: anthropic.Anthropic, model: str) -> anthropic.APIStatusError:
    """The error the SDK raises for a streamed request to `model` (its `error` event, after `message_start`)."""
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(model=model, max_tokens=10, messages=QUESTION) as stream,  # type: ignore[arg-type]
    ):
        stream.get_final_message()
    return raised.value


def whole_failure(client: anthropic.Anthropic, model: str) -> anthropic.APIStatusError:
    """The error the SDK raises for a request to `model` that does not stream."""
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model=model, max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]
    return raised.value


def kind(error: anthropic.APIStatusError) -> Any:
    body: Any = error.body
    assert body["type"] == "error", body
    return body["error"]["type"]


@pytest.mark.parametrize(
    ("said", "expected", "status", "raised"),
    [
        (429, "rate_limit_error", 429, anthropic.RateLimitError),
        (529, "overloaded_error", 529, anthropic.OverloadedError),
        (503, "overloaded_error", 529, anthropic.OverloadedError),
        (500, "api_error", 502, anthropic.InternalServerError),
    ],
)
def test_a_providers_error_has_its_anthropic_type_mid_stream_as_before_the_answer(
    upstream: FakeUpstream, server: str, said: int, expected: str, status: int, raised: type[Exception]
) -> None:
    """`midway` answers a few words, then its own error event (OpenRouter's mid-stream error, its `code` the HTTP
    status it stands for); `refused` answers that status outright, to the request that does not stream."""
    error = {"code": said, "message": f"Provider said {said}"}
    upstream.script("midway", Script(chunks=["Half ", "an ", "answer"], error_event=error))
    upstream.script("refused", Script(status=said, error_message=f"Provider said {said}"))

    with claude(server) as client:
        mid_stream, whole = streamed_failure(client, "fake/midway"), whole_failure(client, "fake/refused")

    assert mid_stream.status_code == 200  # the stream had begun: its type is all the client has
    assert kind(mid_stream) == expected and f"Provider said {said}" in mid_stream.message
    assert isinstance(whole, raised) and whole.status_code == status and kind(whole) == expected


def test_a_fusion_whose_panelists_were_all_rate_limited_is_a_rate_limit_error_streamed_or_not(
    upstream: FakeUpstream, server: str
) -> None:
    """Every panelist refused with 429 (`rate_limited`, a 502 on the other surfaces): Anthropic's 429 before the
    answer, and `rate_limit_error` in the stream, whose `message_start` went out before the panel answered."""
    for model in "abc":
        upstream.script(model, Script(status=429, error_message=f"{model} is rate-limited"))

    with claude(server) as client:
        streamed, whole = streamed_failure(client, "fusion/trio"), whole_failure(client, "fusion/trio")

    assert kind(streamed) == "rate_limit_error" and streamed.status_code == 200
    assert isinstance(whole, anthropic.RateLimitError) and kind(whole) == "rate_limit_error"
