"""Key scopes: whether the client's key covers every model it chose.

Scope is about what the client chose: the requested model, OpenRouter's `models` fallback list,
and the preset and models it names in the fusion plugin or in the fusion server tool's
`parameters`. A fusion request is checked as `fusion/<preset it runs>` (so `fusion`,
`openrouter/fusion` and `fusion/quality` are all `fusion/quality` with the default preset); the
panel, judge and synthesizer a preset brings in are the operator's choice and are covered by
allowing the preset. Which models a request can call, and who chose each, is worked out once, in
`pipeline.reach`.
"""

from __future__ import annotations

from openfusion.access.errors import ModelNotAllowed
from openfusion.access.keys import Client
from openfusion.pipeline.reach import Reach


def requested_models(reach: Reach) -> list[tuple[str, str]]:
    """(param, slug) for the preset and every model the client chose, in the order they are checked."""
    return reach.chosen()


def check_scope(client: Client, named: list[tuple[str, str]]) -> None:
    """Raise ModelNotAllowed (403) for the first named model outside the client's scope."""
    for param, slug in named:
        if not client.allows(slug):
            raise ModelNotAllowed(f"This API key ({client.name}) is not allowed to use {slug!r}.", param=param)
