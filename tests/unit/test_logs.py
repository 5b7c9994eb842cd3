"""Structured logs: one JSON object per line, with the generation id of the request being served."""

from __future__ import annotations

import json
import logging

from openfusion.observability.logs import JsonFormatter, TextFormatter, generation_id


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("openfusion", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_generation_id_and_extras() -> None:
    token = generation_id.set("gen-123-abc")
    try:
        line = json.loads(JsonFormatter().format(_record("request finished", status="ok", latency_ms=12)))
    finally:
        generation_id.reset(token)
    assert line["message"] == "request finished" and line["level"] == "info" and line["logger"] == "openfusion"
    assert line["generation_id"] == "gen-123-abc"
    assert line["status"] == "ok" and line["latency_ms"] == 12
    assert line["time"].endswith("+00:00")


def test_outside_a_request_there_is_no_generation_id() -> None:
    line = json.loads(JsonFormatter().format(_record("started")))
    assert "generation_id" not in line


def test_exceptions_are_one_json_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("openfusion", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]


def test_text_lines_end_with_the_generation_id() -> None:
    token = generation_id.set("gen-9")
    try:
        text = TextFormatter("%(levelname)s %(message)s").format(_record("hello"))
    finally:
        generation_id.reset(token)
    assert text == "INFO hello [gen-9]"
