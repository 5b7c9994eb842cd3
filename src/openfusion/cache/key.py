"""The cache key: a digest of the normalised request, its resolved fusion plan and the client key's tenant."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

from openfusion.pipeline.plan import FusionPlan
from openfusion.protocol import ChatRequest

# Bumped whenever what a cached run holds, or how keys are made, changes: old entries are then never read.
KEY_VERSION = 1

# Plan fields that do not change the answer: limits, estimates, and the cache's own settings.
_PLAN_IGNORED = frozenset({"max_cost", "cost", "config_param", "cache"})
# Request fields that do not change the answer: how it is delivered; the fusion plugin is in the plan.
_REQUEST_IGNORED = frozenset({"stream", "stream_options", "model"})


def cache_key(plan: FusionPlan, request: ChatRequest, *, tenant: str) -> str:
    """sha256 of canonical JSON (sorted keys) over everything that shapes the answer, and the tenant."""
    return hashlib.sha256(canonical(plan, request, tenant=tenant)).hexdigest()


def canonical(plan: FusionPlan, request: ChatRequest, *, tenant: str) -> bytes:
    """The key's input: the same bytes for requests that must get the same answer."""
    resolved = {
        field.name: _plain(getattr(plan, field.name))
        for field in dataclasses.fields(plan)
        if field.name not in _PLAN_IGNORED
    }
    body = request.model_dump(mode="json", exclude=set(_REQUEST_IGNORED), exclude_none=True)
    # The fusion plugin is resolved into the plan; other plugins stay as they were sent.
    plugins = [p for p in body.pop("plugins", None) or [] if not (isinstance(p, dict) and p.get("id") == "fusion")]
    if plugins:
        body["plugins"] = plugins
    document = {"v": KEY_VERSION, "tenant": tenant, "plan": resolved, "request": body}
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    return value
