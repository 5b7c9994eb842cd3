"""AccessControl: authenticate a presented key, then enforce the client's limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from openfusion.access.brake import AuthBrake, Brake, counted_as
from openfusion.access.config import AccessConfig, GuardsConfig, Limits, fingerprint_key, redis_url
from openfusion.access.errors import AddressBraked, AuthenticationFailed, LimitExceeded, LimitsUnavailable
from openfusion.access.keys import Client, KeyRing, load_keys
from openfusion.access.limiter import Limiter, MemoryLimiter, Slot
from openfusion.access.redis_brake import SharedBrake
from openfusion.access.redis_limiter import RedisLimiter
from openfusion.access.redis_spend import RedisSpendBook
from openfusion.access.refusals import RefusalLog
from openfusion.access.spend import (
    MemorySpendBook,
    Refusal,
    Reservation,
    SpendBook,
    SpendSource,
    seconds_until_utc_midnight,
    utc_day,
)

log = logging.getLogger("openfusion.access")

_MINUTE_S = 60.0
# No slot frees at a known time; a client may ask again soon.
_CONCURRENCY_RETRY_AFTER_S = 1.0
# Nor does a spend reservation of a request in flight.
_SPEND_RETRY_AFTER_S = 2.0
# The most a request waits for today's spend to be read; past it the spend counts as unknown (0), as in an outage.
SPEND_READ_TIMEOUT_S = 5.0
# Readings of today's spend that took too long are taken again this many times.
_SPEND_READS = 3


class AccessControl:
    """The configured keys, guards and limit counters of one app."""

    def __init__(
        self,
        *,
        keys: KeyRing,
        defaults: Limits,
        guards: GuardsConfig,
        limiter: Limiter,
        spend: SpendBook,
        brake: Brake | None = None,
        fingerprint_key: bytes | None = None,
    ) -> None:
        self.keys = keys
        self.guards = guards
        self.limiter = limiter
        self.spend = spend
        self.brake: Brake = brake or AuthBrake(max_failures=0, window_s=60.0, block_s=300.0)
        self.refusals = RefusalLog(key=fingerprint_key)
        # Without keys everyone is one client, and `[limits]` is one budget shared by all.
        self.anonymous = Client(name=None, limits=defaults)
        self._warned_no_spend_source = False

    async def authenticate(
        self,
        presented: str | None,
        *,
        address: str | None = None,
        conflicting: bool = False,
        unreadable: bool = False,
    ) -> Client:
        """The calling client; raises AuthenticationFailed (401) when keys are configured and this is none of them, or
        when the request sent several different keys (`conflicting`: which one it meant is anyone's guess).

        An `address` that presented too many wrong keys lately is refused first (AddressBraked, 429
        `auth_failures`), whatever it presents now: a lucky guess must not get through the brake. `unreadable`:
        credentials were sent, but hold no key read here (another scheme, Basic on the API): `malformed`, not
        `missing`. Every refusal is logged with its reason and address, never the key.
        """
        if not self.keys:
            return self.anonymous
        blocked = await self.brake.remaining_block(address)
        if blocked > 0:  # not logged: the brake's start was, and a guesser's every request would flood the log
            raise AddressBraked(
                "Too many requests with a wrong API key from this address; try again later.",
                code="auth_failures",
                retry_after=blocked,
            )
        if conflicting:
            await self._wrong_key(address)  # no client sends two keys: counted as a wrong one
            self.refusals.refused("malformed", address=address)
            raise AuthenticationFailed(
                "Several different API keys were sent (in repeated Authorization or x-api-key headers): send one.",
                reason="malformed",
                code="invalid_api_key",
            )
        if not presented:
            reason = "malformed" if unreadable else "missing"
            self.refusals.refused(reason, address=address)
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                reason=reason,
                code="invalid_api_key",
            )
        client = self.keys.find(presented)
        if client is None:
            self.refusals.refused("unknown", address=address, presented=presented)
            await self._wrong_key(address)
            raise AuthenticationFailed("Invalid API key.", reason="unknown", code="invalid_api_key")
        return client

    async def _wrong_key(self, address: str | None) -> None:
        """Count a wrong key against its address; say so when that brakes the address."""
        brake = self.brake
        if await brake.count_wrong_key(address) and address is not None:
            self.refusals.braked(
                counted_as(address), failures=brake.max_failures, window_s=brake.window_s, block_s=brake.block_s
            )

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

    async def reserve_spend(
        self, client: Client, source: SpendSource | None, estimate: Callable[[str], float]
    ) -> Reservation | None:
        """Reserve a request's worst case against the client's daily spend cap (None: no cap to hold).

        `estimate(why)` is the request's worst-case cost, asked for only under a cap; it raises (402)
        when the cost cannot be bounded. 429 `spend_limited` when today's spend, what requests in flight
        hold and this estimate are over the cap. An unknown spend (the store is down) counts as 0.
        """
        cap = client.limits.daily_spend_usd
        if cap is None:
            return None
        if source is None:
            if not self._warned_no_spend_source:
                log.warning("daily_spend_usd is set but there is no activity store to read spend from: not enforced")
                self._warned_no_spend_source = True
            return None
        who = _who(client)
        usd = estimate(f"{who[:1].upper()}{who[1:]} has a daily spend cap")
        day = utc_day()
        for _ in range(_SPEND_READS):
            read_at = await self.spend.clock()  # before the reading: costs written after it still count
            spent = await self._spent_today(client, source)
            outcome = await self.spend.reserve(
                client.bucket, day=day, cap=cap, estimate=usd, spent=spent, read_at=read_at
            )
            if isinstance(outcome, Reservation):
                return outcome
            if isinstance(outcome, Refusal):
                raise _spend_limited(client, cap=cap, estimate=usd, refusal=outcome)
        raise LimitsUnavailable("Today's spend cannot be read in time (the activity store is slow); try again shortly.")

    async def _spent_today(self, client: Client, source: SpendSource) -> float:
        """Today's spend by the client; 0 when the store cannot tell within `SPEND_READ_TIMEOUT_S`.

        The store's read ends at the limit even when the database does not answer (a partition drops
        packets, it refuses nothing): the request goes on then, without waiting for it.
        """
        try:
            async with asyncio.timeout(SPEND_READ_TIMEOUT_S):
                spent = await source.spent_today(client.name)
        except Exception as exc:  # the activity store's outage must not take requests down with it
            log.warning("could not read today's spend for %s: %s", _who(client), type(exc).__name__)
            return 0.0
        return spent or 0.0

    async def take_request_slot(self, client: Client) -> Slot | None:
        """A concurrency slot for one model-calling request of any kind (None when unlimited); 429 when all are held."""
        limit = client.limits.max_concurrent_requests
        if limit is None:
            return None
        slot = await self.limiter.acquire(client.bucket, limit=limit, kind="requests")
        if slot is None:
            raise LimitExceeded(
                f"Too many requests at once for {_who(client)}: at most {limit} in flight (fusion and pass-through).",
                code="concurrency_limited",
                retry_after=_CONCURRENCY_RETRY_AFTER_S,
            )
        return slot

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
        """Settle pending reservations, then close the limit store."""
        await self.spend.aclose()
        await self.limiter.aclose()


def _who(client: Client) -> str:
    return f"API key {client.name!r}" if client.name is not None else "this server"


def _spend_limited(client: Client, *, cap: float, estimate: float, refusal: Refusal) -> LimitExceeded:
    """The 429 of a refused reservation: retry soon when requests in flight block it, else after midnight."""
    if refusal.counted >= cap:
        return LimitExceeded(
            f"Daily spend cap of ${cap:.2f} reached for {_who(client)}; it resets at 00:00 UTC.",
            code="spend_limited",
            retry_after=seconds_until_utc_midnight(),
        )
    message = (
        f"Daily spend cap of ${cap:.2f} for {_who(client)}: ${refusal.counted:.4f} is spent or held by requests in "
        f"flight today, and this request may cost up to ${estimate:.4f}."
    )
    if refusal.counted - refusal.in_flight + estimate <= cap:
        return LimitExceeded(
            message + " Retry when requests in flight have finished, or lower max_tokens.",
            code="spend_limited",
            retry_after=_SPEND_RETRY_AFTER_S,
        )
    return LimitExceeded(
        message + " Lower max_tokens (or the panel), or wait until 00:00 UTC.",
        code="spend_limited",
        retry_after=seconds_until_utc_midnight(),
    )


def build_access(config: AccessConfig, environ: Mapping[str, str], *, lease_ttl_s: float = 60.0) -> AccessControl:
    """Access control from its configuration; counters in Redis with `redis_url` (or `REDIS_URL` in `environ`).

    Raises ConfigError (naming keys and variables, never values) when the configuration is wrong.
    """
    limiter: Limiter
    spend: SpendBook
    brake: Brake = AuthBrake(
        max_failures=config.limits.auth_failures,
        window_s=config.limits.auth_failure_window_s,
        block_s=config.limits.auth_block_s,
    )
    url = redis_url(config, environ)
    if url:
        prefix = config.limits.redis_prefix
        shared = RedisLimiter.from_url(url, prefix=prefix, lease_ttl_s=lease_ttl_s)
        spend = RedisSpendBook(shared.client, prefix=prefix, lease_ttl_s=lease_ttl_s, epoch=shared.epoch)
        limiter = shared
        brake = SharedBrake(shared.client, prefix=prefix, local=brake)
    else:
        limiter, spend = MemoryLimiter(), MemorySpendBook()
    return AccessControl(
        keys=load_keys(config, environ),
        defaults=Limits().over(config.limits),
        guards=config.guards,
        limiter=limiter,
        spend=spend,
        brake=brake,
        fingerprint_key=fingerprint_key(config),
    )
