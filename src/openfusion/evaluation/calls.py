"""The evaluation's calls to a running openfusion, through the official openai SDK (async)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openfusion.evaluation.errors import MissingDependency
from openfusion.evaluation.grader import RESPONSE_FORMAT, VERDICT_SCHEMA, Verdict, VerdictError, parse_verdict
from openfusion.evaluation.records import AnswerRecord
from openfusion.protocol import reported_cost

if TYPE_CHECKING:
    from openai import AsyncOpenAI

_MAX_ERROR_CHARS = 300


def make_client(*, base_url: str, api_key: str, timeout: float, max_retries: int) -> AsyncOpenAI:
    """An async OpenAI client for the openfusion at `base_url`."""
    try:
        import openai
    except ImportError:
        raise MissingDependency("openai", "calling the models") from None
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


async def fetch_panels(client: AsyncOpenAI) -> dict[str, list[str]]:
    """Each listed fusion model's panel (`fusion.analysis_models` in GET /v1/models)."""
    page = await client.models.list()
    panels: dict[str, list[str]] = {}
    for entry in page.data:
        fusion = (entry.model_extra or {}).get("fusion")
        if isinstance(fusion, dict) and isinstance(fusion.get("analysis_models"), list):
            panels[entry.id] = [str(slug) for slug in fusion["analysis_models"]]
    return panels


async def ask(
    client: AsyncOpenAI, *, model: str, task_id: str, problem: str, plugins: list[Any] | None, max_tokens: int | None
) -> AnswerRecord:
    """One model's answer to one task; an API failure comes back as a record with `error`."""
    import openai

    options: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
    started = time.monotonic()
    try:
        response = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": problem}],
            extra_body={"plugins": plugins} if plugins else None,
            **options,
        )
    except openai.APIError as exc:
        return AnswerRecord(model=model, task_id=task_id, error=describe(exc), latency_ms=_since(started))
    latency_ms = _since(started)
    choice = response.choices[0] if response.choices else None
    content = choice.message.content if choice else None
    fusion = (response.model_extra or {}).get("fusion")
    return AnswerRecord(
        model=model,
        task_id=task_id,
        content=content or None,
        error=None if content else f"empty answer (finish_reason={choice.finish_reason if choice else None})",
        latency_ms=latency_ms,
        cost=usage_cost(response.usage),
        usage=response.usage.model_dump(exclude_none=True) if response.usage else None,
        panel=[_member(p) for p in fusion.get("panel", [])] if isinstance(fusion, dict) else None,
    )


@dataclass(frozen=True)
class GraderReply:
    """A verdict, or the reason there is none (a grader failure), and what the call cost."""

    verdict: Verdict | None
    error: str | None = None
    cost: float | None = None


# The ways to ask for JSON, strictest first (as openfusion's judge does): OpenAI-style `json_schema`;
# `json_object` with a `schema`, which llama.cpp's server enforces by grammar (it refuses json_schema
# with a 500); then none. A server that refuses one gets the next for the rest of the run; the prompt
# asks for the JSON object either way and the parser reads it leniently.
DIALECTS: tuple[dict[str, Any] | None, ...] = (
    RESPONSE_FORMAT,
    {"type": "json_object", "schema": VERDICT_SCHEMA},
    None,
)
_NOT_A_REFUSAL = frozenset({401, 402, 403, 404, 408, 429})
_MENTIONS = ("response_format", "json_schema", "json_object", "structured output", "schema")


def refuses_format(exc: Exception) -> bool:
    """Whether an API error says the server cannot do the requested structured output."""
    import openai

    if not isinstance(exc, openai.APIStatusError) or exc.status_code < 400 or exc.status_code in _NOT_A_REFUSAL:
        return False
    return any(word in describe(exc).lower() for word in _MENTIONS)


class Grader:
    """Asks the grader model about one criterion at a time, with schema-enforced JSON output."""

    def __init__(self, client: AsyncOpenAI, *, model: str, temperature: float, max_tokens: int | None) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.dialect = 0  # index into DIALECTS, shared by every call of the run
        # `max_tokens` goes everywhere but to OpenAI's reasoning models, which refuse it for
        # `max_completion_tokens`: a refusal switches the name for the rest of the run.
        self.limit_field = "max_tokens"

    async def judge(self, messages: list[dict[str, str]]) -> GraderReply:
        """One grader call; never raises for an API or parse failure (those are grader failures)."""
        import openai

        while True:
            dialect = self.dialect
            try:
                response = await self._create(messages, DIALECTS[dialect])
                break
            except openai.APIError as exc:
                if self.max_tokens and self.limit_field == "max_tokens" and refuses_parameter(exc, "max_tokens"):
                    self.limit_field = "max_completion_tokens"
                    continue
                if not refuses_format(exc) or dialect + 1 == len(DIALECTS):
                    return GraderReply(None, error=describe(exc))
                self.dialect = max(self.dialect, dialect + 1)  # concurrent refusals step down once
        cost = usage_cost(response.usage)
        content = response.choices[0].message.content if response.choices else None
        try:
            return GraderReply(parse_verdict(content), cost=cost)
        except VerdictError as exc:
            return GraderReply(None, error=str(exc), cost=cost)

    async def _create(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None) -> Any:
        options: dict[str, Any] = {self.limit_field: self.max_tokens} if self.max_tokens else {}
        if response_format is not None:
            options["response_format"] = response_format
        return await self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]  # plain role/content dicts are valid message params
            temperature=self.temperature,
            **options,
        )


def refuses_parameter(exc: Exception, name: str) -> bool:
    """Whether an API error is a 400 refusing the parameter `name` (OpenAI names it in `param`)."""
    import openai

    if not isinstance(exc, openai.BadRequestError):
        return False
    param = exc.body.get("param") if isinstance(exc.body, dict) else None
    return param == name or f"'{name}'" in describe(exc)


def usage_cost(usage: Any) -> float | None:
    """`usage.cost` when the server reported it (OpenRouter and openfusion do), else None."""
    return reported_cost((getattr(usage, "model_extra", None) or {}).get("cost"))


def describe(exc: Exception) -> str:
    """A short, secret-free description of an API failure."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        # The SDK's `body` is the OpenAI error object when there is one; its message says it best.
        detail = exc.body.get("message") if isinstance(exc.body, dict) else None
        text = f"HTTP {exc.status_code}: {detail or exc.message}"
    elif isinstance(exc, openai.APITimeoutError):
        text = "timed out"
    elif isinstance(exc, openai.APIConnectionError):
        text = f"connection failed: {exc.__cause__ or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR_CHARS]


def _member(entry: Any) -> dict[str, Any]:
    return {"model": entry.get("model"), "status": entry.get("status")} if isinstance(entry, dict) else {}


def _since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
