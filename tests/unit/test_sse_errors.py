"""SSE framing, error chunks and the error tree's wire shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from openfusion import sse
from openfusion.errors import (
    AuthenticationFailed,
    ConfigError,
    FusionFailed,
    InvalidRequest,
    ModelNotFound,
    OpenFusionError,
    PayloadTooLarge,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    error_type_for_status,
    format_loc,
    invalid_request_from,
)

# --- SSE framing -------------------------------------------------------------------------------------


def test_encode_is_one_data_event() -> None:
    payload = {"id": "gen-1", "choices": [{"delta": {"content": "héllo\nworld"}}]}
    raw = sse.encode(payload)
    assert raw.startswith(b"data: ")
    assert raw.endswith(b"\n\n")
    assert raw.count(b"\n") == 2  # the newline inside the content is escaped, not framed
    assert json.loads(raw[len(b"data: ") : -2]) == payload


def test_encode_is_compact() -> None:
    assert sse.encode({"a": 1, "b": [True, None]}) == b'data: {"a":1,"b":[true,null]}\n\n'


def test_done_and_keepalive_bytes() -> None:
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.KEEPALIVE == b": OPENFUSION PROCESSING\n\n"
    assert sse.KEEPALIVE.startswith(b":")  # a comment: clients ignore it


def chunk(error: OpenFusionError) -> dict[str, Any]:
    return sse.error_chunk(error, generation_id="gen-1-x", model="openrouter/fusion", created=1700000000)


def test_error_chunk_shape() -> None:
    body = chunk(UpstreamStatusError("rate limited", model="a/x", provider="p", upstream_status=429))
    assert body["id"] == "gen-1-x"
    assert body["object"] == "chat.completion.chunk"
    assert body["model"] == "openrouter/fusion"
    assert body["created"] == 1700000000
    assert body["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    error = body["error"]
    assert error["message"] == "rate limited"
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_error"
    assert error["metadata"] == {
        "model": "a/x",
        "provider": "p",
        "upstream_status": 429,
        "error_type": "rate_limit_exceeded",
    }
    json.loads(sse.encode(body)[6:])


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (InvalidRequest("bad", param="temperature"), "invalid_request"),
        (ModelNotFound("no such model"), "not_found"),
        (UpstreamTimeout("slow", model="a/x", provider="p"), "timeout"),
        (UpstreamConnectionError("down", model="a/x", provider="p"), "provider_unavailable"),
        (UpstreamStatusError("busy", model="a/x", provider="p", upstream_status=503), "provider_overloaded"),
        (FusionFailed("all failed", code="all_panels_failed"), "provider_unavailable"),
        (OpenFusionError("boom"), "server"),
    ],
)
def test_error_chunk_error_type(error: OpenFusionError, error_type: str) -> None:
    body = chunk(error)
    assert body["error"]["metadata"]["error_type"] == error_type
    assert body["error"]["message"] == error.message
    assert body["error"]["code"] == error.code
    assert body["choices"][0]["finish_reason"] == "error"


def test_error_chunk_does_not_mutate_the_error() -> None:
    error = FusionFailed("x", code="judge_failed", failures=[{"model": "a/x"}])
    chunk(error)
    assert error.metadata() == {"failed_models": [{"model": "a/x"}]}
    assert "error_type" not in error.to_body()["metadata"]


# --- error bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        (OpenFusionError("x"), 500, "server_error", None),
        (ConfigError("x"), 500, "server_error", None),
        (InvalidRequest("x"), 400, "invalid_request_error", "invalid_request"),
        (AuthenticationFailed("x"), 401, "authentication_error", "invalid_api_key"),
        (ModelNotFound("x"), 404, "invalid_request_error", "model_not_found"),
        (PayloadTooLarge("x"), 413, "invalid_request_error", "payload_too_large"),
        (UpstreamError("x", model="m", provider="p"), 502, "upstream_error", "upstream_error"),
        (UpstreamTimeout("x", model="m", provider="p"), 504, "upstream_error", "upstream_timeout"),
        (UpstreamConnectionError("x", model="m", provider="p"), 502, "upstream_error", "upstream_unreachable"),
        (UpstreamProtocolError("x", model="m", provider="p"), 502, "upstream_error", "upstream_invalid_response"),
        (FusionFailed("x", code="judge_failed"), 502, "upstream_error", "judge_failed"),
    ],
)
def test_error_classes(error: OpenFusionError, status: int, error_type: str, code: str | None) -> None:
    assert error.status_code == status
    body = error.to_body()
    assert body["type"] == error_type
    assert body["code"] == code
    assert body["message"] == "x"
    assert str(error) == "x"


def test_to_body_of_a_client_error_has_no_metadata() -> None:
    assert InvalidRequest("Bad value.", param="plugins[0].model").to_body() == {
        "message": "Bad value.",
        "type": "invalid_request_error",
        "param": "plugins[0].model",
        "code": "invalid_request",
    }


def test_code_override_is_per_instance() -> None:
    assert InvalidRequest("x", code="fusion_recursion").code == "fusion_recursion"
    assert InvalidRequest("x").code == "invalid_request"


def test_upstream_error_metadata() -> None:
    assert UpstreamError("x", model="a/m", provider="p").to_body()["metadata"] == {"model": "a/m", "provider": "p"}
    body = UpstreamStatusError("x", model="a/m", provider="p", upstream_status=402, retry_after=3.0).to_body()
    assert body["metadata"] == {"model": "a/m", "provider": "p", "upstream_status": 402}
    assert body["param"] is None


def test_fusion_failed_metadata() -> None:
    failures = [{"model": "a/x", "error": "timeout"}, {"model": "b/y", "error": "429"}]
    assert FusionFailed("x", code="all_panels_failed", failures=failures).to_body()["metadata"] == {
        "failed_models": failures
    }
    assert "metadata" not in FusionFailed("x", code="all_panels_failed").to_body()


# --- pydantic errors to InvalidRequest ---------------------------------------------------------------


class Inner(BaseModel):
    value: int = Field(ge=1)


class Outer(BaseModel):
    name: str
    items: list[Inner] = []
    checked: str = "ok"

    @field_validator("checked")
    @classmethod
    def _must_be_ok(cls, value: str) -> str:
        if value != "ok":
            raise ValueError("must be ok")
        return value


def validation_error(data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return info.value


@pytest.mark.parametrize(
    ("loc", "prefix", "expected"),
    [
        (("plugins", 0, "analysis_models", 1), "", "plugins[0].analysis_models[1]"),
        (("analysis_models", 1), "plugins[0]", "plugins[0].analysis_models[1]"),
        (("reasoning", "effort"), "", "reasoning.effort"),
        (("temperature",), "", "temperature"),
        ((), "", "body"),
        ((), "plugins[2]", "plugins[2]"),
        ((0, "role"), "messages", "messages[0].role"),
    ],
)
def test_format_loc(loc: tuple[Any, ...], prefix: str, expected: str) -> None:
    assert format_loc(loc, prefix=prefix) == expected


def test_invalid_request_from_range_error() -> None:
    error = invalid_request_from(validation_error({"name": "n", "items": [{"value": 1}, {"value": 0}]}), prefix="p")
    assert isinstance(error, InvalidRequest)
    assert error.param == "p.items[1].value"
    assert error.message.startswith("Invalid value for 'p.items[1].value': ")
    assert "greater than or equal to 1" in error.message


def test_invalid_request_from_missing_field() -> None:
    error = invalid_request_from(validation_error({}))
    assert error.param == "name"
    assert error.message == "Missing required parameter: 'name'."


def test_invalid_request_from_strips_value_error_prefix() -> None:
    error = invalid_request_from(validation_error({"name": "n", "checked": "no"}))
    assert error.message == "Invalid value for 'checked': must be ok."
    assert "Value error" not in error.message


def test_invalid_request_from_hides_pydantic_internals() -> None:
    error = invalid_request_from(validation_error({"name": 5}))
    assert error.param == "name"
    assert "pydantic" not in error.message
    assert "errors.pydantic.dev" not in error.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "unmapped"),
        (400, "invalid_request"),
        (401, "authentication"),
        (402, "payment_required"),
        (403, "permission_denied"),
        (404, "not_found"),
        (408, "timeout"),
        (413, "payload_too_large"),
        (422, "unprocessable"),
        (429, "rate_limit_exceeded"),
        (418, "unmapped"),
        (500, "server"),
        (502, "provider_unavailable"),
        (503, "provider_overloaded"),
        (504, "timeout"),
        (529, "server"),
    ],
)
def test_error_type_for_status(status: int | None, expected: str) -> None:
    assert error_type_for_status(status) == expected
