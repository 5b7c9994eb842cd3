"""Bad input gets a clear OpenAI-format error; the listing and health routes; the real console script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def assert_openai_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and "pydantic" not in error["message"].lower()
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        # Longer than any slug: refused before any call (it would not fit the activity record either).
        ({"model": "fake/" + "x" * 300, "messages": HI}, "model"),
        ({"model": "fake/a", "models": ["fake/b", "fake/" + "x" * 300], "messages": HI}, "models[1]"),
        ({"model": "fusion/trio"}, "messages"),
        ({"model": "fusion/trio", "messages": []}, "messages"),
        ({"model": "fusion/trio", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "fusion/trio", "messages": HI, "temperature": 2.5}, "temperature"),
        ({"model": "fusion/trio", "messages": HI, "max_tokens": 0}, "max_tokens"),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "analysis_models": []}]},
            "plugins[0].analysis_models",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "analysis_models": ["fake/a"] * 9}]},
            "plugins[0].analysis_models",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "max_tool_calls": 17}]},
            "plugins[0].max_tool_calls",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "temperature": -1}]},
            "plugins[0].temperature",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "preset": "nope"}]},
            "plugins[0].preset",
        ),
        (
            {
                "model": "fusion/trio",
                "messages": HI,
                "plugins": [{"id": "fusion", "analysis_models": ["fake/a", "fusion"]}],
            },
            "plugins[0].analysis_models[1]",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "model": "openrouter/fusion:free"}]},
            "plugins[0].model",
        ),
        (
            {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "synthesis_model": "fusion/trio"}]},
            "plugins[0].synthesis_model",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_requests_are_400_before_any_byte(
    server: str, upstream: FakeUpstream, body: dict[str, Any], param: str, stream: bool
) -> None:
    response = httpx.post(f"{server}{CHAT}", json={**body, "stream": stream})

    assert_openai_error(response, 400, param=param)
    assert upstream.calls == []


def test_the_recursion_guard_through_the_sdk(server: str) -> None:
    with (
        openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        sdk.chat.completions.create(
            model="fusion",
            messages=HI,
            extra_body={"plugins": [{"id": "fusion", "analysis_models": ["fusion/budget"]}]},
        )
    assert caught.value.body["param"] == "plugins[0].analysis_models[0]"  # type: ignore[index]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_400(server: str, raw: bytes) -> None:
    response = httpx.post(f"{server}{CHAT}", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, param="body")


def test_unknown_fusion_preset_is_404(server: str) -> None:
    response = httpx.post(f"{server}{CHAT}", json={"model": "fusion/nope", "messages": HI})
    error = assert_openai_error(response, 404, param="model", code="model_not_found")
    assert "fusion/trio" in error["message"]


def test_a_model_no_provider_serves_is_404_naming_what_would_serve_it(server: str) -> None:
    response = httpx.post(f"{server}{CHAT}", json={"model": "acme/model-x", "messages": HI})
    error = assert_openai_error(response, 404, code="model_not_found")
    assert "acme/model-x" in error["message"] and "[[providers]]" in error["message"]


def test_oversized_bodies_are_413(start_server: Any, upstream: FakeUpstream) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    with start_server(max_body_bytes=4096) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": big})

        def chunked() -> Any:
            yield b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        streamed = httpx.post(f"{url}{CHAT}", content=chunked(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, code="payload_too_large")
    assert_openai_error(streamed, 413, code="payload_too_large")
    assert upstream.calls == []


def test_unknown_routes_and_methods_are_openai_errors(server: str) -> None:
    assert_openai_error(httpx.get(f"{server}/v1/nothing-here"), 404)
    wrong_method = httpx.get(f"{server}{CHAT}")
    assert_openai_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"


def test_models_lists_fusion_slugs_and_presets(server: str) -> None:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k") as sdk:
        models = {m.id: m for m in sdk.models.list()}

    assert {
        "openrouter/fusion",
        "fusion",
        "fusion/trio",
        "fusion/quality",
        "fusion/budget",
        "fusion/fast",
        "fusion/self",
        "openrouter/fusion-flash",
    } <= set(models)
    trio = models["fusion/trio"].model_extra
    assert trio["fusion"]["analysis_models"] == ["fake/a", "fake/b", "fake/c"]
    assert trio["description"] == "three fake panelists"
    assert models["fusion"].model_extra["fusion"]["preset"] == "trio"  # the configured default preset
    # Tool-capable, so model pickers that filter on tools keep it; prices unknown here: OpenRouter's "-1".
    assert {"tools", "tool_choice", "reasoning", "response_format"} <= set(trio["supported_parameters"])
    assert trio["pricing"] == {"prompt": "-1", "completion": "-1", "request": "0"}
    assert trio["architecture"]["input_modalities"] == ["text", "image"]


def test_models_retrieve_one_model_with_the_openai_and_anthropic_sdks(server: str) -> None:
    """`models.retrieve()` asks `GET /v1/models/{id}`: a fusion model as listed, a model a provider serves, and 404
    in the SDK's own error for one nothing serves."""
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        trio, fusion, served = (
            sdk.models.retrieve("fusion/trio"),
            sdk.models.retrieve("fusion"),
            sdk.models.retrieve("fake/solo"),
        )
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.models.retrieve("nobody/serves-this")
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("fusion/no-such-preset")
    assert trio.model_extra["fusion"]["analysis_models"] == ["fake/a", "fake/b", "fake/c"]  # type: ignore[index]
    assert fusion.id == "fusion" and served.id == "fake/solo" and served.owned_by == "fake"
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with anthropic.Anthropic(base_url=server, api_key="k", max_retries=0) as claude:
        info = claude.models.retrieve("fusion/trio")
    assert (info.id, info.type, info.display_name) == ("fusion/trio", "model", "Fusion (trio)")


def test_models_prices_a_preset_whose_prices_are_known(start_server: Any) -> None:
    prices = {f"fake/{m}": {"prompt": 1e-6, "completion": 2e-6} for m in ("a", "b", "c", "judge", "synth")}
    with start_server(pricing={"models": prices}) as url:
        listing = httpx.get(f"{url}/v1/models").json()

    trio = next(m for m in listing["data"] if m["id"] == "fusion/trio")
    # Every model of the preset reads the prompt and writes about as much as the answer.
    assert trio["pricing"] == {"prompt": "5e-06", "completion": "1e-05", "request": "0"}
    # The Anthropic Models API's fields too (Claude Code lists models with them).
    assert trio["type"] == "model" and trio["display_name"] == "Fusion (trio)" and trio["created_at"]
    assert listing["has_more"] is False and listing["first_id"] == listing["data"][0]["id"]


def test_healthz(server: str) -> None:
    response = httpx.get(f"{server}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_console_script_serves_a_fused_answer(
    fake_upstream: Any, upstream: FakeUpstream, tmp_path: Path, presets_dir: Path
) -> None:
    _, upstream_url = fake_upstream
    config = tmp_path / "openfusion.toml"
    config.write_text(
        f'default_preset = "trio"\n\n[[providers]]\nname = "fake"\nbase_url = "{upstream_url}/v1"\n'
        f'api_key_env = "FAKE_KEY"\nmodels = ["fake/*"]\nstrip_prefix = true\n'
    )
    port = _free_port()
    script = Path(sys.executable).parent / "openfusion"
    env = {**os.environ, "FAKE_KEY": "sk-from-env"}
    process = subprocess.Popen(
        [str(script), "serve", "--port", str(port), "--config", str(config), "--presets", str(presets_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "openfusion serve did not start"
            time.sleep(0.1)
        with openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as sdk:
            response = sdk.chat.completions.create(model="fusion", messages=HI)
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0].decode()
    assert response.choices[0].message.content == "Answer from synth."
    assert upstream.calls_for("a")[0].headers["authorization"] == "Bearer sk-from-env"
    assert "sk-from-env" not in output


def test_the_console_script_refuses_a_bad_config_clearly(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('default_preset = "missing"\n')
    result = subprocess.run(
        [str(Path(sys.executable).parent / "openfusion"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "missing" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/v1/responses/", "/v1/messages/", "/v1/models/"])
def test_a_trailing_slash_is_a_404_not_a_redirect_steered_by_the_host_header(
    server: str, upstream: FakeUpstream, path: str
) -> None:
    response = httpx.post(f"{server}{path}", json={"model": "fake/plain"}, headers={"Host": "evil.example"})
    assert response.status_code in (404, 405) and "location" not in response.headers, response.headers
    body = response.json()
    assert body["type"] == "error" if path.startswith("/v1/messages") else "message" in body["error"]
    assert upstream.calls == []
