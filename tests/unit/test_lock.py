"""The lock files pin one resolution of pyproject.toml's ranges: for the image (with hashes) and for CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(name: str) -> dict[str, tuple[Version, int]]:
    """Package -> (pinned version, how many hashes) of a lock file."""
    found: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            found[current] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


def requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize(
    ("lock", "extras", "hashed"),
    [
        ("requirements.lock", ("postgres", "otel"), True),
        ("requirements-dev.lock", ("test", "docs", "postgres", "otel"), False),
    ],
)
def test_every_dependency_is_pinned_within_its_range(lock: str, extras: tuple[str, ...], hashed: bool) -> None:
    pinned = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock} does not pin {name}: run scripts/refresh-lock.sh"
        version, hashes = pinned[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}: run scripts/refresh-lock.sh"
        )
        assert (hashes > 0) is hashed, f"{lock}: {name} has {hashes} hashes"
    assert "openfusion" not in pinned  # the locks hold its dependencies; it is built from the source tree


def test_ci_tests_the_versions_the_image_ships() -> None:
    image, ci = pins("requirements.lock"), pins("requirements-dev.lock")
    differ = {name: (image[name][0], ci[name][0]) for name in image if name in ci and image[name][0] != ci[name][0]}
    assert not differ, f"the two locks disagree (image, CI): {differ}"
    assert image.keys() <= ci.keys()


def test_the_image_installs_the_lock_on_a_pinnable_base() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip wheel .*--require-hashes .*-r requirements\.lock", dockerfile)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?$", dockerfile, re.M)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}"] * 2
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
