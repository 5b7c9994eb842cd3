"""AccessControl: authenticate a presented key, then enforce the client's limits."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from openfusion.access.config import AccessConfig, GuardsConfig, Limits, redis_url
from openfusion.access.errors import AuthenticationFailed, LimitExceeded
from openfusion.access.keys import Client, KeyRing, load_keys
from openfusion.access.limiter import Limiter, MemoryLimiter, Slot
from openfusion.access.redis_limiter import RedisLimiter
from openfusion.access.spend import SpendSource, seconds_until_utc_midnight

log = logging.getLogger("openfusion.access")

_MINUTE_S = 60.0
# No slot frees at a known time; a client may ask again soon.
_CONCURRENCY_RETRY_AFTER_S = 1.0


class AccessControl:
    """The configured keys, guards and limit counters of one app."""

    def __init__(self, *, keys: KeyRing, defaults: Limits, guards: GuardsConfig, limiter: Limiter) -> None:
        self.keys = keys
        self.guards = guards
        self.limiter = limiter
        # Without keys everyone is one client, and `[limits]` is one budget shared by all.
        self.anonymous = Client(name=None, limits=defaults)
        self._warned_no_spend_source = False

    def authenticate(self, presented: str | None) -> Client:
        """The calling client; raises AuthenticationFailed (401) when keys are configured and this is none of them."""
        if not self.keys:
            return self.anonymous
        if not presented:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                code="invalid_api_key",
            )
        client = self.keys.find(presented)
        if client is None:
            raise AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        return client

    async def count_request(self, client: Client) -> None:
        """Count a request against the client's requests per minute; 429 when over."""
        limit = client.limits.requests_per_minute
        if limit is None:
            return
        wait = await self.limiter.hit(client.bucket, limit=limit, window_s=_MINUTE_S)
        if wait > 0:
            raise LimitExceeded(
                f"Rate limit reached for {_who(client)}: {limit} requests per minute.",
                code="rate_limited",
                retry_after=wait,
            )

    async def check_spend(self, client: Client, source: SpendSource | None) -> None:
        """429 when the client's daily spend cap is reached; an unknown spend never blocks."""
        cap = client.limits.daily_spend_usd
        if cap is None:
            return
        if source is None:
            if not self._warned_no_spend_source:
                log.warning("daily_spend_usd is set but there is no activity store to read spend from: not enforced")
                self._warned_no_spend_source = True
            return
        try:
            spent = await source.spent_today(client.name)
        except Exception as exc:  # the activity store's outage must not take requests down with it
            log.warning("could not read today's spend for %s: %s", _who(client), type(exc).__name__)
            return
        if spent is not None and spent >= cap:
            raise LimitExceeded(
                f"Daily spend cap of ${cap:.2f} reached for {_who(client)}; it resets at 00:00 UTC.",
                code="spend_limited",
                retry_after=seconds_until_utc_midnight(),
            )

    async def take_fusion_slot(self, client: Client) -> Slot | None:
        """A concurrency slot for one fusion run (None when unlimited); 429 when all are held."""
        limit = client.limits.max_concurrent_fusion
        if limit is None:
            return None
        slot = await self.limiter.acquire(client.bucket, limit=limit)
        if slot is None:
            raise LimitExceeded(
                f"Too many fusion runs at once for {_who(client)}: at most {limit}.",
                code="concurrency_limited",
                retry_after=_CONCURRENCY_RETRY_AFTER_S,
            )
        return slot

    async def aclose(self) -> None:
        """Close the limit store."""
        await self.limiter.aclose()


def _who(client: Client) -> str:
    return f"API key {client.name!r}" if client.name is not None else "this server"


def build_access(config: AccessConfig, environ: Mapping[str, str], *, lease_ttl_s: float = 60.0) -> AccessControl:
    """Access control from its configuration; counters in Redis with `redis_url` (or `REDIS_URL` in `environ`).

    Raises ConfigError (naming keys and variables, never values) when the configuration is wrong.
    """
    limiter: Limiter
    url = redis_url(config, environ)
    if url:
        limiter = RedisLimiter.from_url(url, prefix=config.limits.redis_prefix, lease_ttl_s=lease_ttl_s)
    else:
        limiter = MemoryLimiter()
    return AccessControl(
        keys=load_keys(config, environ),
        defaults=Limits().over(config.limits),
        guards=config.guards,
        limiter=limiter,
    )
