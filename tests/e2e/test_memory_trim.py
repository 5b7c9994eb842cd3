"""Bursts of requests, each trimmed from the heap once it is over, while the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script
from openfusion import memory

BODY = {"model": "fusion/trio", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def _burst(url: str, size: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> str:
            async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
                assert response.status_code == 200
                return "".join([line async for line in response.aiter_lines()])

        return await asyncio.gather(*(one() for _ in range(size)))


def test_bursts_are_trimmed_while_the_server_keeps_serving(
    upstream: FakeUpstream, start_server: Callable[..., AbstractContextManager[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    trim = memory.malloc_trim()
    if trim is None:
        pytest.skip("no malloc_trim in this C library")
    trims: list[int] = []

    def counted() -> None:
        trims.append(trim())  # the real one, on the server's loop

    monkeypatch.setattr(memory, "malloc_trim", lambda: counted)
    monkeypatch.setattr(memory, "CHECK_EVERY_S", 0.005)
    monkeypatch.setattr(memory, "MIN_BURST", 4)
    monkeypatch.setattr(memory, "SETTLE_CHECKS", 2)
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."], chunk_interval_s=0.05))
    with start_server() as url:
        for _ in range(3):
            before = len(trims)
            answers = asyncio.run(_burst(url, 16))
            assert all("Rayleigh " in text and "scattering." in text and "[DONE]" in text for text in answers)
            asyncio.run(asyncio.sleep(0.2))  # the burst is over: the next check trims
            assert len(trims) > before
    assert len(trims) <= 6  # a burst's requests end at their own moments: at a 5 ms pace, a burst may end twice
