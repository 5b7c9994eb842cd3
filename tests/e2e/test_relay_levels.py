"""How many async generator levels a relayed token crosses between the upstream's read and the client's socket.

Each level is resumed for every token and costs it ~1.2 k instructions (bench/OPTIMISATIONS.md, 36. and 40.). They are
counted here on a real server: the frames of async generators on the stack when aiohttp's read of the upstream's
answer returns (the whole chain, from the response's task down to the read, is resumed then), for a fusion's
synthesizer stream and for a streamed pass-through, with the provider key masked as always.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import aiohttp
import openai
import pytest

from fakes.upstream import FakeUpstream, Script

HI = [{"role": "user", "content": "Hi"}]
TOKENS = ["tok1", "tok2", "tok3"]


def _levels_at_each_read(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """For each upstream read that brings a token, the async generators on the stack, innermost first."""
    seen: list[list[str]] = []
    readany = aiohttp.StreamReader.readany

    async def counted(self: aiohttp.StreamReader) -> bytes:
        data = await readany(self)
        if b'"content":"tok' in data:
            frame = sys._getframe(1)
            levels = []
            while frame is not None:
                if frame.f_code.co_flags & inspect.CO_ASYNC_GENERATOR:
                    levels.append(frame.f_code.co_qualname)
                frame = frame.f_back
            seen.append(levels)
        return data

    monkeypatch.setattr(aiohttp.StreamReader, "readany", counted)
    return seen


def test_a_token_crosses_three_generator_levels_in_a_fusion_stream_and_two_in_a_pass_through(
    upstream: FakeUpstream, start_server: Callable[..., AbstractContextManager[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _levels_at_each_read(monkeypatch)
    upstream.script("synth", Script(chunks=TOKENS, chunk_interval_s=0.05))
    upstream.script("plain", Script(chunks=TOKENS, chunk_interval_s=0.05))
    with start_server() as url, openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        fused = list(sdk.chat.completions.create(model="fusion/trio", messages=HI, stream=True))
        fusion = list(seen)
        seen.clear()
        relayed = list(sdk.chat.completions.create(model="fake/plain", messages=HI, stream=True))
        passthrough = list(seen)

    for chunks in (fused, relayed):  # every token arrived, in order
        assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == TOKENS
    assert fusion and passthrough
    # The upstream's answer parsed; the run (its stages and its synthesis); the SSE rendering with the request's record.
    assert fusion[-1] == ["_chunks", "FusionRun.synthesize", "stream_fusion"]
    # The body read, masked and guarded; the relay with its end's checks and the request's record.
    assert passthrough[-1] == ["_relayed", "_relay"]
