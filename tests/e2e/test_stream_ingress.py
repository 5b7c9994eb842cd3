"""A fusion's panel is asked in the step that read its request, streamed or not: no event-loop pass between.

Each pass between a request's arrival and its panel calls delays every fusion's critical path (issue #18: a streamed
fusion's ingress was ~0.5 ms longer than a non-streamed one's). On a real server, the panel's calls are made (their
tasks created) before a callback scheduled when the request was parsed has run: in the same pass of the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest

import openfusion.api.chat
import openfusion.pipeline.panel
from fakes.upstream import FakeUpstream, Script

HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_the_panel_is_asked_in_the_loop_pass_that_read_the_request(
    upstream: FakeUpstream,
    start_server: Callable[..., AbstractContextManager[str]],
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    order: list[str] = []
    parse, ask = openfusion.api.chat.parse_chat_request, openfusion.pipeline.panel.ask_panelist

    def parsed(raw: bytes) -> Any:
        order.append("request parsed")
        asyncio.get_running_loop().call_soon(order.append, "the loop's next pass")
        return parse(raw)

    def asked(*args: Any, **kwargs: Any) -> Any:
        order.append("panel call made")
        return ask(*args, **kwargs)

    monkeypatch.setattr(openfusion.api.chat, "parse_chat_request", parsed)
    monkeypatch.setattr(openfusion.pipeline.panel, "ask_panelist", asked)
    upstream.script("synth", Script(chunks=["Blue", " sky"]))
    with start_server() as url, openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        if stream:
            chunks = sdk.chat.completions.create(model="fusion/trio", messages=HI, stream=True)
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = sdk.chat.completions.create(model="fusion/trio", messages=HI).choices[0].message.content

    assert answer == "Blue sky"
    assert [len(upstream.calls_for(m)) for m in ("a", "b", "c")] == [1, 1, 1]  # the panel was asked, once each
    assert order == ["request parsed", "panel call made", "panel call made", "panel call made", "the loop's next pass"]
