"""The activity read side: `GET /api/v1/generation`, `GET /v1/activity`, and the `/activity` pages.

The routes read the store from `request.app.state.activity_store` (an `ActivityStore`, set by the
app's lifespan); without one they answer 404, as if the routes did not exist. A client key reads only
its own generations (the store filters by key): another key's generation is exactly as missing as
one that never existed. An admin key, or anyone on a server without keys, reads them all.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from openfusion.activity.records import ActivityEntry, ActivityPage
from openfusion.activity.store import ActivityStore, UnknownCursor, answered_within
from openfusion.activity.view import (
    ANALYSIS_SECTIONS,
    analysis_points,
    build_timeline,
    format_cost,
    format_ms,
    format_time,
    generation_body,
    summary_body,
)
from openfusion.api.access import activity_owner
from openfusion.errors import InvalidRequest, NotFound
from openfusion.protocol import NAME_ERROR, plain_name

router = APIRouter()

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# A read the database has not answered within this is a 503: a silent database must not hold the request. Longer
# than the pool's wait for a connection (10 s), which fails with its own cause (the server refused, say).
READ_TIMEOUT_S = 12.0
# Answers shown on the page are untrusted model output: besides escaping, forbid any script or remote load.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def get_store(request: Request) -> ActivityStore:
    """The app's activity store (`app.state.activity_store`); 404 when activity is not recorded."""
    store: ActivityStore | None = getattr(request.app.state, "activity_store", None)
    if store is None:
        raise NotFound("Activity is not recorded on this server.")
    return store


Store = Annotated[ActivityStore, Depends(get_store)]
# The key whose generations the caller may read; None: every key's.
Owner = Annotated[str | None, Depends(activity_owner)]


def parse_limit(raw: str | None) -> int:
    """`limit` as an int in 1..200 (default 50), else a 400 naming the parameter."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid value for 'limit': {raw!r} is not an integer.", param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"Invalid value for 'limit': must be between 1 and {MAX_LIMIT}.", param="limit")
    return limit


def checked_id(value: str, param: str) -> str:
    """A generation id from a query or path, refused with a 400 when no id could hold it (NUL, surrogates)."""
    try:
        return plain_name(value)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{param}': {NAME_ERROR}.", param=param) from None


async def read_page(store: ActivityStore, *, limit: str | None, before: str | None, owner: str | None) -> ActivityPage:
    """One page of `owner`'s generations (None: everyone's), newest first; an unknown `before` cursor is a 400."""
    count = parse_limit(limit)
    if before:
        checked_id(before, "before")
    try:
        page = store.list(limit=count, before=before or None, key_name=owner)
        return await answered_within(page, timeout_s=READ_TIMEOUT_S, what="reading activity")
    except UnknownCursor:
        raise InvalidRequest(
            f"Invalid value for 'before': no generation {before!r}.", param="before", code="invalid_cursor"
        ) from None


async def read_entry(store: ActivityStore, generation_id: str, *, owner: str | None) -> ActivityEntry | None:
    """One of `owner`'s generations (None: anyone's) with its calls, or None."""
    entry = store.get(generation_id, key_name=owner)
    return await answered_within(entry, timeout_s=READ_TIMEOUT_S, what="reading a generation")


@router.get("/api/v1/generation")
async def get_generation(
    store: Store, owner: Owner, generation_id: Annotated[str | None, Query(alias="id")] = None
) -> Any:
    """One generation in OpenRouter's field names, with the per-call breakdown."""
    if not generation_id:
        raise InvalidRequest("Missing required parameter: 'id'.", param="id")
    entry = await read_entry(store, checked_id(generation_id, "id"), owner=owner)
    if entry is None:
        raise NotFound(f"Generation {generation_id!r} not found.", param="id", code="generation_not_found")
    return generation_body(entry)


@router.get("/v1/activity")
async def list_activity(store: Store, owner: Owner, limit: str | None = None, before: str | None = None) -> Any:
    """Recent generations, newest first; pass `before=<last id>` for the next page."""
    page = await read_page(store, limit=limit, before=before, owner=owner)
    return {
        "object": "list",
        "data": [summary_body(g) for g in page.generations],
        "has_more": page.has_more,
        "next_before": page.next_before,
    }


@router.get("/activity", response_class=HTMLResponse, include_in_schema=False)
async def activity_page(
    store: Store, owner: Owner, limit: str | None = None, before: str | None = None
) -> HTMLResponse:
    """The list of recent requests, each linking to its timeline."""
    page = await read_page(store, limit=limit, before=before, owner=owner)
    return _html("activity_list.html", page=page)


@router.get("/activity/{generation_id}", response_class=HTMLResponse, include_in_schema=False)
async def generation_page(request: Request, store: Store, owner: Owner, generation_id: str) -> HTMLResponse:
    """One request: its timeline of upstream calls and, when stored, the answers side by side."""
    entry = await read_entry(store, checked_id(generation_id, "generation_id"), owner=owner)
    if entry is None:
        return _html("activity_missing.html", status_code=404, generation_id=generation_id)
    settings = getattr(request.app.state, "settings", None)  # an app of the activity routes alone has none
    trace_id, trace_url = entry.generation.trace_id, settings.tracing.trace_url if settings is not None else None
    return _html(
        "activity_detail.html",
        g=entry.generation,
        trace_link=trace_url.replace("{trace_id}", trace_id) if trace_url and trace_id else None,
        calls=entry.calls,
        timeline=build_timeline(entry.generation, entry.calls),
        sections=ANALYSIS_SECTIONS,
    )


@functools.cache
def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("openfusion.api", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise; none does
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        cost=format_cost,
        ms=format_ms,
        time=format_time,
        pct=lambda value: f"{value:.3f}%",
        path=lambda value: quote(str(value), safe=""),
    )
    env.globals["analysis_points"] = analysis_points
    return env


def _html(template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    body = _templates().get_template(template).render(**context)
    return HTMLResponse(body, status_code=status_code, headers=_PAGE_HEADERS)
