"""The settings reference, generated from the settings models so that it cannot drift from the code.

Used three ways:
- as an MkDocs hook (`hooks:` in mkdocs.yml): the marker line in `configuration/reference.md` is replaced
  by one table per configuration section at build time;
- by the test suite, which checks that the tables cover every field of every settings model, each
  with a description, and that every environment variable the code reads is documented;
- from a shell, `python docs/gen_config.py`, to print the tables.

A field's description is the comment written above (or beside) it in its model's source, else its
pydantic `description`, else the entry in FALLBACK_DESCRIPTIONS below.
"""

from __future__ import annotations

import inspect
import io
import json
import tokenize
import types
import typing
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = "<!-- settings-reference -->"
REFERENCE_PAGE = "configuration/reference.md"
ENV_PREFIX = "OPENFUSION_"

# Descriptions of fields whose model carries no comment of its own (or a comment written for the code, not
# for an operator); keyed by the dotted path of the field. An entry here wins over the comment.
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "default_preset": "The preset behind `fusion` and `openrouter/fusion`; must exist.",
    "presets_dir": "Extra or overriding presets (the same as `--presets`).",
    "providers": "Configured providers, in precedence order, before the built-ins.",
    "builtin_providers": "`false`: only the configured `[[providers]]`.",
    "max_body_bytes": "Request bodies above this get 413.",
    "keepalive_interval_s": "An SSE comment (or a `ping` on `/v1/messages`) while a streamed fusion request has "
    "nothing else to send.",
    "retry": "The retry policy of every upstream call.",
    "http": "The shared upstream HTTP client.",
    "server": "The HTTP server's own limits.",
    "api_keys": "Comma-separated client keys, each named `env-` and the first 12 hex digits of its SHA-256 (every "
    "model, the `[limits]` defaults). "
    "No client keys at all: an open server.",
    "admin_keys": "Comma-separated admin keys (they read every key's activity), each named `admin-` and the first "
    "12 hex digits of its SHA-256",
    "redis_url": "Redis for the shared limit counters; unset: `REDIS_URL` from the environment, else in-process "
    "counters. A top-level key: before any table.",
    "keys": "Named client keys with their scopes and limits.",
    "limits": "With keys: every key's defaults; without keys: one budget shared by all clients.",
    "guards": "Request shapes refused with 400 before anything is sent.",
    "cors": "Cross-origin access for browser clients; off unless origins are listed.",
    "research": "Web research tools for the panel (and the judge).",
    "activity": "Every request and upstream call, recorded off the hot path.",
    "pricing": "Model prices for cost where upstreams do not report it.",
    "providers.name": "Unique; the name of a built-in replaces that built-in.",
    "providers.base_url": "Any OpenAI-compatible endpoint (`/chat/completions` is appended).",
    "providers.api_key_env": "The variable holding its key; unset or empty: no `Authorization` header.",
    "providers.models": "fnmatch patterns over the requested model slug.",
    "providers.strip_prefix": 'Send `"foo"` upstream for `"local/foo"`.',
    "providers.headers": "Extra headers on every call.",
    "retry.max_attempts": "Attempts in all (connect errors, timeouts, 429, 5xx).",
    "retry.initial_backoff_s": "Exponential backoff with full jitter, starting here …",
    "retry.max_backoff_s": "… capped here, unless the upstream sent `Retry-After`.",
    "http.connect_timeout_s": "Also the write and pool timeouts.",
    "http.max_connections": "Connections of the shared upstream client.",
    "server.max_header_bytes": "The request line and headers together; 431 beyond.",
    "server.max_headers": "Header lines per request; 431 beyond.",
    "research.search": "No `[research.search]` table: no `web_search` tool.",
    "research.fetch": "`web_fetch`: on by default.",
    "research.search.backend": "The search backend.",
    "research.search.max_results": "Results per search unless the model asks for 1–25.",
    "research.search.timeout_s": "Per search.",
    "research.fetch.enabled": "Whether `web_fetch` is offered.",
    "research.fetch.max_bytes": "Downloaded per page (a PDF above it is refused).",
    "research.fetch.max_chars": "Text given to the model (a truncation marker says so).",
    "research.fetch.timeout_s": "Per fetch, redirects included.",
    "research.fetch.max_redirects": "Every hop checked again.",
    "research.fetch.user_agent": "The `User-Agent` of fetches.",
    "activity.enabled": "`false` turns recording and the activity routes off (they answer 404).",
    "activity.queue_size": "Generations waiting to be written; beyond it they are dropped and counted.",
    "activity.batch_size": "Generations per write.",
    "activity.flush_interval_s": "How often the writer flushes a partial batch.",
    "activity.pool_max_size": "PostgreSQL connections.",
    "pricing.models": 'Prices by model slug, as `[pricing.models."openai/gpt-5"]` tables.',
    "pricing.models.prompt": "USD per prompt token.",
    "pricing.models.completion": "USD per completion token.",
    "keys.name": "Shown in logs and activity (letters, digits, `_ . -`, up to 64).",
    "keys.key_env": "The environment variable holding the key (exactly one of `key_env`, `key_sha256`).",
    "keys.key_sha256": 'The key stored as its SHA-256 (`printf %s "$KEY" | sha256sum`).',
    "keys.requests_per_minute": "Unset: the `[limits]` value.",
    "keys.max_concurrent_fusion": "Fusion runs in flight; unset: the `[limits]` value.",
    "keys.max_concurrent_requests": "Model-calling requests in flight (fusion and pass-through); unset: `[limits]`.",
    "keys.daily_spend_usd": "Spend since 00:00 UTC; unset: the `[limits]` value.",
    "limits.requests_per_minute": "A sliding window: at most N requests in any 60 s. Unset: no limit.",
    "limits.max_concurrent_fusion": "Fusion runs in flight. Unset: no limit.",
    "limits.max_concurrent_requests": "Model-calling requests in flight, fusion and pass-through. Unset: no limit.",
    "limits.daily_spend_usd": "Spend since 00:00 UTC. Unset: no limit.",
    "guards.max_messages": "Messages per request. Unset: no limit.",
    "guards.max_panel_size": "Panel size of a request (slug or tool mode).",
    "guards.max_tokens": "Every token limit a request sets. Unset: no limit.",
    "cors.allow_origins": 'Origins allowed, or `["*"]`.',
    "cors.max_age": "How long a browser may cache a preflight answer (seconds).",
}


@dataclass(frozen=True)
class Row:
    path: str  # dotted, e.g. "retry.max_attempts"
    key: str
    env: str | None
    type: str
    default: str
    allowed: str
    description: str


@dataclass(frozen=True)
class Section:
    title: str  # "Top level", "[retry]", "[[keys]]", '[pricing.models."<slug>"]'
    rows: tuple[Row, ...]


def settings_model() -> type[BaseModel]:
    from openfusion.settings import Settings

    return Settings


def sections(model: type[BaseModel] | None = None) -> list[Section]:
    """Every configuration section with its fields, in the models' order, top level first."""
    found: list[Section] = []
    _walk(model or settings_model(), path=(), env=ENV_PREFIX.rstrip("_"), title="Top level", out=found)
    return found


def render() -> str:
    """The reference tables as Markdown."""
    parts: list[str] = []
    for section in sections():
        parts.append(f"### `{section.title}`" if section.title != "Top level" else "### Top level")
        parts.append("")
        parts.append("| key | environment | type | default | description |")
        parts.append("|---|---|---|---|---|")
        for row in section.rows:
            env = f"`{row.env}`" if row.env else "—"
            kind = row.type + (f" ({row.allowed})" if row.allowed else "")
            parts.append(f"| `{row.key}` | {env} | {_cell(kind)} | {_cell(row.default)} | {_cell(row.description)} |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the reference page gets its tables."""
    if page.file.src_uri == REFERENCE_PAGE:
        if markdown.count(MARKER) != 1:
            raise ValueError(f"{REFERENCE_PAGE} must hold the line {MARKER} exactly once")
        return markdown.replace(MARKER, render())
    return markdown


# The walk over the models


def _walk(model: type[BaseModel], *, path: tuple[str, ...], env: str | None, title: str, out: list[Section]) -> None:
    rows: list[Row] = []
    nested: list[tuple[type[BaseModel], tuple[str, ...], str | None, str]] = []
    for name, field in model.model_fields.items():
        field_path = (*path, name)
        dotted = ".".join(field_path)
        field_env = f"{env}__{name.upper()}" if env and path else (f"{env}_{name.upper()}" if env else None)
        annotation = _strip_none(field.annotation)
        child, shape = _model_in(annotation)
        description = _description(model, name, field, dotted)
        if child is not None and shape == "table":
            nested.append((child, field_path, field_env, f"[{dotted}]"))
            if _is_optional(field.annotation):  # an optional table is worth a row: its absence means something
                rows.append(Row(dotted, name, field_env, "table", "none", "", description))
            continue
        if child is not None and shape == "array":
            nested.append((child, field_path, None, f"[[{dotted}]]"))
            rows.append(
                Row(
                    dotted,
                    name,
                    field_env,
                    f"array of `[[{dotted}]]` tables (JSON in the environment)",
                    _default(field),
                    "",
                    description,
                )
            )
            continue
        if child is not None and shape == "map":
            nested.append((child, field_path, None, f'[{dotted}."<slug>"]'))
            rows.append(
                Row(
                    dotted,
                    name,
                    field_env,
                    "table of tables (JSON in the environment)",
                    _default(field),
                    "",
                    description,
                )
            )
            continue
        rows.append(
            Row(
                dotted, name, field_env, _type_text(field.annotation), _default(field), _constraints(field), description
            )
        )
    if rows:
        out.append(Section(title, tuple(rows)))
    for child, child_path, child_env, child_title in nested:
        _walk(child, path=child_path, env=child_env, title=child_title, out=out)


def _strip_none(annotation: Any) -> Any:
    if _is_union(annotation):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_optional(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The settings model a field holds, and how: one table, an array of tables, or tables by name."""
    if _is_model(annotation):
        return annotation, "table"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and _is_model(args[0]):
        return args[0], "array"
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return args[1], "map"
    return None, ""


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "none"
    if origin is typing.Annotated:
        return _type_text(args[0])
    if _is_union(annotation):
        parts = list(dict.fromkeys(_type_text(arg) for arg in args if arg is not type(None)))
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin is typing.Literal:
        return " or ".join(f"`{json.dumps(value)}`" for value in args)
    if origin is list:
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_text(args[1])}" if args else "table"
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
        SecretStr: "string (secret)",
        IPv4Network: "IP network",
        IPv6Network: "IP network",
    }
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    metadata = list(field.metadata)
    annotation = field.annotation
    for arg in typing.get_args(annotation) if _is_union(annotation) else ():
        if typing.get_origin(arg) is typing.Annotated:
            for extra in typing.get_args(arg)[1:]:
                metadata += getattr(extra, "metadata", [extra])
    found: list[str] = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            found.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            found.append(f"at most {item.max_length}")
        elif getattr(item, "pattern", None):
            found.append(f"matching `{item.pattern}`")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "—"
    return f"`{_toml(value)}`" if value is not None else "none"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _description(model: type[BaseModel], name: str, field: FieldInfo, dotted: str) -> str:
    return FALLBACK_DESCRIPTIONS.get(dotted) or _source_comment(model, name) or (field.description or "")


def _source_comment(model: type[BaseModel], name: str) -> str:
    """The comment lines right above a field's definition, and a comment on its line, in the class that defines it."""
    for cls in model.__mro__:
        if name in inspect.get_annotations(cls):
            break
    else:
        return ""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return ""
    lines = source.splitlines()
    comments = {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and line.startswith("    ") and not line.startswith("     "):
            above: list[str] = []
            previous = number - 1
            while previous >= 1 and lines[previous - 1].strip().startswith("#"):
                above.insert(0, lines[previous - 1].strip().lstrip("#").strip())
                previous -= 1
            beside = comments.get(number, "").lstrip("#").strip() if not stripped.startswith("#") else ""
            text = " ".join([*above, beside]).strip()
            return text[:1].upper() + text[1:] if text else ""
    return ""


def _cell(text: str) -> str:
    """Text for a table cell: a pipe outside code escaped (MkDocs' tables leave those inside code alone)."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(part if index % 2 else part.replace("|", "\\|") for index, part in enumerate(parts))


if __name__ == "__main__":
    print(render())  # noqa: T201
