"""Guessing keys is slowed down: past 10 wrong keys in a minute, an address is refused (429) for a while.

Against the real server; other addresses are other loopback addresses (127.0.0.2, …), which Linux
routes to the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
from fastapi import FastAPI

from fakes.upstream import FakeUpstream

from .conftest import bearer

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-brake-right-key-0123"
KEYS = {"api_keys": KEY}


def client_from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from `address`."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_an_address_that_keeps_guessing_is_braked_and_others_are_not(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(KEYS) as (url, _), client_from("127.0.0.2") as guesser, client_from("127.0.0.3") as other:
        for attempt in range(10):
            wrong = guesser.get(f"{url}/v1/models", headers=bearer(f"sk-guess-number-{attempt:04d}"))
            assert wrong.status_code == 401, (attempt, wrong.text)
        braked = guesser.get(f"{url}/v1/models", headers=bearer("sk-guess-number-0011"))
        assert braked.status_code == 429
        assert braked.json()["error"]["code"] == "auth_failures"
        assert 0 < int(braked.headers["retry-after"]) <= 300
        # Even the right key: a lucky guess must not get through while the address is braked.
        assert guesser.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 429
        # Another address with the right key is not affected.
        assert other.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200


def test_successes_and_missing_keys_do_not_count(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(KEYS) as (url, _), client_from("127.0.0.4") as client:
        for _ in range(30):
            assert client.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200
            # A browser opening /activity first asks without credentials: a 401 that is no guess.
            assert client.get(f"{url}/activity").status_code == 401
        for attempt in range(9):
            assert client.get(f"{url}/v1/models", headers=bearer(f"sk-typo-in-key-{attempt:04d}")).status_code == 401
        assert client.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200


def test_the_addresses_of_one_ipv6_subscriber_are_braked_together(upstream: FakeUpstream, serve: Serve) -> None:
    """A subscriber gets a /64 and picks any address in it: one wrong key from each of eleven addresses of it is
    eleven guesses from one place. The addresses come as a trusted proxy's (127.0.0.1's) X-Forwarded-For."""
    with serve(KEYS) as (url, _), client_from("127.0.0.1") as proxy:

        def from_address(address: str, key: str) -> httpx.Response:
            return proxy.get(f"{url}/v1/models", headers={**bearer(key), "X-Forwarded-For": address})

        for host in range(1, 11):
            assert from_address(f"2001:db8:1:2::{host:x}", f"sk-guess-number-{host:04d}").status_code == 401
        assert from_address("2001:db8:1:2:ffff::1", KEY).status_code == 429  # the same /64, the right key
        assert from_address("2001:db8:1:3::1", KEY).status_code == 200  # the next /64 is someone else
