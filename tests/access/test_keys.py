"""Client keys: loading, hashing, constant-time lookup, and the start-up warning."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import pytest
from pydantic import ValidationError

import openfusion.access.keys as keys_module
from openfusion.access.config import AccessConfig, KeyConfig
from openfusion.access.keys import KeyRing, check_exposure, is_loopback, load_keys
from openfusion.errors import ConfigError


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env(key: str, prefix: str = "env") -> str:
    """The name of a key listed in OPENFUSION_API_KEYS (or, with prefix "admin", OPENFUSION_ADMIN_KEYS)."""
    return f"{prefix}-{sha(key)[:12]}"


def test_env_keys_are_named_by_their_fingerprint_and_found() -> None:
    ring = load_keys(AccessConfig(api_keys=" sk-one-0123456789ab , ,sk-two-0123456789ab,"), {})
    assert ring.names == [env("sk-one-0123456789ab"), env("sk-two-0123456789ab")]
    found = ring.find("sk-two-0123456789ab")
    assert found is not None and found.name == env("sk-two-0123456789ab")
    assert ring.find("sk-three-0123456789ab") is None
    assert ring.find("") is None


def test_config_keys_from_an_environment_variable_and_from_a_hash() -> None:
    config = AccessConfig(
        keys=[
            KeyConfig(name="team-a", key_env="TEAM_A_KEY", models=["fusion/*"], requests_per_minute=5),
            KeyConfig(name="team-b", key_sha256=sha("sk-team-b-4f9a2c7e1d").upper()),
        ],
        limits={"requests_per_minute": 100, "max_concurrent_fusion": 2},
    )
    ring = load_keys(config, {"TEAM_A_KEY": "sk-team-a-4f9a2c7e1d\n"})
    team_a, team_b = ring.find("sk-team-a-4f9a2c7e1d"), ring.find("sk-team-b-4f9a2c7e1d")
    assert team_a is not None and team_b is not None
    assert team_a.models == ("fusion/*",) and team_b.models == ("*",)
    # A key's own limit wins; an unset one comes from [limits].
    assert (team_a.limits.requests_per_minute, team_a.limits.max_concurrent_fusion) == (5, 2)
    assert (team_b.limits.requests_per_minute, team_b.limits.max_concurrent_fusion) == (100, 2)
    assert ring.find(sha("sk-team-b-4f9a2c7e1d")) is None  # the stored hash is not itself a key


def test_admin_keys_come_from_the_config_or_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from openfusion.settings import Settings

    monkeypatch.setenv("OPENFUSION_API_KEYS", "sk-plain-0123456789")
    monkeypatch.setenv("OPENFUSION_ADMIN_KEYS", "sk-ops-0123456789,sk-audit-0123456789")
    config = AccessConfig.model_validate(
        Settings(keys=[{"name": "root", "key_env": "ROOT_KEY", "admin": True}]), from_attributes=True
    )
    ring = load_keys(config, {"ROOT_KEY": "sk-root-0123456789"})
    ops, audit = env("sk-ops-0123456789", "admin"), env("sk-audit-0123456789", "admin")
    assert ring.names == [env("sk-plain-0123456789"), ops, audit, "root"]
    for name, key in [(audit, "sk-audit-0123456789"), ("root", "sk-root-0123456789")]:
        admin = ring.find(key)
        assert admin is not None and admin.admin and admin.sees_all_activity and admin.name == name
    plain = ring.find("sk-plain-0123456789")
    assert plain is not None and not plain.admin and not plain.sees_all_activity


def test_a_missing_key_variable_is_a_config_error_naming_the_variable() -> None:
    config = AccessConfig(keys=[KeyConfig(name="team-a", key_env="TEAM_A_KEY")])
    with pytest.raises(ConfigError, match=r"'team-a'.*TEAM_A_KEY"):
        load_keys(config, {"TEAM_A_KEY": "  "})


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "x"},
        {"name": "x", "key_env": "A", "key_sha256": "0" * 64},
        {"name": "x", "key_sha256": "not-a-hash"},
        {"name": "has space", "key_env": "A"},
        {"name": "x", "key_env": "A", "models": []},
        {"name": "x", "key_env": "A", "requests_per_minute": 0},
    ],
)
def test_invalid_key_entries_are_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        KeyConfig(**entry)


def test_duplicate_names_and_duplicate_keys_are_refused_without_showing_the_key() -> None:
    taken = env("sk-a-0123456789abcd")
    with pytest.raises(ConfigError, match=f"'{taken}' is configured twice"):
        load_keys(
            AccessConfig(api_keys="sk-a-0123456789abcd", keys=[KeyConfig(name=taken, key_sha256=sha("sk-b"))]), {}
        )
    with pytest.raises(ConfigError, match=f"'{env('sk-same-0123456789ab')}' and 'team'") as caught:
        load_keys(
            AccessConfig(api_keys="sk-same-0123456789ab", keys=[KeyConfig(name="team", key_env="K")]),
            {"K": "sk-same-0123456789ab"},
        )
    assert "sk-same-0123456789ab" not in str(caught.value)


def test_keys_never_show_in_reprs() -> None:
    config = AccessConfig(api_keys="sk-secret-value-0123")
    ring = load_keys(config, {})
    assert "sk-secret-value-0123" not in repr(config)
    assert "sk-secret-value-0123" not in repr(ring.__dict__)


def test_lookup_compares_the_digest_against_every_key_whatever_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = load_keys(
        AccessConfig(api_keys="sk-1-0123456789abcd,sk-2-0123456789abcd,sk-3-0123456789abcd,sk-4-0123456789abcd"), {}
    )
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", counting_compare)
    for presented, expected in [
        ("sk-1-0123456789abcd", env("sk-1-0123456789abcd")),
        ("sk-4-0123456789abcd", env("sk-4-0123456789abcd")),
        ("sk-nope", None),
        ("s", None),
    ]:
        compared.clear()
        found = ring.find(presented)
        assert (found.name if found else None) == expected
        # Every stored key is compared, as fixed-size SHA-256 digests, never the key itself.
        assert len(compared) == 4
        assert all(a == hashlib.sha256(presented.encode()).digest() and len(b) == 32 for a, b in compared)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("my-host", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_start_up_refuses_to_be_open_beyond_loopback_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="openfusion.access")
    with pytest.raises(ConfigError) as refused:
        check_exposure("0.0.0.0", KeyRing([]), allow_open=False)
    assert "0.0.0.0" in refused.value.message
    assert "OPENFUSION_API_KEYS" in refused.value.message and "OPENFUSION_ALLOW_OPEN=1" in refused.value.message
    assert caplog.records == []

    assert check_exposure("0.0.0.0", KeyRing([]), allow_open=True) is True
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "0.0.0.0" in record.getMessage()

    caplog.clear()
    assert check_exposure("127.0.0.1", KeyRing([]), allow_open=False) is False
    keys = load_keys(AccessConfig(api_keys="sk-client-key-0123456789"), {})
    assert check_exposure("0.0.0.0", keys, allow_open=False) is False
    assert caplog.records == []


def test_keys_shorter_than_16_characters_are_refused_by_name() -> None:
    assert load_keys(AccessConfig(api_keys="k" * 16), {}).names == [env("k" * 16)]
    with pytest.raises(
        ConfigError, match=r"key 'env key 1 of 1' \(OPENFUSION_API_KEYS\) is 15 characters long"
    ) as caught:
        load_keys(AccessConfig(api_keys="k" * 15), {})
    assert "k" * 15 not in str(caught.value)
    config = AccessConfig(keys=[KeyConfig(name="team", key_env="TEAM_KEY")])
    with pytest.raises(ConfigError, match=r"key 'team' \(TEAM_KEY\) is 5 characters long"):
        load_keys(config, {"TEAM_KEY": " short "})
    # A key stored as its SHA-256 cannot be measured: it is taken as it is.
    assert load_keys(AccessConfig(keys=[KeyConfig(name="hashed", key_sha256=sha("x"))]), {}).names == ["hashed"]
