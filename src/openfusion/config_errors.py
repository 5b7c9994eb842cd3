"""Configuration errors a person can act on: the file, the key, what is wrong, an example; no pydantic internals."""

from __future__ import annotations

import difflib
import json
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

# Examples for required keys that have no default to show.
_EXAMPLES = {
    "name": '"openrouter"',
    "base_url": '"https://openrouter.ai/api/v1"',
    "models": '["openai/*", "anthropic/*"]',
    "analysis_models": '["openai/gpt-5", "anthropic/claude-sonnet-4.5"]',
    "model": '"openai/gpt-5"',
}
# Values of these keys are never repeated in a message (they may be secrets).
_SECRET_WORDS = ("key", "secret", "password", "token", "url")
_MAX_SHOWN = 40  # longer values are not repeated either


def describe(exc: ValidationError, *, model: type[BaseModel], source: str, env_prefix: str | None = None) -> str:
    """`source:` then one line per problem: `  [retry] max_attempts: should be ... (got 0); e.g. max_attempts = 3`."""
    lines = [f"{source}:"]
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        where = _location(loc)
        if env_prefix and loc and not any(isinstance(part, int) for part in loc):
            where += f" (or {env_prefix}{'__'.join(str(part).upper() for part in loc)})"
        lines.append(f"  {where}: {_problem(error, model, loc)}")
    return "\n".join(lines)


def _location(loc: tuple[Any, ...]) -> str:
    """A TOML reading of a pydantic location: `[retry] max_attempts`, `[[providers]] #2 models`."""
    if not loc:
        return "(top level)"
    parts: list[str] = []
    for index, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        nxt = loc[index + 1] if index + 1 < len(loc) else None
        parts.append(f"[[{part}]] #{nxt + 1}" if isinstance(nxt, int) else f"[{part}]")
    last = loc[-1]
    key = f"item #{last + 1}" if isinstance(last, int) else str(last)
    return " ".join([*parts, key]) if parts else key


def _problem(error: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind, key = error["type"], str(loc[-1]) if loc else ""
    parent = _model_at(model, loc[:-1])
    if kind == "extra_forbidden":
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, known, n=1)
        return "is not a setting here" + (f": did you mean {close[0]}?" if close else f" (known: {', '.join(known)})")
    if kind == "missing":
        return "is required" + _example(parent, key)
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else "is invalid"
    message = message.removeprefix("value error, ").removeprefix("input ")
    if not message.startswith(("should", "must")) or not _repeatable(key, error.get("input")):
        return message + _example(parent, key)
    return f"{message} (got {_shown(error['input'])})" + _example(parent, key)


def _repeatable(key: str, value: Any) -> bool:
    if any(word in key.lower() for word in _SECRET_WORDS):
        return False
    if isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and len(value) <= _MAX_SHOWN


def _shown(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, str):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _example(parent: type[BaseModel] | None, key: str) -> str:
    """`; e.g. key = value` from the field's default, else a known example; "" when there is none."""
    field = parent.model_fields.get(key) if parent else None
    if field is not None and field.default not in (None, PydanticUndefined):
        default = field.default
        if isinstance(default, bool | int | float | str) and not any(w in key.lower() for w in _SECRET_WORDS):
            return f"; e.g. {key} = {_shown(default)} (the default)"
    return f"; e.g. {key} = {_EXAMPLES[key]}" if key in _EXAMPLES else ""


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the last key of `path` (list indexes skipped), when it can be told."""
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _model_in(current.model_fields[part].annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as `Model`, `Model | None` or `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
