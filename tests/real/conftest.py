"""Real upstreams: three llama.cpp servers with the bundled SmolLM2-135M, and openfusion in front of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.server import serve_in_thread
from openfusion.app import create_app
from openfusion.localdemo.config import write_config
from openfusion.localdemo.servers import LlamaServer, LocalModelUnavailable, running_servers
from openfusion.settings import load_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real_llm)


@pytest.fixture(scope="session")
def llama_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    logs = tmp_path_factory.mktemp("llama-logs")
    try:
        with running_servers(3, log_dir=logs) as servers:
            yield servers
    except LocalModelUnavailable as exc:
        pytest.skip(f"real-upstream tests need the local model: {exc}")


@pytest.fixture(scope="session")
def local_config(llama_servers: list[LlamaServer], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_config(llama_servers, tmp_path_factory.mktemp("local-config"))


@pytest.fixture(scope="session")
def openfusion_url(local_config: tuple[Path, Path]) -> Iterator[str]:
    config, presets = local_config
    app = create_app(load_settings(config, presets_dir=presets), environ={})
    with serve_in_thread(app) as url:
        yield url
