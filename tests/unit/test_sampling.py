"""refused_parameter(): which sampling parameter a provider's refusal names; SamplingMemory: what is left out after."""

from __future__ import annotations

import orjson
import pytest

from openfusion.errors import UpstreamStatusError
from openfusion.pipeline.sampling import MODELS_KEPT, SamplingMemory, refused_parameter
from openfusion.pipeline.structured import DialectMemory

SENT = {"temperature": 0, "top_p": 0.9, "logprobs": True, "top_logprobs": 2, "seed": 7}


def refusal(status: int, error: object, model: str = "up/seed-1") -> UpstreamStatusError:
    exc = UpstreamStatusError(f"{model} (up) returned HTTP {status}: …", model=model, provider="up",
                              upstream_status=status)  # fmt: skip
    exc.body = orjson.dumps({"error": error})
    return exc


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (400, {"message": "Unsupported value: 'temperature' does not support 0 with this model.",
               "param": "temperature"}, "temperature"),  # OpenAI, reasoning models
        (400, {"message": "Unsupported parameter: 'top_p' is not supported with this model.", "param": None}, "top_p"),
        (400, {"message": "`temperature` and `top_p` cannot both be specified for this model."}, "temperature"),
        (400, {"message": "top_logprobs must be at most 20", "param": "top_logprobs"}, "top_logprobs"),
        (422, {"message": "seed: extra inputs are not permitted"}, "seed"),
        # The model's own slug (`up/seed-1`) is ours, not the provider's words: not a refusal of `seed`.
        (400, {"message": "This model's maximum context length is 8192 tokens."}, None),
        (400, {"message": "Invalid value for 'temperature'."}, "temperature"),
        (500, {"message": "temperature sampler crashed"}, None),  # not a refusal: a server error
        (429, {"message": "Rate limit reached for temperature experiments"}, None),
    ],
)  # fmt: skip
def test_the_refused_parameter(status: int, error: object, expected: str | None) -> None:
    assert refused_parameter(refusal(status, error), SENT) == expected


def test_a_parameter_not_sent_is_never_the_one_refused() -> None:
    error = refusal(400, {"message": "Unsupported parameter: 'top_k'", "param": "top_k"})
    assert refused_parameter(error, {"top_k": None, "temperature": 1}) is None


def test_the_memory_is_per_model() -> None:
    memory = SamplingMemory()
    memory.refused("openai/o3", "temperature", 0)

    assert memory.prepare("openai/o3", {"temperature": 0, "messages": []}) == ({"messages": []}, ["temperature"])
    assert memory.prepare("openai/gpt-4.1", {"temperature": 0}) == ({"temperature": 0}, [])


def test_the_memory_is_per_value_and_bounded() -> None:
    """One client's out-of-range value never drops another's valid one; a flood of new values is not kept."""
    memory = SamplingMemory()
    memory.refused("up/m", "top_p", 5)
    memory.refused("up/m", "logit_bias", {"b": 1, "a": 2})

    assert memory.prepare("up/m", {"top_p": 5}) == ({}, ["top_p"])
    assert memory.prepare("up/m", {"top_p": 0.3}) == ({"top_p": 0.3}, [])
    assert memory.prepare("up/m", {"logit_bias": {"a": 2, "b": 1}}) == ({}, ["logit_bias"])  # the same value
    for value in range(1000):
        memory.refused("up/m", "seed", value)
    assert sum(memory.prepare("up/m", {"seed": value})[1] == ["seed"] for value in range(1000)) == 64


def test_the_memory_is_per_client_and_bounded_across_clients() -> None:
    """What one key's requests learn leaves out nothing of another key's; many keys and models are not all kept."""
    memory = SamplingMemory()
    alice, bob = memory.owned_by("alice"), memory.owned_by("bob")
    alice.refused("up/m", "temperature", 0.5)

    assert alice.prepare("up/m", {"temperature": 0.5}) == ({}, ["temperature"])
    assert memory.owned_by("alice").prepare("up/m", {"temperature": 0.5}) == ({}, ["temperature"])  # a view, kept
    assert bob.prepare("up/m", {"temperature": 0.5}) == ({"temperature": 0.5}, [])
    for number in range(MODELS_KEPT + 100):
        memory.owned_by(f"key-{number}").refused("up/m", "temperature", 0.5)
    kept = sum(memory.owned_by(f"key-{n}").prepare("up/m", {"temperature": 0.5})[1] != [] for n in range(2000))
    assert kept == MODELS_KEPT - 1  # alice's pair took one place


def test_the_judges_dialect_memory_is_bounded_across_clients() -> None:
    memory = DialectMemory()
    for number in range(MODELS_KEPT + 100):
        memory.owned_by(f"key-{number}").rejected("up/m", "json_schema")
    stepped = sum(memory.owned_by(f"key-{n}").candidates("up/m")[0] != "json_schema" for n in range(MODELS_KEPT + 100))
    assert stepped == MODELS_KEPT
    assert memory.owned_by("key-0").sampling.prepare("up/m", {"seed": 1}) == ({"seed": 1}, [])
