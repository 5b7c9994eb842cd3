"""Redis's data epoch: how a replica learns, at its next admission, that Redis lost the counters (restarted empty).

A marker key, `{<prefix>}:epoch`, holds a random token, set by the first admission script that finds it absent:
after Redis restarted empty or was flushed, the next admission sets a new one. Every admission script reads it
in its own round trip: one that finds a token other than the one this process knows counts nothing and says so,
and the process takes its running slots and reservations again (one pipelined round trip each, once however many
admissions saw it) before asking again. A restart then lets no admission of this replica through while its
requests in flight go uncounted; another replica's are counted again at its own next admission or renewal.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.commands.core import AsyncScript

log = logging.getLogger("openfusion.access")


def key_start(prefix: str) -> str:
    """The start of every limit, spend and brake key: the configured prefix as a hash tag, `{prefix}`.

    Redis Cluster (and proxies that route by slot) run a script only when all its keys hash to one slot: the marker
    here joins every admission script's keys, and the brake's script removes keys it derives, so every key hashes
    on the prefix alone. On a plain Redis the braces are only characters.
    """
    return "{" + prefix + "}"


NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS[#KEYS] the marker; ARGV[#ARGV - 1] the token this process knows ('' none yet), ARGV[#ARGV] a new token.
_CHECK = """
local epoch = redis.call('GET', KEYS[#KEYS])
if not epoch then
  epoch = ARGV[#ARGV]
  redis.call('SET', KEYS[#KEYS], epoch)
end
local known = ARGV[#ARGV - 1]
if known ~= '' and known ~= epoch then return {epoch} end
"""


def admission(body: str) -> str:
    """An admission script: `body` (which ends in a `return`, and reads the Redis time as `now`) behind the check.

    Its answer is {epoch, body's answer}, or {epoch} alone when the process's token is not Redis's: nothing counted.
    The marker and the tokens come last in KEYS and ARGV, so `body` reads its own at the same places as before.
    """
    return NOW_MS + _CHECK + "local function admit()\n" + body + "\nend\nreturn {epoch, admit()}\n"


class RedisEpoch:
    """The epoch this process last saw, and the ways to take its counters again when Redis lost them."""

    def __init__(self, *, prefix: str) -> None:
        self.key = f"{key_start(prefix)}:epoch"
        self._known: bytes | None = None
        self._retakes: list[Callable[[], Awaitable[None]]] = []
        self._lock = asyncio.Lock()

    def on_reset(self, retake: Callable[[], Awaitable[None]]) -> None:
        """Call `retake` (take this process's running counters again) when Redis is found to have lost them."""
        self._retakes.append(retake)

    async def admit(self, script: AsyncScript, *, keys: list[str], args: list[Any]) -> Any:
        """Run an `admission` script; its body's answer (RedisError or OSError when Redis fails)."""
        answer = await self._run(script, keys, args, self._known)
        if len(answer) == 1:  # Redis lost the counters since this process last asked
            await self._retake(answer[0])
            answer = await self._run(script, keys, args, None)  # counted now, whatever the epoch
        if self._known is None:
            self._known = answer[0]
        return answer[1]

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any], known: bytes | None) -> list[Any]:
        token = secrets.token_hex(8)
        answer: list[Any] = await script(keys=[*keys, self.key], args=[*args, known or "", token])
        return answer

    async def _retake(self, epoch: bytes) -> None:
        async with self._lock:
            if self._known == epoch:  # another admission saw it first, and took them again
                return
            log.warning("the limit store lost its counters (Redis restarted empty?): taking this process's again")
            for retake in self._retakes:
                await retake()
            self._known = epoch
