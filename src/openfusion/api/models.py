"""GET /v1/models: the fusion slugs and every preset, in OpenAI's list format."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from openfusion.api.deps import State
from openfusion.presets import Preset

router = APIRouter()


def _entry(model_id: str, preset: Preset, description: str | None = None) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "openfusion",
        "name": f"Fusion ({preset.name})",
        "description": description or preset.description,
        "fusion": {
            "preset": preset.name,
            "analysis_models": preset.analysis_models,
            "model": preset.model,
            "synthesis_model": preset.synthesizer,
        },
    }


@router.get("/v1/models")
@router.get("/api/v1/models", include_in_schema=False)
async def list_models(state: State) -> dict[str, Any]:
    """List the fusion models this server offers."""
    presets = state.presets
    data: list[dict[str, Any]] = []
    default = presets.get(state.settings.default_preset)
    if default is not None:
        for alias in ("openrouter/fusion", "fusion"):
            about = f"Fusion with the default preset ({default.name})" + (
                f": {default.description}" if default.description else "."
            )
            data.append(_entry(alias, default, about))
    if "fast" in presets:
        data.append(_entry("openrouter/fusion-flash", presets["fast"]))
    data.extend(_entry(f"fusion/{name}", preset) for name, preset in sorted(presets.items()))
    return {"object": "list", "data": data}
