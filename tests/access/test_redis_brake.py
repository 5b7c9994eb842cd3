"""The brake on wrong keys in Redis: bounded and expiring there, and the process's own while Redis is away.

Against the real server under uvicorn and a real Redis (a private one to stop and start again). Clients connect from
other loopback addresses (127.0.0.2, …), which Linux routes to the same interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

import openfusion.access.redis_brake
import openfusion.access.redis_limiter
from fakes.upstream import FakeUpstream, wait_until
from openfusion.access.brake import AuthBrake
from openfusion.access.redis_brake import SharedBrake

from .conftest import REDIS_URL, bearer
from .private_redis import PrivateRedis

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-redis-brake-right-key-0123"
PREFIX = "openfusion-brake"


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


def ok(response: httpx.Response) -> bool:
    assert response.status_code == 200, response.text
    return True


def test_the_brake_counts_in_the_process_while_redis_is_away_and_in_redis_once_it_answers(
    upstream: FakeUpstream,
    serve: Serve,
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stopped: nobody is refused for it, and a guesser is still braked (by this process); Redis back: counted
    there again."""
    monkeypatch.setattr(openfusion.access.redis_brake, "RETRY_S", 0.3)
    # A stopped Redis refuses at once; a slow answer from a running one is not what this test is about (a loaded
    # machine can take longer than the brake's 0.5 s, and the brake would take Redis for away while it runs).
    monkeypatch.setattr(openfusion.access.redis_brake, "ANSWER_S", 30.0)
    monkeypatch.setattr(openfusion.access.redis_limiter, "_TIMEOUT_S", 30.0)
    access = {"api_keys": KEY, "redis_url": private_redis.url, "limits": {"redis_prefix": PREFIX, "auth_failures": 3}}
    with (
        caplog.at_level(logging.INFO, logger="openfusion.access"),
        serve(access) as (url, _),
        client_from("127.0.0.2") as guesser,
        client_from("127.0.0.3") as other,
        client_from("127.0.0.4") as later,
    ):
        assert guesser.get(f"{url}/v1/models", headers=bearer("sk-guess-while-up-000")).status_code == 401
        private_redis.stop()
        assert other.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200  # open, not refusing everyone
        # The process counted the wrong key before too: two more make three.
        wrong = [guesser.get(f"{url}/v1/models", headers=bearer(f"sk-guess-{n:016d}")).status_code for n in range(2)]
        braked = guesser.get(f"{url}/v1/models", headers=bearer(KEY))
        assert other.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200

        private_redis.start()  # empty
        # Asked again once RETRY_S has passed since it last failed to answer: a right key's request says so.
        models = f"{url}/v1/models"
        wait_until(lambda: ok(other.get(models, headers=bearer(KEY))) and "Redis answers again" in caplog.text)
        assert later.get(f"{url}/v1/models", headers=bearer("sk-guess-once-redis-is-back")).status_code == 401
        with private_redis.client() as client:
            counted = client.zcard(f"{{{PREFIX}}}:brake:127.0.0.4")
        assert guesser.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 429  # the local block holds

    assert wrong == [401, 401]
    assert braked.status_code == 429 and braked.json()["error"]["code"] == "auth_failures"
    assert counted == 1
    assert caplog.text.count("counting wrong keys in this process") == 1  # said once per outage, without the URL
    assert private_redis.url not in caplog.text and KEY not in caplog.text


def test_a_redis_that_does_not_answer_holds_a_request_with_a_key_briefly_then_not_at_all(
    upstream: FakeUpstream, serve: Serve, private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request with a key asks Redis whether its address is braked: paused, Redis held each one for the client's
    socket timeout until the first failure; now the first waits `ANSWER_S` and the next ones do not ask Redis at all."""
    # A socket timeout far past ANSWER_S: a request held by it stands apart from one cut at ANSWER_S, however slowly
    # a loaded machine serves the requests around the wait.
    monkeypatch.setattr(openfusion.access.redis_limiter, "_TIMEOUT_S", 60.0)
    # Every request asks Redis (no "not braked" held from the one before), and Redis, once it did not answer, is not
    # asked again within the test, however long a loaded machine takes over the requests after it.
    monkeypatch.setattr(openfusion.access.redis_brake, "CLEARED_S", 0.0)
    monkeypatch.setattr(openfusion.access.redis_brake, "RETRY_S", 3600.0)
    sent: list[str] = []  # the commands the server sends Redis
    execute_command = Redis.execute_command

    async def counted(self: Redis, *args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return await execute_command(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", counted)
    access = {"api_keys": KEY, "redis_url": private_redis.url, "limits": {"redis_prefix": PREFIX}}
    with serve(access) as (url, _):
        assert httpx.get(f"{url}/v1/models", headers=bearer(KEY), timeout=120).status_code == 200  # connected
        private_redis.freeze()
        try:
            sent.clear()
            started = time.monotonic()
            assert httpx.get(f"{url}/v1/models", headers=bearer(KEY), timeout=120).status_code == 200
            first_took = time.monotonic() - started
            asked_by_first = list(sent)
            for _ in range(2):
                assert httpx.get(f"{url}/v1/models", headers=bearer(KEY), timeout=120).status_code == 200
        finally:
            private_redis.thaw()

    assert asked_by_first == ["PTTL"]
    # It waited for Redis (ANSWER_S, 0.5 s), and was answered while Redis still did not answer: cut at ANSWER_S, not
    # held for the socket timeout (60 s; no loaded machine takes that long over the rest of a request).
    assert openfusion.access.redis_brake.ANSWER_S <= first_took < 60, first_took
    assert sent == ["PTTL"]  # the next ones were answered by the process's own brake, without a word to Redis


async def test_the_addresses_kept_in_redis_are_bounded_and_every_key_expires(redis_prefix: str) -> None:
    """A flood of addresses each with a wrong key: only the latest `max_addresses` are kept, the others' keys go."""
    client = Redis.from_url(REDIS_URL)
    brake = SharedBrake(
        client,
        prefix=redis_prefix,
        local=AuthBrake(max_failures=2, window_s=30.0, block_s=60.0),
        max_addresses=3,
    )
    try:
        addresses = [f"192.0.2.{n}" for n in range(1, 6)]
        for address in addresses:
            assert await brake.count_wrong_key(address) is False
        assert await brake.count_wrong_key("2001:db8:1:2::7") is False
        assert await brake.count_wrong_key("2001:db8:1:2::8") is True  # the same /64: braked
        listed = [member.decode() for member in await client.zrange(f"{{{redis_prefix}}}:brake:addresses", 0, -1)]
        keys = sorted([key.decode() async for key in client.scan_iter(f"{{{redis_prefix}}}:*")])
        ttls = [await client.pttl(key) for key in keys]
        assert await brake.remaining_block("2001:db8:1:2:ffff::1") > 59
        assert await brake.remaining_block("192.0.2.5") == 0
    finally:
        await client.aclose()

    assert listed == ["192.0.2.4", "192.0.2.5", "2001:db8:1:2::/64"]  # the oldest forgotten
    assert keys == sorted(
        [
            f"{{{redis_prefix}}}:brake:addresses",
            f"{{{redis_prefix}}}:brake:192.0.2.4",
            f"{{{redis_prefix}}}:brake:192.0.2.5",
            f"{{{redis_prefix}}}:braked:2001:db8:1:2::/64",
        ]
    )
    assert all(0 < ttl <= 60_000 for ttl in ttls), ttls


async def test_a_client_asks_redis_once_a_second_not_on_every_request_and_a_wrong_key_asks_at_once(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis's "not braked" for an address holds in the process for `CLEARED_S`: a client's requests do not each wait
    for a round trip. A wrong key from the address forgets it, so a block another process set is seen at once.

    The brake's clock is the test's, but its wait for Redis is real time: a round trip past `ANSWER_S` (0.5 s), as a
    loaded machine can take, had the brake take Redis as away for a time the test's clock never passed, and ask no
    more. That wait is not what this test is about: it is long here, and Redis is seen never to have been away."""
    monkeypatch.setattr(openfusion.access.redis_brake, "ANSWER_S", 30.0)
    caplog.set_level(logging.INFO, logger="openfusion.access")
    client = Redis.from_url(REDIS_URL)
    now = [1000.0]
    brake = SharedBrake(
        client,
        prefix=redis_prefix,
        local=AuthBrake(max_failures=3, window_s=30.0, block_s=60.0),
        clock=lambda: now[0],
    )
    asked = []
    pttl = client.pttl

    async def counted_pttl(name: str) -> int:
        asked.append(name)
        return int(await pttl(name))

    client.pttl = counted_pttl  # type: ignore[method-assign]
    try:
        assert [await brake.remaining_block("192.0.2.7") for _ in range(5)] == [0.0] * 5
        assert len(asked) == 1
        # Another process brakes the address: it holds here from its next wrong key on.
        await client.set(f"{{{redis_prefix}}}:braked:192.0.2.7", "1", px=60_000)
        assert await brake.count_wrong_key("192.0.2.7") is False  # already braked: not "this one braked it"
        assert await brake.remaining_block("192.0.2.7") > 59
        # Another address, asked again once its second has passed.
        assert await brake.remaining_block("192.0.2.8") == 0.0
        now[0] += openfusion.access.redis_brake.CLEARED_S / 2
        assert await brake.remaining_block("192.0.2.8") == 0.0
        asked_before = len(asked)
        now[0] += openfusion.access.redis_brake.CLEARED_S
        assert await brake.remaining_block("192.0.2.8") == 0.0
    finally:
        await client.aclose()

    assert asked_before == 3 and len(asked) == 4
    assert "Redis unreachable" not in caplog.text


def test_a_subscriber_braked_elsewhere_cannot_guess_on_from_other_addresses_of_its_64(
    upstream: FakeUpstream, serve: Serve, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis's "not braked", held in the process for `CLEARED_S`, is held for what the brake counts (an IPv6 /64), not
    for one address of it: a subscriber that had each of its addresses cleared here, then braked by another replica,
    could otherwise try a wrong key from each of them here in the meantime. The addresses come as a trusted proxy's
    (127.0.0.1's) X-Forwarded-For."""
    # Held past the whole test, however slowly a loaded machine runs it: the guesses come while every address's "not
    # braked" still holds here, as they would within the second on a quiet machine.
    monkeypatch.setattr(openfusion.access.redis_brake, "CLEARED_S", 3600.0)
    monkeypatch.setattr(openfusion.access.redis_brake, "ANSWER_S", 30.0)  # Redis is not away here, however slow
    monkeypatch.setattr(openfusion.access.redis_limiter, "_TIMEOUT_S", 30.0)
    access = {"api_keys": KEY, "redis_url": REDIS_URL, "limits": {"redis_prefix": redis_prefix, "auth_failures": 3}}
    addresses = [f"2001:db8:7:7::{host:x}" for host in range(1, 9)]
    with serve(access) as (here, _), serve(access) as (elsewhere, _), client_from("127.0.0.1") as proxy:

        def ask(url: str, address: str, key: str) -> int:
            headers = {**bearer(key), "X-Forwarded-For": address}
            return proxy.get(f"{url}/v1/models", headers=headers).status_code

        cleared = [ask(here, address, KEY) for address in addresses]  # Redis said each is not braked
        braking = [ask(elsewhere, "2001:db8:7:7:ffff::1", f"sk-guess-elsewhere-{n:04d}") for n in range(3)]
        guesses = [ask(here, address, f"sk-guess-here-{n:04d}") for n, address in enumerate(addresses)]

    assert cleared == [200] * 8
    assert braking == [401, 401, 401]
    # The first wrong key here was let through on what Redis said before the block; the next ones are refused.
    assert guesses == [401] + [429] * 7, guesses
