"""Configuration errors a person can act on: the file, the key, what is wrong, an example; no pydantic internals."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
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
    """`source:` then one line per problem: `  [retry] max_attempts: should be ... (got 0); e.g. max_attempts = 3`.

    A key that may hold one of several types (`workers`: a number or "auto") gets one line saying each.
    """
    problems: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = _without_union_tags(model, tuple(error["loc"]))
        found = problems.setdefault(loc, [])
        if (problem := _problem(error, model, loc)) not in found:
            found.append(problem)
    lines = [f"{source}:"]
    for loc, found in problems.items():
        where = _location(loc)
        if env_prefix and loc and not any(isinstance(part, int) for part in loc):
            where += f" (or {env_prefix}{'__'.join(str(part).upper() for part in loc)})"
        lines.append(f"  {where}: {'; or '.join(found)}{_example(_model_at(model, loc[:-1]), _key(loc))}")
    return "\n".join(lines)


def describe_environment(exc: Exception, *, environ: Mapping[str, str], env_prefix: str) -> str:
    """The variables of a setting whose list or table value in the environment is not JSON (pydantic-settings' error
    names only the setting); their values are never repeated (they may be secrets)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    name = f"{env_prefix}{match.group(1)}".upper() if match else env_prefix
    variables = sorted(v for v in environ if v.upper() == name or v.upper().startswith(f"{name}__")) or [name]
    return (
        f"invalid configuration in the environment: {', '.join(variables)}: a list or table must be written as JSON, "
        "e.g. OPENFUSION_CORS__ALLOW_ORIGINS='[\"https://chat.example.com\"]' or "
        "OPENFUSION_RETRY='{\"max_attempts\": 5}'"
    )


def _without_union_tags(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The location less pydantic's names for the members of a union (`workers` for `workers.constrained-int`)."""
    kept: list[Any] = []
    annotation: Any = model
    for part in loc:
        members = _members(annotation)
        if len(members) > 1 and isinstance(part, str) and model_in(annotation) is None:
            annotation = None  # which member the rest is about cannot be told: stop following the types
            continue
        kept.append(part)
        annotation = _step(members[0] if len(members) == 1 else annotation, part)
    return tuple(kept)


def _members(annotation: Any) -> list[Any]:
    """The types a value may have (`int | None`: int; a bare type: itself), `Annotated` unwrapped."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [_members(arg)[0] for arg in typing.get_args(annotation) if arg is not type(None)]
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation of `part` inside `annotation` (a model's field, a list's item, a dict's value); None: unknown."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args:
        return args[0]
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _key(loc: tuple[Any, ...]) -> str:
    return str(loc[-1]) if loc else ""


def _location(loc: tuple[Any, ...]) -> str:
    """A TOML reading of a pydantic location: `[retry] max_attempts`, `[[providers]] #2 models`, `tools item #1`."""
    if not loc:
        return "(top level)"
    parts: list[str] = []
    for index, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        nxt = loc[index + 1]
        if not isinstance(nxt, int):
            parts.append(f"[{part}]")
        elif index + 1 < len(loc) - 1:  # a table in an array of tables
            parts.append(f"[[{part}]] #{nxt + 1}")
    last = loc[-1]
    if isinstance(last, int):  # an item of an array of values
        key = f"{loc[-2]} item #{last + 1}" if len(loc) > 1 and not isinstance(loc[-2], int) else f"item #{last + 1}"
    else:
        key = str(last)
    return " ".join([*parts, key]) if parts else key


def _problem(error: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind, key = error["type"], _key(loc)
    parent = _model_at(model, loc[:-1])
    if kind == "extra_forbidden":
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, known, n=1)
        return "is not a setting here" + (f": did you mean {close[0]}?" if close else f" (known: {', '.join(known)})")
    if kind == "missing":
        return "is required"
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else "is invalid"
    message = message.removeprefix("value error, ").removeprefix("input ")
    if not message.startswith(("should", "must")) or not _repeatable(key, error.get("input")):
        return message
    return f"{message} (got {_shown(error['input'])})"


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
        current = model_in(current.model_fields[part].annotation)
    return current


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as `Model`, `Model | None` or `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = model_in(arg)
            if found is not None:
                return found
    return None
