"""OpenRouter's own request fields, kept from a provider other than OpenRouter, are none of the APIs' own."""

from __future__ import annotations

import pytest
from anthropic.types import message_create_params
from anthropic.types.beta import message_create_params as beta_message_create_params
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params

from openfusion.api.messages.native import OPENROUTER_MESSAGES_FIELDS
from openfusion.api.passthrough import OPENROUTER_FIELDS


@pytest.mark.parametrize(
    ("params", "openrouter_fields"),
    [
        (message_create_params.MessageCreateParamsBase, OPENROUTER_MESSAGES_FIELDS),
        (beta_message_create_params.MessageCreateParamsBase, OPENROUTER_MESSAGES_FIELDS),
        (response_create_params.ResponseCreateParamsBase, OPENROUTER_FIELDS),
        (completion_create_params.CompletionCreateParamsBase, OPENROUTER_FIELDS),
    ],
    ids=["messages", "messages-beta", "responses", "chat-completions"],
)
def test_no_field_kept_from_a_provider_is_one_its_sdk_sends(params: type, openrouter_fields: frozenset[str]) -> None:
    """Read from the official SDKs' request types: a field one of them gains under such a name is the provider's,
    and must then reach it."""
    assert openrouter_fields.isdisjoint(params.__required_keys__ | params.__optional_keys__)  # type: ignore[attr-defined]
