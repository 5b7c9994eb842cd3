"""The result cache through the real server: hit, miss, bypass, refresh, tenants, expiry, what is never kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from access.waits import redis_ms, until
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.app import create_app
from openfusion.cache.stores import DatabaseStore, RedisStore
from openfusion.settings import Settings

from .conftest import ANALYSIS, TRIO

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef0"
KEYS = [{"name": "alice", "key_env": "ALICE_KEY", "metrics": True}, {"name": "bob", "key_env": "BOB_KEY"}]
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
FUSION_CALLS = 5  # three panelists, the judge, the synthesizer


@pytest.fixture
def cached_presets(presets_dir: Path) -> Path:
    """`fusion/cached`: the trio with a one-minute cache."""
    (presets_dir / "cached.toml").write_text(TRIO + "cache_ttl_s = 60\n")
    return presets_dir


@pytest.fixture
def start(
    upstream: FakeUpstream, make_settings: Callable[..., Settings], cached_presets: Path, tmp_path: Path
) -> Callable[..., AbstractContextManager[str]]:
    """Start openfusion (client keys alice and bob, activity in SQLite under tmp_path); yields its URL."""

    @contextmanager
    def run(environ: dict[str, str] | None = None, **overrides: Any) -> Iterator[str]:
        overrides.setdefault("activity", {"path": tmp_path / "activity.sqlite3", "flush_interval_s": 0.05})
        settings = make_settings(keys=KEYS, **overrides)
        env = {"FAKE_KEY": "sk-provider-secret", "ALICE_KEY": ALICE, "BOB_KEY": BOB, **(environ or {})}
        with serve_in_thread(create_app(settings, environ=env)) as url:
            yield url

    return run


def script_run(upstream: FakeUpstream, answer: str = "Rayleigh scattering.", cost: float = 0.125) -> None:
    for model in ("a", "b", "c"):
        upstream.script(model, Script(content=f"{model} says blue.", cost=cost))
    upstream.script("judge", Script(content=json.dumps(ANALYSIS), cost=cost))
    upstream.script("synth", Script(content=answer, cost=cost))


def ask(url: str, *, key: str = ALICE, cache: str | None = None, **kwargs: Any) -> tuple[str | None, Any]:
    """One chat completion through the SDK: (X-Openfusion-Cache header, parsed completion)."""
    kwargs.setdefault("model", "fusion/cached")
    kwargs.setdefault("messages", QUESTION)
    headers = {"X-Openfusion-Cache": cache} if cache else None
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, default_headers=headers) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(**kwargs)
        return raw.headers.get("x-openfusion-cache"), raw.parse()


def test_a_repeat_is_answered_from_the_cache_for_nothing(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    with start() as url:
        first_header, first = ask(url)
        assert first_header == "miss" and len(upstream.calls) == FUSION_CALLS
        second_header, second = ask(url)
        assert second_header == "hit"
        assert len(upstream.calls) == FUSION_CALLS  # no upstream call at all
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).text
    assert second.choices[0].message.content == first.choices[0].message.content == "Rayleigh scattering."
    assert second.id != first.id and second.model == first.model
    assert first.usage.model_extra["cost"] == pytest.approx(5 * 0.125)
    assert second.usage.model_extra["cost"] == 0
    assert second.usage.total_tokens == 0
    fusion = second.model_extra["fusion"]
    assert fusion["cached"] is True
    assert fusion["cache"]["generation_id"] == first.id
    assert fusion["cache"]["cost_saved"] == pytest.approx(5 * 0.125)
    assert [p["model"] for p in fusion["panel"]] == ["fake/a", "fake/b", "fake/c"]  # the original run's report
    assert "cached" not in first.model_extra["fusion"]
    assert 'openfusion_cache_lookups_total{result="miss"} 1.0' in metrics
    assert 'openfusion_cache_lookups_total{result="hit"} 1.0' in metrics
    assert "openfusion_cache_cost_saved_usd_total 0.625" in metrics
    stored = next(line for line in metrics.splitlines() if line.startswith("openfusion_cache_stored_bytes_total"))
    assert float(stored.split()[1]) > 100


def test_bypass_neither_reads_nor_keeps_and_refresh_runs_anew_and_keeps(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream, answer="First answer.")
    with start() as url:
        assert ask(url)[0] == "miss"
        header, bypassed = ask(url, cache="bypass")
        assert header == "bypass" and len(upstream.calls) == 2 * FUSION_CALLS
        assert "cached" not in bypassed.model_extra["fusion"]
        script_run(upstream, answer="Second answer.")
        header, refreshed = ask(url, cache="refresh")
        assert header == "miss" and len(upstream.calls) == 3 * FUSION_CALLS
        assert refreshed.choices[0].message.content == "Second answer."
        header, again = ask(url)
        assert header == "hit" and again.choices[0].message.content == "Second answer."
        assert len(upstream.calls) == 3 * FUSION_CALLS


def test_an_unknown_cache_header_is_a_clear_400(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    with start() as url, pytest.raises(openai.BadRequestError) as refused:
        ask(url, cache="sometimes")
    assert "X-Openfusion-Cache" in refused.value.message
    assert upstream.calls == []


def test_no_key_reads_another_keys_cached_answer(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    with start() as url:
        assert ask(url, key=ALICE)[0] == "miss"
        assert ask(url, key=BOB)[0] == "miss"
        assert len(upstream.calls) == 2 * FUSION_CALLS
        assert ask(url, key=BOB)[0] == "hit"
        assert ask(url, key=ALICE)[0] == "hit"
        assert len(upstream.calls) == 2 * FUSION_CALLS


def test_what_the_key_holds(upstream: FakeUpstream, start: Any) -> None:
    """Another question, sampling or plugin setting is another entry; the slug's spelling, ttl and stream are not."""
    script_run(upstream)
    with start() as url:
        assert ask(url)[0] == "miss"
        assert ask(url, messages=[{"role": "user", "content": "Why is the sea blue?"}])[0] == "miss"
        assert ask(url, temperature=0.3)[0] == "miss"
        assert ask(url, extra_body={"plugins": [{"id": "fusion", "expose": True}]})[0] == "miss"
        two = {"plugins": [{"id": "fusion", "analysis_models": ["fake/a", "fake/b"]}]}
        assert ask(url, extra_body=two)[0] == "miss"
        calls = len(upstream.calls)
        assert ask(url, model="fusion", extra_body={"plugins": [{"id": "fusion", "preset": "cached"}]})[0] == "hit"
        assert ask(url, extra_body={"plugins": [{"id": "fusion", "cache": {"ttl_s": 5}}]})[0] == "hit"
        assert ask(url, temperature=0.3)[0] == "hit"
        assert len(upstream.calls) == calls


def test_a_request_reads_the_store_once_before_it_runs(
    upstream: FakeUpstream, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit is one read; a miss two, never a third: its look (before it is admitted, so that a hit needs no room
    under a spend cap) and the one after it takes the run (an identical run may have been kept meanwhile)."""
    reads: list[str] = []
    read = DatabaseStore.get

    async def counted(store: DatabaseStore, key: str) -> bytes | None:
        reads.append(key)
        return await read(store, key)

    monkeypatch.setattr(DatabaseStore, "get", counted)
    script_run(upstream)
    with start() as url:
        assert ask(url)[0] == "miss"
        assert len(reads) == 2
        assert ask(url)[0] == "hit"
        assert len(reads) == 3


def test_a_hit_refused_admission_is_not_counted_as_one(upstream: FakeUpstream, start: Any) -> None:
    """The answer is looked up before the request is admitted: one then refused (its key's fusion slot taken) was
    served nothing, and the metrics count no hit and no cost saved for it."""
    script_run(upstream)
    for model in ("a", "b", "c"):  # the second question's panel takes a while
        upstream.script(model, Script(content=f"{model} says blue.", cost=0.125), Script(content="Slow.", delay_s=1.5))
    other = [{"role": "user", "content": "Why is the sea blue?"}]
    with start(limits={"max_concurrent_fusion": 1}) as url:
        assert ask(url)[0] == "miss"
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(ask, url, messages=other)
            wait_until(lambda: len(upstream.calls) > FUSION_CALLS)  # the slow run holds alice's one fusion slot
            with pytest.raises(openai.RateLimitError):
                ask(url)
            assert slow.result()[0] == "miss"
        assert ask(url)[0] == "hit"
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).text
    assert 'openfusion_cache_lookups_total{result="hit"} 1.0' in metrics
    assert "openfusion_cache_cost_saved_usd_total 0.625" in metrics


def test_a_hit_is_served_whatever_the_max_cost(upstream: FakeUpstream, start: Any) -> None:
    """`max_cost` bounds what a run may spend; a hit spends nothing, so it is not refused for a worst case it will not
    reach (nor for one no price can bound). A new question under the same `max_cost` still is."""
    script_run(upstream)
    tight = {"plugins": [{"id": "fusion", "max_cost": 0.0001}]}  # below any run's worst case (and unpriced here)
    with start() as url:
        assert ask(url)[0] == "miss"
        header, hit = ask(url, extra_body=tight)
        assert header == "hit" and hit.model_extra["fusion"]["cached"] is True
        with pytest.raises(openai.APIStatusError) as refused:
            ask(url, messages=[{"role": "user", "content": "Why is the sea blue?"}], extra_body=tight)
    assert refused.value.status_code == 402 and refused.value.code == "max_cost_exceeded"
    assert len(upstream.calls) == FUSION_CALLS


def test_caching_is_off_unless_a_preset_or_the_plugin_asks(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    with start() as url:
        header, _ = ask(url, model="fusion/trio")
        assert header is None
        assert ask(url, model="fusion/trio")[0] is None
        assert len(upstream.calls) == 2 * FUSION_CALLS
        plugin = {"plugins": [{"id": "fusion", "cache": {"ttl_s": 60}}]}
        assert ask(url, model="fusion/trio", extra_body=plugin)[0] == "miss"
        assert ask(url, model="fusion/trio", extra_body=plugin)[0] == "hit"
        off = {"plugins": [{"id": "fusion", "cache": {"ttl_s": 0}}]}
        assert ask(url, extra_body=off)[0] is None  # the plugin turns the preset's cache off
        assert len(upstream.calls) == 4 * FUSION_CALLS


def test_an_entry_expires_after_its_ttl(upstream: FakeUpstream, start: Any) -> None:
    """A TTL of 3 s: the repeat right after the first answer lands within it on a loaded machine (0.5 s may not)."""
    script_run(upstream)
    short = {"plugins": [{"id": "fusion", "cache": {"ttl_s": 3.0}}]}
    with start() as url:
        assert ask(url, extra_body=short)[0] == "miss"
        assert ask(url, extra_body=short)[0] == "hit"
        time.sleep(3.1)  # past the TTL, however long the asks took
        assert ask(url, extra_body=short)[0] == "miss"
        assert len(upstream.calls) == 2 * FUSION_CALLS


def test_errors_are_never_cached(upstream: FakeUpstream, start: Any) -> None:
    for model in ("a", "b", "c"):
        upstream.script(model, Script(status=500, error_message="down"))
    with start(retry={"max_attempts": 1}) as url:
        with pytest.raises(openai.APIStatusError):
            ask(url)
        script_run(upstream)
        assert ask(url)[0] == "miss"
        assert ask(url)[0] == "hit"


def test_degraded_runs_are_not_cached_unless_asked(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    upstream.script("b", Script(status=500, error_message="down"))  # every call to b fails
    with start(retry={"max_attempts": 1}) as url:
        header, degraded = ask(url)
        assert header == "miss" and degraded.model_extra["fusion"]["panel"][1]["status"] == "error"
        assert ask(url)[0] == "miss"  # run again: the degraded answer was not kept
        allowed = {"plugins": [{"id": "fusion", "cache": {"degraded": True}}]}
        assert ask(url, extra_body=allowed)[0] == "miss"
        assert ask(url, extra_body=allowed)[0] == "hit"
        # The same key, but a degraded answer goes only to a request that accepts one: this one runs, and keeps
        # its clean answer in its place.
        upstream.script("b", Script(content="b says blue."))
        assert ask(url)[0] == "miss"
        assert ask(url)[0] == "hit"
        assert ask(url, extra_body=allowed)[0] == "hit"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Script(content="Rayleigh scat", finish_reason="length"), "truncated"),
        (Script(content="Rayleigh scat", finish_reason="content_filter"), "filtered"),
        (Script(content=""), "empty"),
    ],
    ids=["length", "content_filter", "empty"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_answer_that_did_not_end_well_is_not_kept(
    upstream: FakeUpstream, start: Any, answer: Script, reason: str, stream: bool
) -> None:
    """A truncated, filtered or empty answer would be served for the whole ttl; a retry may well do better."""
    script_run(upstream)
    upstream.script("synth", answer)
    body = {"model": "fusion/cached", "messages": QUESTION}
    with start() as url:
        first = sse_payloads(url, body)[0] if stream else ask(url)[0]
        header, repeat = ask(url)
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).text
    assert (first, header) == ("miss", "miss")  # the repeat ran anew
    assert repeat.choices[0].message.content == (answer.content or "")  # it was that unclean answer again
    assert repeat.choices[0].finish_reason == answer.finish_reason
    assert len(upstream.calls_for("synth")) == 2
    assert f'openfusion_cache_skipped_total{{reason="{reason}"}} 2.0' in metrics


def sse_payloads(url: str, body: dict[str, Any], *, key: str = ALICE) -> tuple[str | None, list[Any]]:
    """A raw streamed request: (cache header, every data payload without its id and created)."""
    payloads: list[Any] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers,
                      timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                payload = json.loads(line[6:])
                payload.pop("id"), payload.pop("created")
                payloads.append(payload)
        return response.headers.get("x-openfusion-cache"), payloads


def test_a_streamed_hit_replays_the_same_events(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering ", "again."], cost=0.125))
    body = {"model": "fusion/cached", "messages": QUESTION}
    with start() as url:
        first_header, first = sse_payloads(url, body)
        second_header, second = sse_payloads(url, body)
        assert (first_header, second_header) == ("miss", "hit")
        assert len(upstream.calls) == FUSION_CALLS
        header, whole = ask(url)  # a non-streamed request takes the streamed run's answer, whole
    assert header == "hit" and whole.choices[0].message.content == "Rayleigh scattering again."
    *first_events, first_end = first
    *second_events, second_end = second
    assert second_events == first_events  # progress lines, then the same chunks, in the same order
    texts = [e["choices"][0]["delta"].get("content") for e in first_events if e["choices"]]
    assert [t for t in texts if t] == ["Rayleigh ", "scattering ", "again."]
    assert second_end["usage"]["cost"] == 0 and second_end["fusion"]["cached"] is True
    assert {k: v for k, v in second_end["fusion"].items() if k not in ("cached", "cache")} == first_end["fusion"]


def test_a_whole_answer_is_replayed_to_a_stream(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    with start() as url:
        assert ask(url)[0] == "miss"
        header, events = sse_payloads(url, {"model": "fusion/cached", "messages": QUESTION})
    assert header == "hit"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Rayleigh scattering."
    assert events[-1]["fusion"]["cached"] is True and events[-1]["choices"] == []


def written(url: str, *ids: str) -> None:
    """Wait until the server's activity store has these generations (its writer flushes every 50 ms)."""

    def found(generation_id: str) -> bool:
        answer = httpx.get(f"{url}/api/v1/generation", params={"id": generation_id},
                           headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)  # fmt: skip
        return answer.status_code == 200

    wait_until(lambda: all(found(generation_id) for generation_id in ids), timeout=60)


def stored(path: Path, *ids: str) -> list[Any]:
    """These generations as the SQLite activity store holds them (each with its calls)."""

    async def read() -> list[Any]:
        store = await SqliteStore.open(path)
        try:
            return [await store.get(generation_id) for generation_id in ids]
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_hit_is_recorded_as_one_with_the_cost_it_saved(upstream: FakeUpstream, start: Any, tmp_path: Path) -> None:
    script_run(upstream)
    with start() as url:
        _, first = ask(url)
        _, second = ask(url)
        written(url, first.id, second.id)
        generation = httpx.get(f"{url}/api/v1/generation", params={"id": second.id},
                               headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).json()["data"]  # fmt: skip
        listed = httpx.get(f"{url}/activity", headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).text
        page = httpx.get(f"{url}/activity/{second.id}", headers={"Authorization": f"Bearer {ALICE}"}, timeout=60).text
    # The pages mark the hit too: in the list beside its cost, and on its own page with the cost it saved.
    rows = {row.split('data-id="')[1].split('"')[0]: row for row in listed.split('<tr class="request"')[1:]}
    assert 'class="badge cache-hit"' in rows[second.id] and "cache-hit" not in rows[first.id]
    assert "Result cache" in page and "$0.625" in page, page
    assert generation["cache_hit"] is True and generation["total_cost"] == 0
    assert generation["cost_saved"] == pytest.approx(0.625)

    original, hit = stored(tmp_path / "activity.sqlite3", first.id, second.id)
    assert original.generation.cache_hit is False and original.generation.cost == pytest.approx(0.625)
    assert hit.generation.cache_hit is True
    assert hit.generation.cost == 0 and hit.generation.cost_saved == pytest.approx(0.625)
    assert hit.calls == () and hit.generation.key_name == "alice" and hit.generation.status == "ok"


def test_a_hit_keeps_the_runs_content_when_content_is_stored(
    upstream: FakeUpstream, start: Any, tmp_path: Path
) -> None:
    """The replayed run's analysis comes back from the cache as JSON and is stored as the original's was."""
    script_run(upstream)
    activity = {"path": tmp_path / "activity.sqlite3", "flush_interval_s": 0.05, "store_content": True}
    with start(activity=activity) as url:
        _, first = ask(url)
        header, second = ask(url)
        written(url, first.id, second.id)

    original, hit = stored(tmp_path / "activity.sqlite3", first.id, second.id)
    assert header == "hit" and hit.generation.cache_hit is True
    assert original.generation.analysis == ANALYSIS and hit.generation.analysis == ANALYSIS
    assert [p.content for p in hit.generation.panel_answers] == [f"{m} says blue." for m in "abc"]
    assert hit.generation.final_answer == original.generation.final_answer == "Rayleigh scattering."


async def ask_together(url: str, count: int, *, stream: bool = False) -> list[tuple[str | None, str]]:
    """`count` identical requests at once through the async SDK: (cache header, answer text) of each."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0) as sdk:

        async def one() -> tuple[str | None, str]:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="fusion/cached", messages=QUESTION, stream=stream
            )
            parsed = raw.parse()
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
            else:
                text = parsed.choices[0].message.content
            return raw.headers.get("x-openfusion-cache"), text

        return await asyncio.gather(*(one() for _ in range(count)))


def counted_reads(monkeypatch: pytest.MonkeyPatch, store: type[Any]) -> list[str]:
    """The keys `store` is read for, as each read returns (the request then goes on to the lease without a pause)."""
    reads: list[str] = []
    read = store.get

    async def counted(self: Any, key: str) -> bytes | None:
        value = await read(self, key)
        reads.append(key)
        return value

    monkeypatch.setattr(store, "get", counted)
    return reads


async def ask_while_held(
    url: str | list[str], count: int, *, gate: threading.Event, ready: Callable[[], bool], stream: bool = False
) -> list[tuple[str | None, str]]:
    """`count` identical requests at once to each server (`ask_together`); the run they share is held at `gate` until
    `ready()` holds, so that all of them have found it under way, however slowly a loaded machine gets them there."""
    urls = [url] if isinstance(url, str) else url
    asking = asyncio.gather(*(ask_together(one, count, stream=stream) for one in urls))
    try:
        await until(ready)
    finally:
        gate.set()
    return [result for results in await asking for result in results]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_identical_requests_at_once_fuse_once(
    upstream: FakeUpstream, start: Any, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted_reads(monkeypatch, DatabaseStore)
    script_run(upstream)
    gate = threading.Event()
    upstream.script("synth", Script(content="Rayleigh scattering.", gate=gate))
    # Every request has looked while the first run is held: each one's look before admission, the first's look after
    # its lease, and (a stream, its headers sent as `pending`) each waiting stream's look before it waits.
    looks = 4 + 1 + (3 if stream else 0)
    with start() as url:
        results = asyncio.run(
            ask_while_held(url, 4, gate=gate, stream=stream,
                           ready=lambda: len(upstream.calls_for("synth")) == 1 and len(reads) >= looks)
        )  # fmt: skip
    assert len(upstream.calls) == FUSION_CALLS  # one fusion for the four
    # A stream that waits sends its headers before the outcome is known: `pending` (it was a hit, by the count above).
    waited = "pending" if stream else "hit"
    assert sorted(header for header, _ in results) == sorted(["miss", waited, waited, waited])
    assert {text for _, text in results} == {"Rayleigh scattering."}


def test_a_waiting_request_runs_itself_when_the_first_fails(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    upstream.script("synth", Script(status=500, error_message="down", delay_s=0.5), Script(content="Second try."))
    with start(retry={"max_attempts": 1}) as url:

        async def both() -> list[Any]:
            return await asyncio.gather(ask_together(url, 1), ask_together(url, 1), return_exceptions=True)

        first, second = asyncio.run(both())
    outcomes = [first, second]
    failed = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(failed) == 1 and answered == [[("miss", "Second try.")]]
    assert len(upstream.calls_for("synth")) == 2


def test_a_wait_is_bounded(upstream: FakeUpstream, start: Any) -> None:
    """The first run is held until the second request has given up waiting for it (0.2 s) and answered from its own."""
    script_run(upstream)
    gate = threading.Event()
    upstream.script("synth", Script(content="Slow.", gate=gate), Script(content="Slow."))
    with start(cache={"wait_s": 0.2}) as url, ThreadPoolExecutor(max_workers=1) as pool:
        try:
            first = pool.submit(ask, url)
            wait_until(lambda: len(upstream.calls_for("synth")) == 1)  # the first run is under way, held
            second = ask(url)  # waits 0.2 s for it, then runs itself
            first_held = upstream.calls_for("synth")[0].held
        finally:
            gate.set()
        assert first.result()[0] == "miss"
    assert second[0] == "miss" and first_held  # it gave up waiting, and ran itself while the first was still held
    assert len(upstream.calls_for("synth")) == 2


def responses_events(url: str, *, stream: bool) -> tuple[str | None, Any]:
    """One Responses request: (cache header, the response, or the list of streamed event types and the last)."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0) as sdk:
        raw = sdk.responses.with_raw_response.create(model="fusion/cached", input="Why is the sky blue?", stream=stream)
        parsed = raw.parse()
        if not stream:
            return raw.headers.get("x-openfusion-cache"), parsed
        events = list(parsed)
        return raw.headers.get("x-openfusion-cache"), ([e.type for e in events], events[-1].response)


def test_the_responses_surface_is_served_from_the_cache(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."]))
    with start() as url:
        first_header, (first_types, first) = responses_events(url, stream=True)
        second_header, (second_types, second) = responses_events(url, stream=True)
        whole_header, whole = responses_events(url, stream=False)
    assert (first_header, second_header, whole_header) == ("miss", "hit", "hit")
    assert len(upstream.calls) == FUSION_CALLS
    assert second_types == first_types  # the same event sequence, panel progress included
    assert second.output_text == first.output_text == whole.output_text == "Rayleigh scattering."
    assert second.id != first.id
    assert second.model_extra["fusion"]["cached"] is True


def test_the_messages_surface_is_served_from_the_cache(upstream: FakeUpstream, start: Any) -> None:
    script_run(upstream)
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."]))

    def create(stream: bool) -> tuple[str | None, Any]:
        with anthropic.Anthropic(base_url=url, api_key=ALICE, max_retries=0) as sdk:
            raw = sdk.messages.with_raw_response.create(
                model="fusion/cached",
                max_tokens=500,
                messages=QUESTION,
                stream=stream,  # type: ignore[arg-type]
            )
            parsed = raw.parse()
            return raw.headers.get("x-openfusion-cache"), [e.type for e in parsed] if stream else parsed

    with start() as url:
        first_header, first_types = create(stream=True)
        second_header, second_types = create(stream=True)
        whole_header, whole = create(stream=False)
    assert (first_header, second_header, whole_header) == ("miss", "hit", "hit")
    assert len(upstream.calls) == FUSION_CALLS
    assert second_types == first_types
    assert whole.content[0].text == "Rayleigh scattering."
    assert whole.model_extra["fusion"]["cached"] is True


def test_a_messages_hit_reports_no_tokens(upstream: FakeUpstream, start: Any) -> None:
    """As a Chat Completions or Responses hit does: nothing was read or written, known (not estimated)."""
    script_run(upstream)
    with start() as url, anthropic.Anthropic(base_url=url, api_key=ALICE, max_retries=0) as sdk:
        miss = sdk.messages.create(model="fusion/cached", max_tokens=500, messages=QUESTION)  # type: ignore[arg-type]
        hit = sdk.messages.create(model="fusion/cached", max_tokens=500, messages=QUESTION)  # type: ignore[arg-type]
        events = list(sdk.messages.create(model="fusion/cached", max_tokens=500, messages=QUESTION, stream=True))  # type: ignore[arg-type]
    assert miss.usage.input_tokens > 0 and miss.usage.output_tokens > 0  # the run itself did read and write
    assert hit.model_extra["fusion"]["cached"] is True and len(upstream.calls) == FUSION_CALLS
    assert (hit.usage.input_tokens, hit.usage.output_tokens, hit.usage.model_extra["cost"]) == (0, 0, 0)
    started = next(e for e in events if e.type == "message_start")
    ended = next(e for e in events if e.type == "message_delta")
    assert (started.message.usage.input_tokens, started.message.usage.output_tokens) == (0, 0)
    assert (ended.usage.input_tokens, ended.usage.output_tokens) == (0, 0)


@contextmanager
def replicas(start: Any, count: int, environ: dict[str, str], **overrides: Any) -> Iterator[list[str]]:
    """`count` servers sharing what `environ` points them at (Redis, PostgreSQL); yields their URLs."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(start(environ=environ, **overrides)) for _ in range(count)]


def test_replicas_share_the_cache_through_redis(upstream: FakeUpstream, start: Any, redis_prefix: str) -> None:
    script_run(upstream)
    shared = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    with replicas(start, 2, shared, limits={"redis_prefix": redis_prefix}) as (one, two):
        assert ask(one)[0] == "miss"
        header, answer = ask(two)
        assert header == "hit" and answer.choices[0].message.content == "Rayleigh scattering."
        assert ask(two, key=BOB)[0] == "miss"  # still one cache per key
    assert len(upstream.calls) == 2 * FUSION_CALLS
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert len(list(client.scan_iter(f"{redis_prefix}:cache:*:entry:*"))) == 2
    finally:
        client.close()


def test_identical_requests_on_two_replicas_fuse_once(
    upstream: FakeUpstream, start: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted_reads(monkeypatch, RedisStore)
    script_run(upstream)
    gate = threading.Event()
    upstream.script("synth", Script(content="Rayleigh scattering.", gate=gate))
    shared = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    # A Redis call slower than the cache's timeout_s lets a request run without the lock (by design: at worst
    # twice); on a loaded machine two servers and their client in one process can stall that long.
    patient = {"timeout_s": 30.0}
    with replicas(start, 2, shared, limits={"redis_prefix": redis_prefix}, cache=patient) as urls:
        # Held until all four have looked (the first again after its lease): every one found the run under way.
        results = asyncio.run(
            ask_while_held(urls, 2, gate=gate, ready=lambda: len(upstream.calls_for("synth")) == 1 and len(reads) >= 5)
        )
    assert len(upstream.calls) == FUSION_CALLS
    assert sorted(header for header, _ in results) == ["hit", "hit", "hit", "miss"]


def test_a_run_longer_than_its_locks_first_expiry_is_not_made_again_on_another_replica(
    upstream: FakeUpstream, start: Any, redis_prefix: str
) -> None:
    """A run's lock in Redis used to expire `wait_s` after it was taken, the run still under way: an identical request
    on another replica then took it and made the run again. Held past that by the fake upstream, the run keeps its
    lock, and the request on the other replica waits for it and is answered from it."""
    script_run(upstream)
    gate = threading.Event()
    upstream.script("synth", Script(content="Rayleigh scattering.", gate=gate))
    shared = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    limits = {"redis_prefix": redis_prefix}
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    body = {"model": "fusion/cached", "messages": QUESTION, "stream": True}
    with (
        start(environ=shared, limits=limits, cache={"wait_s": 1.0, "timeout_s": 30.0}) as one,
        start(environ=shared, limits=limits, cache={"wait_s": 60.0, "timeout_s": 30.0}) as two,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        try:
            first = pool.submit(ask, one)
            wait_until(lambda: len(upstream.calls_for("synth")) == 1)  # the run is under way on replica one, held
            (lock,) = client.keys(f"{redis_prefix}:cache:*:lock:*")
            token = client.get(lock)
            taken_by = redis_ms(client)  # the lock was taken before this, by the Redis clock it expires by
            # Past the moment its first expiry (replica one's wait_s, 1 s) would have let it go.
            wait_until(lambda: redis_ms(client) > taken_by + 1000)
            with httpx.stream("POST", f"{two}/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as response:  # fmt: skip
                waited = response.headers.get("x-openfusion-cache")  # `pending`: it found the run under way
                lock_holder = client.get(lock)
                gate.set()
                lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        finally:
            gate.set()
            client.close()
        assert first.result()[0] == "miss"
    assert waited == "pending", waited  # it waited for the first run instead of taking the lock and running again
    assert token is not None and lock_holder == token  # still the first run's, past its first expiry
    assert json.loads(lines[-1][6:])["fusion"]["cached"] is True  # and was answered from it
    assert len(upstream.calls) == FUSION_CALLS


def test_replicas_share_the_cache_through_postgresql(upstream: FakeUpstream, start: Any, postgres_url: str) -> None:
    script_run(upstream)
    with replicas(start, 2, {"DATABASE_URL": postgres_url}) as (one, two):
        _, first = ask(one)
        header, second = ask(two)
        assert header == "hit" and second.choices[0].message.content == first.choices[0].message.content
        written(two, second.id)
    assert len(upstream.calls) == FUSION_CALLS

    async def read() -> Any:
        store = await PostgresStore.open(postgres_url)
        try:
            return await store.get(second.id), await store.cache_usage()
        finally:
            await store.close()

    hit, (entries, size) = asyncio.run(read())
    assert hit.generation.cache_hit is True and hit.generation.cost_saved == pytest.approx(0.625)
    assert entries == 1 and size > 100


LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
STEP = [
    *QUESTION,
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "scattering=rayleigh"},
]  # fmt: skip


def test_an_agent_step_after_a_hit_reuses_the_cached_turn(
    upstream: FakeUpstream, start: Any, redis_prefix: str
) -> None:
    """A hit on a replica that never ran the turn keeps it there too: the loop's next step fans out no more."""
    script_run(upstream)
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    upstream.script("synth", Script(tool_calls=[call]), Script(content="Rayleigh scattering, looked up."))
    shared = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    with replicas(start, 2, shared, limits={"redis_prefix": redis_prefix}) as (one, two):
        assert ask(one, tools=[LOOKUP])[0] == "miss"
        header, hit = ask(two, tools=[LOOKUP])
        assert header == "hit" and hit.choices[0].finish_reason == "tool_calls"
        _, step = ask(two, tools=[LOOKUP], messages=STEP)
    assert step.model_extra["fusion"]["panel_source"] == "cached"
    assert step.choices[0].message.content == "Rayleigh scattering, looked up."
    assert [len(upstream.calls_for(m)) for m in ("a", "b", "c", "judge", "synth")] == [1, 1, 1, 1, 2]
    assert "a says blue." in upstream.calls_for("synth")[1].body["messages"][0]["content"]  # the turn's answers


def test_an_unreadable_entry_is_a_miss_and_is_replaced(upstream: FakeUpstream, start: Any, tmp_path: Path) -> None:
    """A damaged row (a disk fault, another version's format) never fails the request: it runs, and its run
    takes the row's place."""
    script_run(upstream)
    with start() as url:
        assert ask(url)[0] == "miss"
        with sqlite3.connect(tmp_path / "activity.sqlite3", timeout=5) as db:
            assert db.execute("UPDATE result_cache SET entry = ?", (b"{not json",)).rowcount == 1
        header, answer = ask(url)
        assert header == "miss" and answer.choices[0].message.content == "Rayleigh scattering."
        assert ask(url)[0] == "hit"
    assert len(upstream.calls) == 2 * FUSION_CALLS
