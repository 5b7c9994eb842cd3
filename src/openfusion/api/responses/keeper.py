"""Stored responses at the edge: continue a conversation from `previous_response_id`, keep a finished one."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from openfusion.activity.records import utc_now
from openfusion.activity.store import answered_within
from openfusion.activity.stored import ResponseStore, StoredResponse
from openfusion.errors import InvalidRequest, NotFound, OpenFusionError

log = logging.getLogger("openfusion")

PURGE_EVERY_S = 600.0
_TIMEOUT_S = 10.0
KEEP_TIMEOUT_S = _TIMEOUT_S  # the most a response's keeping waits for the store


class PreviousResponseNotFound(NotFound):
    """`previous_response_id` names no response this key stored (unknown, expired, or another key's)."""

    code = "previous_response_not_found"


class PreviousResponseFailed(InvalidRequest):
    """`previous_response_id` names a response this key stored that failed: it may be read back, not continued."""


async def purge_now_and_then(store: ResponseStore, *, retention_days: float, every_s: float = PURGE_EVERY_S) -> None:
    """Delete the responses no longer kept, at once and then every `every_s`: the expired ones, and those older
    than the retention in force (which may have been lowered, or set to 0, since they were stored)."""
    retention = timedelta(days=retention_days)
    while True:
        now = utc_now()
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                purged = await store.purge_responses(now=now, created_before=now - retention)
        except (OpenFusionError, TimeoutError) as exc:
            log.warning("could not purge stored responses: %s", exc)
        else:
            if purged:
                log.info("stored responses purged: %d no longer kept", purged)
        await asyncio.sleep(every_s)


class ResponseKeeper:
    """Reads and writes stored responses for one app (`purge_now_and_then` deletes those no longer kept)."""

    def __init__(self, store: ResponseStore, *, retention_days: float) -> None:
        self.store = store
        self.retention = timedelta(days=retention_days)

    async def history(self, response_id: str, *, owner: str) -> list[dict[str, Any]]:
        """The conversation items a follow-up continues from; 404 unless this owner stored that response, 400 when it
        failed (kept to be read back, as OpenAI keeps one, not continued: OpenAI refuses that too)."""
        stored = await self.load(response_id, owner=owner)
        if stored.response.get("status") == "failed":
            raise PreviousResponseFailed(
                f"Previous response with id {response_id!r} failed and cannot be continued: send its input again "
                "(without previous_response_id, or with the id of the response before it), or continue from a "
                "response that completed.",
                param="previous_response_id",
            )
        return [*stored.items, *_continuable(stored.response.get("output") or [])]

    async def load(self, response_id: str, *, owner: str, param: str | None = "previous_response_id") -> StoredResponse:
        """This owner's stored response of that id; 404 otherwise (unknown, expired, another key's).

        503 (StoreUnavailable) when the database fails or does not answer within `_TIMEOUT_S`.
        """
        now = utc_now()
        read = self.store.load_response(response_id, owner=owner, now=now)
        stored = await answered_within(read, timeout_s=_TIMEOUT_S, what="reading a stored response")
        if stored is None or stored.created_at <= now - self.retention:  # kept longer than the retention now
            raise _not_found(response_id, param=param)
        return stored

    async def keep(
        self,
        response: dict[str, Any],
        *,
        items: list[dict[str, Any]],
        owner: str,
        generation_id: str,
        timeout_s: float = _TIMEOUT_S,
    ) -> None:
        """Store a finished response within `timeout_s`; a database failure is logged, never the client's problem."""
        now = utc_now()
        stored = StoredResponse(response["id"], owner, generation_id, now, now + self.retention, items, response)
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.save_response(stored)
        except (OpenFusionError, TimeoutError) as exc:
            log.warning("could not store response %s: %s", response["id"], exc)


def not_stored(response_id: str, *, param: str | None = "previous_response_id") -> PreviousResponseNotFound:
    """The 404 on a server that keeps no responses."""
    why = "this server keeps no responses (activity or response_retention_days is off)"
    return _not_found(response_id, why, param=param)


def _not_found(
    response_id: str, why: str = "", *, param: str | None = "previous_response_id"
) -> PreviousResponseNotFound:
    what = "Previous response" if param else "Response"
    message = f"{what} with id {response_id!r} not found" + (f": {why}." if why else ".")
    return PreviousResponseNotFound(message, param=param, code=None if param else "response_not_found")


def _continuable(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as input items for the next turn: what it said and the calls it made."""
    return [item for item in output if item.get("type") in ("message", "function_call")]
