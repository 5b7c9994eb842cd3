"""GET /v1/models: the fusion slugs and every preset, in OpenAI's list format; GET /v1/models/{id}: one model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from openfusion.activity import PriceTable
from openfusion.api.access import key_scope
from openfusion.api.deps import AppState, State
from openfusion.errors import ModelNotFound
from openfusion.presets import Preset

router = APIRouter()

# What a fusion model takes (OpenRouter's names): the synthesizer answers with the client's tools and
# format, so model pickers that filter on tool support find it (OpenRouter lists `[]` for its slugs).
SUPPORTED_PARAMETERS = [
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "include_reasoning",
    "response_format",
    "structured_outputs",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
]
_ARCHITECTURE = {
    "modality": "text+image->text",
    "input_modalities": ["text", "image"],
    "output_modalities": ["text"],
    "tokenizer": "Other",
    "instruct_type": None,
}
# OpenRouter's sentinel for "the price varies": a model of the preset has no known price.
_VARIES = "-1"


def _entry(model_id: str, preset: Preset, prices: PriceTable, description: str | None = None) -> dict[str, Any]:
    name = f"Fusion ({preset.name})"
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "object": "model",
        "type": "model",  # with display_name and created_at: the Anthropic Models API's fields, for Claude Code
        "created": 0,
        "created_at": "1970-01-01T00:00:00Z",
        "owned_by": "openfusion",
        "name": name,
        "display_name": name,
        "description": description or preset.description,
        "architecture": _ARCHITECTURE,
        "pricing": pricing(preset, prices),
        "supported_parameters": SUPPORTED_PARAMETERS,
        "fusion": {
            "preset": preset.name,
            "analysis_models": preset.analysis_models,
            "model": preset.model,
            "synthesis_model": preset.synthesizer,
        },
    }


@router.get("/v1/models")
@router.get("/api/v1/models", include_in_schema=False)
async def list_models(state: State, request: Request) -> dict[str, Any]:
    """List the fusion models this server offers the caller's key: those its scope allows (a fusion slug is checked
    as the preset it runs, `fusion/<preset>`, as a request for it is)."""
    data = _fusion_models(state, request)
    ids = [entry["id"] for entry in data]
    return {"object": "list", "data": data, "has_more": False, "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None}  # fmt: skip


@router.get("/v1/models/{model_id:path}")
@router.get("/api/v1/models/{model_id:path}", include_in_schema=False)
async def retrieve_model(model_id: str, state: State, request: Request) -> dict[str, Any]:
    """One model, as the OpenAI and Anthropic SDKs' `models.retrieve()` ask for it: a fusion model as listed, or a
    model a provider serves; 404 `model_not_found` for one nothing serves or the key's scope leaves out (the same
    answer: a key learns nothing of models it may not use)."""
    for entry in _fusion_models(state, request):
        if entry["id"] == model_id:
            return entry
    missing = ModelNotFound(f"The model '{model_id[:200]}' does not exist.", param="model")
    if model_id.startswith("fusion/") or not key_scope(request)(model_id):
        raise missing
    try:
        route = state.registry.resolve(model_id)
    except ModelNotFound:
        raise missing from None
    return {"id": model_id, "object": "model", "type": "model", "created": 0, "created_at": "1970-01-01T00:00:00Z",
            "owned_by": route.provider.name, "display_name": model_id}  # fmt: skip


def _fusion_models(state: AppState, request: Request) -> list[dict[str, Any]]:
    allows = key_scope(request)
    presets = {name: preset for name, preset in state.presets.items() if allows(f"fusion/{name}")}
    data: list[dict[str, Any]] = []
    default = presets.get(state.settings.default_preset)
    if default is not None:
        for alias in ("openrouter/fusion", "fusion"):
            about = f"Fusion with the default preset ({default.name})" + (
                f": {default.description}" if default.description else "."
            )
            data.append(_entry(alias, default, state.prices, about))
    if "fast" in presets:
        data.append(_entry("openrouter/fusion-flash", presets["fast"], state.prices))
    data.extend(_entry(f"fusion/{name}", preset, state.prices) for name, preset in sorted(presets.items()))
    return data


def pricing(preset: Preset, prices: PriceTable) -> dict[str, str]:
    """USD per token, as the sum over every model of the preset (each reads the prompt and writes about
    as much as the answer): a rough guide, not a quote. "-1" when a model's price is unknown."""
    models = [*preset.analysis_models, preset.model, preset.synthesizer]
    known = [prices.price_of(model) for model in models]
    if any(price is None for price in known):
        return {"prompt": _VARIES, "completion": _VARIES, "request": "0"}
    prompt = sum(price.prompt for price in known if price is not None)
    completion = sum(price.completion for price in known if price is not None)
    return {"prompt": f"{prompt:.12g}", "completion": f"{completion:.12g}", "request": "0"}
