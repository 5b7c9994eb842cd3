"""load_settings: the TOML config file, its errors, and keyword overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfusion.errors import ConfigError
from openfusion.settings import Settings, load_settings

CONFIG = """
default_preset = "budget"
keepalive_interval_s = 5.0
builtin_providers = false

[retry]
max_attempts = 5
max_retry_after_s = 30

[http]
transport = "httpx"

[[providers]]
name = "local"
base_url = "http://127.0.0.1:8080/v1"
models = ["local/*"]
strip_prefix = true
max_tokens_field = "max_tokens"

[[providers]]
name = "corp"
base_url = "https://llm.corp.example/v1"
api_key_env = "CORP_KEY"
models = ["corp/*", "gpt-*"]
headers = { "X-Team" = "search" }
reasoning_style = "none"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "openfusion.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.default_preset == "quality"
    assert settings.providers == []
    assert settings.builtin_providers is True
    assert settings.presets_dir is None
    assert settings.retry.max_attempts == 3
    assert settings.retry.max_retry_after_s == 20.0
    assert settings.http.transport == "aiohttp"
    assert settings.keepalive_interval_s == 2.0  # a stream's keep-alive comment every 2 s (README, Streaming)


def test_load_from_toml(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG))
    assert settings.default_preset == "budget"
    assert settings.keepalive_interval_s == 5.0
    assert settings.builtin_providers is False
    assert settings.retry.max_attempts == 5
    assert settings.retry.max_retry_after_s == 30.0
    assert settings.retry.initial_backoff_s == 0.5  # untouched defaults survive a partial table
    assert settings.http.transport == "httpx"
    assert [p.name for p in settings.providers] == ["local", "corp"]
    local, corp = settings.providers
    assert local.models == ["local/*"]
    assert local.strip_prefix is True
    assert local.max_tokens_field == "max_tokens"
    assert local.api_key_env is None
    assert local.reasoning_style == "reasoning_effort"
    assert corp.api_key_env == "CORP_KEY"
    assert corp.models == ["corp/*", "gpt-*"]
    assert corp.headers == {"X-Team": "search"}
    assert corp.reasoning_style == "none"
    assert corp.stream_usage is True


def test_path_as_string(tmp_path: Path) -> None:
    assert load_settings(str(write(tmp_path, 'default_preset = "fast"\n'))).default_preset == "fast"  # type: ignore[arg-type]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_settings(missing)
    assert str(missing) in info.value.message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "default_preset = \n[[providers]\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(path)
    assert str(path) in info.value.message


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    """A directory passed as --config is a start-up error with a message, not a traceback."""
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert str(tmp_path) in info.value.message


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('default_preset = "qualité"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('default_preest = "budget"\n', "default_preest"),
        ("[retry]\nmax_atempts = 2\n", "max_atempts"),
        ('[http]\ntransport = "curl"\n', "transport"),
        ("[retry]\nmax_attempts = 0\n", "max_attempts"),
        ("max_body_bytes = 10\n", "max_body_bytes"),
        ('[[providers]]\nname = "x"\nbase_url = "http://x"\nmodels = []\n', "models"),
        ('[[providers]]\nname = "x"\nmodels = ["*"]\n', "base_url"),
        ('[[providers]]\nname = "x"\nbase_url = "http://x"\nmodels = ["*"]\napi_key = "sk-inline"\n', "api_key"),
        (
            '[[providers]]\nname = "x"\nbase_url = "http://x"\nmodels = ["*"]\nreasoning_style = "x"\n',
            "reasoning_style",
        ),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "invalid configuration" in info.value.message
    assert str(path) in info.value.message
    assert fragment in info.value.message


def test_invalid_override_without_a_file() -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(keepalive_interval_s=0)
    assert "keepalive_interval_s" in info.value.message


def test_keyword_overrides_win(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG), default_preset="fast", presets_dir=tmp_path)
    assert settings.default_preset == "fast"
    assert settings.presets_dir == tmp_path
    assert [p.name for p in settings.providers] == ["local", "corp"]  # the rest of the file still applies


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG), default_preset=None, presets_dir=None)
    assert settings.default_preset == "budget"
    assert settings.presets_dir is None


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFUSION_DEFAULT_PRESET", "self")
    monkeypatch.setenv("OPENFUSION_RETRY__MAX_ATTEMPTS", "7")
    settings = Settings()
    assert settings.default_preset == "self"
    assert settings.retry.max_attempts == 7


def test_file_and_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENFUSION_DEFAULT_PRESET", "self")
    assert load_settings(write(tmp_path, CONFIG)).default_preset == "budget"
    assert load_settings(default_preset="fast").default_preset == "fast"


def test_a_short_fingerprint_key_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFUSION_FINGERPRINT_KEY", "short-secret")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "OPENFUSION_FINGERPRINT_KEY" in info.value.message and "16 characters" in info.value.message
    assert "short-secret" not in info.value.message
    monkeypatch.setenv("OPENFUSION_FINGERPRINT_KEY", "a-secret-long-enough-to-keep")
    assert "a-secret" not in repr(load_settings())
    monkeypatch.setenv("OPENFUSION_FINGERPRINT_KEY", "")  # as compose passes `${OPENFUSION_FINGERPRINT_KEY:-}`: unset
    assert load_settings().fingerprint_key is None
