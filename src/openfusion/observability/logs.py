"""Structured JSON logs; every line written while a request runs carries its generation id."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

generation_id: ContextVar[str | None] = ContextVar("openfusion_generation_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_STANDARD |= {"color_message"}  # uvicorn's terminal-coloured copy of the message


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, generation id, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = generation_id.get()
        if current is not None:
            line["generation_id"] = current
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        raw = orjson.dumps(line, default=str)
        return (raw if raw.isascii() else _RAW_BREAKS.sub(_escape, raw)).decode()


# C1 controls (NEL, U+0085, among them) and Unicode's line and paragraph separators in UTF-8, which orjson writes
# raw: log shippers and viewers that end lines at Unicode line breaks would start a new line there, so text from
# outside (a provider's error quoting the request) could forge one. Only a JSON string can hold them: as escapes
# they are the same JSON.
_RAW_BREAKS = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators, shown as escapes in a plain line:
# a message may quote text from outside (a provider's error, which may quote the request), and there a line break
# would start a forged line and a terminal escape would redraw the operator's screen.
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != ord("\t")} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the generation id when there is one; a message is always one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_UNPRINTABLE)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        current = generation_id.get()
        return f"{text} [{current}]" if current else text


class _Worker(logging.Filter):
    """Marks every line with the worker process that wrote it (`worker`: 1..N)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def configure_logging(*, level: str = "info", fmt: str = "json", worker: int | None = None) -> dict[str, object]:
    """Route openfusion's and uvicorn's logs through one handler; returns uvicorn's `log_config`.

    `worker`: this process is worker number `worker` of several; its lines say so.
    """
    fields = "%(asctime)s %(levelname)s %(name)s" + (" [worker %(worker)s]" if worker is not None else "")
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter(f"{fields}: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("openfusion")
    if worker is not None:
        handler.addFilter(_Worker(worker))
    root = logging.getLogger()
    # Replace a handler installed by an earlier call; leave others (a test's capture, say) alone.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "openfusion"] + [handler]
    root.setLevel(level.upper())
    return uvicorn_log_config(level)


def uvicorn_log_config(level: str) -> dict[str, object]:
    """uvicorn's `log_config`: its loggers keep their names but hand their lines to ours, in one format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
