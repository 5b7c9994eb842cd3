"""The synthesizer's request body: the client's answer-shaping fields as sent, declared or extra, nothing else."""

from __future__ import annotations

from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.synthesize import synthesis_body
from openfusion.protocol import ChatRequest

PLAN = FusionPlan(preset="p", panel=["up/a"], judges=["up/j"], synthesizers=["up/s"], max_completion_tokens=321)
MESSAGES = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Hi"}]


def test_declared_and_extra_fields_go_as_sent_and_unset_ones_not_at_all() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "fusion/p",
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.3,
            "stop": ["END"],
            "top_p": 0.9,  # an extra field
            "user": "someone",
            "logit_bias": {"50256": -100},
            "presence_penalty": None,  # sent as null: left out, like an unset field
            "metadata": {"not": "forwarded"},  # extra, but not one that shapes the answer
        }
    )

    body = synthesis_body(request, PLAN, MESSAGES)

    assert body == {
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["END"],
        "logit_bias": {"50256": -100},
        "user": "someone",
        "tools": None,
        "tool_choice": None,
        "messages": MESSAGES,
        "max_completion_tokens": 321,
    }


def test_the_clients_token_limit_wins_over_the_plans() -> None:
    request = ChatRequest(model="fusion/p", messages=[{"role": "user", "content": "Hi"}], max_tokens=77)

    assert synthesis_body(request, PLAN, MESSAGES)["max_completion_tokens"] == 77
