"""End to end against real llama.cpp servers: interop that only a real server proves.

The model is tiny (135M parameters): these tests check mechanics (framing, usage, structured output,
cancellation, concurrency), never answer quality.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from openfusion.localdemo.config import MAX_COMPLETION_TOKENS
from openfusion.localdemo.servers import LlamaServer

QUESTION = [{"role": "user", "content": "Name one primary colour."}]


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=180)


def test_fusion_non_stream_through_the_sdk(openfusion_url: str) -> None:
    with sdk(openfusion_url) as client:
        response = client.chat.completions.create(
            model="fusion/local", messages=QUESTION, extra_body={"plugins": [{"id": "fusion", "expose": True}]}
        )

    assert response.choices[0].message.content
    fusion = response.model_extra["fusion"]
    assert [p["status"] for p in fusion["panel"]] == ["ok", "ok", "ok"]
    # The judge's structured output, as this server accepts it (json_schema is refused with a 500).
    assert fusion["judge"]["structured_output"] == "json_object"
    judge = fusion["judge"]
    if judge["status"] == "ok":
        assert set(fusion["analysis"]) == {
            "consensus",
            "contradictions",
            "partial_coverage",
            "unique_insights",
            "blind_spots",
        }
    else:
        # A 135M model under a JSON grammar mostly writes until the token limit: llama.cpp reports that as
        # finish_reason "length", and a cut analysis is never taken as valid, however well it parses. One
        # repair call, then the synthesizer answers from the panel alone.
        assert (judge["failure_reason"], judge["attempts"]) == ("judge_truncated", 2), judge
        assert judge["usage"]["completion_tokens"] == 2 * MAX_COMPLETION_TOKENS, judge
        assert fusion["analysis"] is None
    # Usage is summed from the real usage fields of every call.
    parts = [p["usage"] for p in fusion["panel"]] + [fusion["judge"]["usage"], fusion["synthesizer"]["usage"]]
    assert fusion["usage_complete"] is True
    assert response.usage.prompt_tokens == sum(p["prompt_tokens"] for p in parts) > 0
    assert response.usage.completion_tokens == sum(p["completion_tokens"] for p in parts) > 0


def test_fusion_stream_relays_deltas_one_by_one(openfusion_url: str) -> None:
    arrivals: list[tuple[float, str]] = []
    with sdk(openfusion_url) as client:
        for chunk in client.chat.completions.create(model="fusion/local", messages=QUESTION, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
            last = chunk
    assert len(arrivals) > 3
    # Tokens arrive spread over the generation, not in one burst at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 0.05
    assert last.model_extra["fusion"]["synthesizer"]["model"] == "local2/smollm2"
    assert last.usage is not None and last.usage.total_tokens > 0


def test_pass_through_non_stream_and_stream(openfusion_url: str) -> None:
    with sdk(openfusion_url) as client:
        plain = client.chat.completions.create(model="local3/smollm2", messages=QUESTION, max_tokens=16)
        chunks = list(
            client.chat.completions.create(model="local3/smollm2", messages=QUESTION, max_tokens=16, stream=True)
        )
    assert plain.model == "smollm2" and plain.choices[0].message.content
    assert plain.usage is not None and plain.usage.completion_tokens <= 16
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_client_disconnect_stops_the_real_generation(openfusion_url: str, llama_servers: list[LlamaServer]) -> None:
    body = {
        "model": "local3/smollm2",
        "stream": True,
        "max_tokens": 1500,
        "temperature": 1.0,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    }
    with httpx.stream("POST", f"{openfusion_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(5)]
    assert any(line.startswith("data: ") for line in received)
    # The server does one request at a time: had it kept generating 1500 tokens, this would queue behind it.
    started = time.monotonic()
    answer = httpx.post(
        f"{llama_servers[2].base_url}/chat/completions",
        timeout=120,
        json={"model": "smollm2", "messages": QUESTION, "max_tokens": 4},
    )
    waited = time.monotonic() - started
    assert answer.status_code == 200
    assert waited < 8, f"the abandoned generation kept the server busy for {waited:.1f} s"


def test_two_concurrent_fusion_requests_both_complete(openfusion_url: str) -> None:
    results: list[Any] = [None, None]

    def ask(slot: int) -> None:
        with sdk(openfusion_url) as client:
            results[slot] = client.chat.completions.create(model="fusion/local", messages=QUESTION)

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for result in results:
        assert result is not None and result.choices[0].message.content
        assert all(p["status"] == "ok" for p in result.model_extra["fusion"]["panel"])


@pytest.mark.parametrize("stream", [False, True])
def test_curl_style_raw_request(openfusion_url: str, stream: bool) -> None:
    response = httpx.post(
        f"{openfusion_url}/v1/chat/completions",
        timeout=180,
        json={"model": "fusion", "messages": QUESTION, "stream": stream},
    )
    assert response.status_code == 200
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["choices"][0]["message"]["content"]


def test_the_local_command_serves_a_fusion_a_person_can_curl(tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        str(Path(sys.executable).parent / "openfusion"),
        "local",
        "--port",
        str(port),
        "--workdir",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "openfusion local did not start"
            time.sleep(0.5)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", timeout=180, json={"model": "fusion", "messages": QUESTION}
        )
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert response.status_code == 200, output
    assert response.json()["fusion"]["preset"] == "local"
    assert "curl http://127.0.0.1" in output and (tmp_path / "openfusion.toml").exists()
    # Its activity store is in its work directory: demo traffic never mixes with a real server's history.
    assert (tmp_path / "activity.sqlite3").is_file()
    # Stopped with a plain SIGTERM, it stopped its llama.cpp servers too: none is left listening.
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)/v1", (tmp_path / "openfusion.toml").read_text())]
    assert len(ports) == 3
    for llama_port in ports:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{llama_port}/v1/models", timeout=2)
