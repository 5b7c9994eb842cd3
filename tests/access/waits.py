"""Waiting in the access tests: on a condition, and on the Redis server's clock (the one leases expire by)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis


def redis_ms(client: redis.Redis) -> float:
    """The Redis server's time, in ms: the clock leases expire by."""
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


async def until(condition: Callable[[], bool], *, timeout_s: float = 60.0) -> None:
    """Wait until `condition()` holds; the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)
