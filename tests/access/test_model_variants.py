"""OpenRouter's model variants under a scoped or capped key: judged for the model they run and what they add.

`:online` runs a web search on every request, billed apart from tokens: no price bounds it, so a capped key is refused
with 402 `cost_unbounded` even where the operator priced the slug, on every surface and wherever the request names
it. A routing variant (`:nitro`, `:floor`, `:exacto`) only chooses among the providers of its model: it has that
model's price and is in any scope that covers the model. A catalog variant (`:free`, `:extended`) is a model of its
own: priced and scoped as named. Against the real server, with a fake upstream and a real activity store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fastapi import FastAPI

from access.conftest import fake_prices
from fakes.anthropic_api import FakeAnthropic
from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
CAPPED, EXACT, FREE_ONLY = "sk-capped-team-0123456789", "sk-outer-exact-0123456789", "sk-free-only-0123456789"
ENVIRON = {"CAPPED_KEY": CAPPED, "EXACT_KEY": EXACT, "FREE_KEY": FREE_ONLY}
KEYS = {
    "keys": [
        {"name": "capped", "key_env": "CAPPED_KEY", "daily_spend_usd": 5.0},
        {"name": "outer-exact", "key_env": "EXACT_KEY", "models": ["fake/outer"]},
        {"name": "free-only", "key_env": "FREE_KEY", "models": ["*:free"]},
    ]
}
HI: Any = [{"role": "user", "content": "Hi"}]
WEB = "the provider runs a web search on every call"


@pytest.fixture
def gateway(
    upstream: FakeUpstream,
    serve: Serve,
    core_settings: dict[str, Any],
    fake_upstream: tuple[FakeUpstream, str],
    anthropic_native: tuple[FakeAnthropic, str],
    tmp_path: Path,
) -> Iterator[str]:
    """The fake upstream as a chat provider (`fake/*`) and a Responses-native one (`native/*`), a fake Anthropic
    (`claude/*`); every model priced, `:online` slugs too (an operator may price them: the cap must still refuse)."""
    upstream.script("outer", Script(content="Hello."))
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True)  # fmt: skip
    claude = ProviderConfig(name="claude", base_url=f"{anthropic_native[1]}/v1", api_key_env="FAKE_KEY",
                            models=["claude/*"], strip_prefix=True, messages=True)  # fmt: skip
    pricing = fake_prices()
    price = pricing["models"]["fake/outer"]
    for slug in ("native/gpt", "claude/sonnet", "fake/outer:online", "fake/a:online", "native/gpt:online",
                 "claude/sonnet:online"):  # fmt: skip
        pricing["models"][slug] = price
    with serve(
        KEYS,
        environ=ENVIRON,
        providers=[*core_settings["providers"], native, claude],
        activity={"path": tmp_path / "activity.sqlite3"},
        pricing=pricing,
    ) as (url, _):
        yield url


def _chat(url: str, key: str, model: str = "fake/outer", **extra: Any) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model=model, messages=HI, max_tokens=100, extra_body=extra or None)


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        ("fake/outer:online", {}, "model"),
        ("fake/outer:ONLINE", {}, "model"),
        ("fake/outer:nitro:online", {}, "model"),
        ("fake/outer", {"models": ["fake/outer:online"]}, "models[0]"),
        ("fusion/trio", {"plugins": [{"id": "fusion", "analysis_models": ["fake/a:online", "fake/b"]}]},
         "plugins[0].analysis_models[0]"),
    ],
    ids=["model", "any-case", "with-a-routing-variant", "fallback", "fusion-panel"],
)  # fmt: skip
def test_a_capped_key_may_not_run_a_web_search_named_in_the_slug(
    gateway: str, upstream: FakeUpstream, model: str, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(gateway, CAPPED, model, **extra)
    assert refused.value.status_code == 402
    assert refused.value.code == "cost_unbounded" and refused.value.param == param
    assert WEB in refused.value.message and "Leave out `:online`" in refused.value.message
    assert upstream.calls == []


def test_a_capped_key_may_not_run_a_web_search_through_a_native_surface(
    gateway: str, upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str]
) -> None:
    responses = openai.OpenAI(base_url=f"{gateway}/v1", api_key=CAPPED, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        responses.responses.create(model="native/gpt:online", input="Hi", max_output_tokens=100)
    assert refused.value.status_code == 402 and refused.value.code == "cost_unbounded"
    messages = anthropic.Anthropic(base_url=gateway, api_key=CAPPED, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as told:
        messages.messages.create(model="claude/sonnet:online", max_tokens=100, messages=HI)
    assert told.value.status_code == 402 and WEB in told.value.message  # in Anthropic's error shape
    assert upstream.calls == [] and anthropic_native[0].calls == []


@pytest.mark.parametrize("suffix", [":nitro", ":floor", ":exacto"])
def test_a_capped_key_runs_a_routing_variant_at_its_models_price(
    gateway: str, upstream: FakeUpstream, suffix: str
) -> None:
    assert _chat(gateway, CAPPED, f"fake/outer{suffix}").choices[0].message.content is not None
    assert [call.model for call in upstream.calls] == [f"outer{suffix}"]  # the slug goes as named


def test_a_catalog_variant_is_priced_as_its_own_model(gateway: str, upstream: FakeUpstream) -> None:
    """`:free`, `:extended` are entries of their own (their own price, context and providers): not the base's price."""
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(gateway, CAPPED, "fake/outer:extended")
    assert refused.value.status_code == 402 and "no price is known for fake/outer:extended" in refused.value.message
    assert upstream.calls == []


@pytest.mark.parametrize("model", ["fake/outer:nitro", "fake/outer:floor", "fake/outer:online"])
def test_a_scope_covers_the_routing_and_web_search_variants_of_its_models(
    gateway: str, upstream: FakeUpstream, model: str
) -> None:
    """They run the model the scope names (`:online` adds the web search a scoped key may ask for as a plugin)."""
    assert _chat(gateway, EXACT, model).choices[0].message.content is not None
    assert [call.model for call in upstream.calls] == [model.removeprefix("fake/")]


OUTSIDE = [(EXACT, "fake/outer:free"), (EXACT, "fake/outer:extended"), (FREE_ONLY, "fake/outer:nitro"),
           (FREE_ONLY, "fake/outer:online")]  # fmt: skip


@pytest.mark.parametrize(("key", "model"), OUTSIDE)
def test_a_scope_judges_a_catalog_variant_as_its_own_model(
    gateway: str, upstream: FakeUpstream, key: str, model: str
) -> None:
    """`fake/outer` does not cover `fake/outer:free` (other providers, which may keep prompts); a scope of free models
    alone covers no paid model however it is routed."""
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(gateway, key, model)
    assert refused.value.code == "model_not_allowed" and refused.value.param == "model"
    assert upstream.calls == []


def test_a_scope_of_free_models_covers_their_routing_variants(gateway: str, upstream: FakeUpstream) -> None:
    assert _chat(gateway, FREE_ONLY, "fake/outer:free:nitro").choices[0].message.content is not None
    assert [call.model for call in upstream.calls] == ["outer:free:nitro"]
