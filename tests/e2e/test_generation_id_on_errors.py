"""An error carries X-Generation-Id too, on every surface, when its request has an activity record.

An operator handed a failed request's id finds its record: refused while its body was read, refused before
it ran (its plan, its access), or failed while it ran (every panelist down).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from fakes.upstream import FakeUpstream, Script

from .test_activity_wiring import generation

Start = Callable[..., AbstractContextManager[str]]
HI = [{"role": "user", "content": "Hi"}]
BAD_PRESET = [{"id": "fusion", "preset": "nope"}]
SURFACES = {"/v1/chat/completions": "completions", "/v1/responses": "responses", "/v1/messages": "messages"}
# Per surface: a body refused while it is parsed, one refused by the fusion plan, one whose every panelist fails.
CASES: dict[str, list[tuple[dict[str, Any], int]]] = {
    "/v1/chat/completions": [
        ({"model": "fake/solo", "messages": [{"role": "robot", "content": "x"}]}, 400),
        ({"model": "fusion/trio", "messages": HI, "plugins": BAD_PRESET}, 400),
        ({"model": "fusion/trio", "messages": HI}, 502),
    ],
    "/v1/responses": [
        ({"model": "fake/solo", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}, 400),
        ({"model": "fusion/trio", "input": "Hi", "plugins": BAD_PRESET}, 400),
        ({"model": "fusion/trio", "input": "Hi"}, 502),
    ],
    "/v1/messages": [
        ({"model": "fake/solo", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
         400),
        ({"model": "fusion/trio", "max_tokens": 10, "messages": HI, "plugins": BAD_PRESET}, 400),
        ({"model": "fusion/trio", "max_tokens": 10, "messages": HI}, 502),
    ],
}  # fmt: skip


def test_errors_carry_the_generation_id_of_their_record(
    upstream: FakeUpstream, start_server: Start, tmp_path: Path
) -> None:
    for model in "abc":
        upstream.script(model, Script(status=500))
    got: list[tuple[str, dict[str, Any], httpx.Response]] = []
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, retry={"max_attempts": 1}) as url:
        for path, cases in CASES.items():
            got += [(path, body, httpx.post(f"{url}{path}", json=body, timeout=20)) for body, _ in cases]
        records = {r.headers.get("x-generation-id"): generation(url, r.headers["x-generation-id"])
                   for _, _, r in got if "x-generation-id" in r.headers}  # fmt: skip

    statuses = [status for cases in CASES.values() for _, status in cases]
    assert [response.status_code for _, _, response in got] == statuses
    for path, body, response in got:
        generation_id = response.headers.get("x-generation-id")
        assert generation_id is not None, (path, body, response.text)
        record = records[generation_id]
        assert record["status"] == "error" and record["api_type"] == SURFACES[path], record
        assert record["status_code"] == response.status_code and record["requested_model"] == body["model"]
