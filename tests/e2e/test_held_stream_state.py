"""What a fusion stream held open inside synthesis keeps: not the request it was asked with, nor the judge's analysis.

A stream can stay open for minutes while its synthesizer writes, and a burst of them is what sets the server's memory.
Once the synthesizer's request is out, nothing left to do reads the client's conversation (a coding agent's runs to
hundreds of KB): the run, its worst-case estimate and the response's closing task let go of it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script

from .conftest import ANALYSIS

# Objects that lead everywhere without belonging to one request: module state, and the app's shared state.
_SHARED = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
_SHARED_NAMES = {"AppState", "HotRouteApp", "_UnixSelectorEventLoop", "Loop"}
MARKER = "Which ocean is the deepest? (held-stream marker 7f3a9c)"
ASKED = [{"role": "user", "content": MARKER}]
BODIES = [
    ("/v1/chat/completions", {"model": "fusion/trio", "messages": ASKED, "stream": True}),
    ("/v1/responses", {"model": "fusion/trio", "input": MARKER, "stream": True, "store": False}),
    ("/v1/messages", {"model": "fusion/trio", "max_tokens": 100, "messages": ASKED, "stream": True}),
]


def _reachable_strings(root: Any, shared_names: frozenset[str] = frozenset()) -> Iterator[str]:
    seen, todo = {id(root)}, [root]
    while todo:
        obj = todo.pop()
        if isinstance(obj, str):
            yield obj
            continue
        for ref in gc.get_referents(obj):
            name = type(ref).__name__
            if id(ref) in seen or isinstance(ref, _SHARED) or name in _SHARED_NAMES or name in shared_names:
                continue
            seen.add(id(ref))
            todo.append(ref)


def _held_inside_synthesis(
    start_probed_server: Any, path: str, body: dict[str, Any], needle: str, shared: frozenset[str] = frozenset()
) -> tuple[list[str], bytes]:
    """The strings holding `needle` that any task of the server's loop reaches (past objects of the `shared` types)
    while the stream of `body` is inside synthesis, and the rest of that stream, read once they are counted."""
    with start_probed_server() as (server, probe):
        headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
        with httpx.stream("POST", f"{server}{path}", json=body, headers=headers, timeout=30) as response:
            read, chunks = b"", response.iter_bytes()
            for chunk in chunks:
                read += chunk
                if b"w3 " in read:  # inside synthesis, and past its settling (the first token came after it)
                    break

            async def held() -> list[str]:
                # Every task of the server's loop: the response's, uvicorn's for its connection, the app's own.
                # (`needle` itself is reached too: through this coroutine's closure)
                return [
                    s
                    for task in asyncio.all_tasks()
                    for s in _reachable_strings(task, shared)
                    if needle in s and s is not needle
                ]

            found = asyncio.run_coroutine_threadsafe(held(), probe.loop).result(timeout=20)
            return found, b"".join(chunks)


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[p.rsplit("/", 1)[-1] for p, _ in BODIES])
def test_a_stream_inside_synthesis_holds_no_part_of_its_request(
    upstream: FakeUpstream, start_probed_server: Any, path: str, body: dict[str, Any]
) -> None:
    upstream.script("synth", Script(chunks=[f"w{i} " for i in range(200)], chunk_interval_s=0.05))
    held, rest = _held_inside_synthesis(start_probed_server, path, body, "held-stream marker")
    assert held == []
    assert b"w199 " in rest  # the stream ends whole
    (call,) = upstream.calls_for("synth")
    assert MARKER in str(call.body["messages"])  # the synthesizer did read the conversation


JUDGED = "Rayleigh scattering (judge marker 5d81e2)"
# Not the Responses surface: its `openrouter:fusion` output item carries the analysis, and `response.completed`
# echoes every output item at the stream's end.
UNJUDGED = [(path, body) for path, body in BODIES if path != "/v1/responses"]


@pytest.mark.parametrize(("path", "body"), UNJUDGED, ids=[p.rsplit("/", 1)[-1] for p, _ in UNJUDGED])
def test_a_stream_inside_synthesis_holds_no_part_of_its_analysis(
    upstream: FakeUpstream, start_probed_server: Any, path: str, body: dict[str, Any]
) -> None:
    upstream.script("judge", Script(content=json.dumps({**ANALYSIS, "consensus": [JUDGED]})))
    upstream.script("synth", Script(chunks=[f"w{i} " for i in range(200)], chunk_interval_s=0.05))
    # The agent loop's cache of turns (shared by the app, bounded, and read by a later step) is meant to keep the
    # analysis; the stream itself is not.
    held, rest = _held_inside_synthesis(start_probed_server, path, body, "judge marker", frozenset({"TurnCache"}))
    assert held == []
    assert b"w199 " in rest  # the stream ends whole
    (call,) = upstream.calls_for("synth")
    assert JUDGED in str(call.body["messages"])  # the synthesizer did read the analysis
