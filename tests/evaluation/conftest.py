"""Evaluation fixtures: a grading fake upstream and the real openfusion app in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.server import serve_in_thread
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

from .grading_fake import GradingUpstream, grader_fields
from .scenario import TRIO, script_models, scripted_verdict


@pytest.fixture(scope="session")
def grading_upstream() -> Iterator[tuple[GradingUpstream, str]]:
    fake = GradingUpstream(grader="grader", reply=lambda body: scripted_verdict(*grader_fields(body)))
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(grading_upstream: tuple[GradingUpstream, str]) -> GradingUpstream:
    """The grading fake, reset and scripted."""
    upstream, _ = grading_upstream
    script_models(upstream)
    return upstream


@pytest.fixture
def openfusion_url(
    grading_upstream: tuple[GradingUpstream, str], fake: GradingUpstream, tmp_path: Path
) -> Iterator[str]:
    """The real openfusion app under uvicorn, serving fake/* and fusion/trio; yields its /v1 base URL."""
    _, upstream_url = grading_upstream
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "trio.toml").write_text(TRIO)
    settings = Settings(
        providers=[
            ProviderConfig(
                name="fake", base_url=f"{upstream_url}/v1", api_key_env="FAKE_KEY", models=["fake/*"], strip_prefix=True
            )
        ],
        builtin_providers=False,
        presets_dir=presets,
        default_preset="trio",
        retry={"initial_backoff_s": 0, "max_backoff_s": 0},
    )
    app = create_app(settings, environ={"FAKE_KEY": "sk-provider-secret"})
    with serve_in_thread(app) as url:
        yield f"{url}/v1"
