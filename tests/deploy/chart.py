"""Rendering the Helm chart in deploy/helm/openfusion with a real helm binary, and reading what it rendered."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "openfusion"
RELEASE = "openfusion"  # the release name most people pick: the Service is then called "openfusion" too
NAMESPACE = "ai"
KUBE_VERSION = "1.31.0"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

# The values files CI renders: the defaults, and the setups in the chart's ci/ directory.
VALUES_FILES: dict[str, Path | None] = {
    "defaults": None,
    "gateway": CHART / "ci" / "gateway-values.yaml",
    "sidecar": CHART / "ci" / "sidecar-values.yaml",
    "autoscaled": CHART / "ci" / "autoscaled-values.yaml",
}


def values_of(name: str) -> dict[str, Any]:
    """The chart's defaults overlaid with a CI values file (top-level keys merged one level deep)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    path = VALUES_FILES[name]
    overlay = yaml.safe_load(path.read_text()) if path else {}
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class Manifests(list[dict[str, Any]]):
    """The documents `helm template` rendered."""

    def kinds(self) -> list[str]:
        return sorted(doc["kind"] for doc in self)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {self.kinds()}"
        return found[0]

    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]

    def container(self) -> dict[str, Any]:
        containers = self.pod()["spec"]["containers"]
        assert [c["name"] for c in containers] == ["openfusion"]
        return containers[0]

    def env(self) -> dict[str, dict[str, Any]]:
        entries = self.container().get("env", [])
        names = [entry["name"] for entry in entries]
        assert len(names) == len(set(names)), f"duplicate environment variables: {names}"
        return {entry["name"]: entry for entry in entries}


@dataclass
class Helm:
    """A helm binary and the chart."""

    binary: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=120, check=False)

    def _template(
        self, values: str | None, settings: dict[str, Any], api_versions: tuple[str, ...], chart: Path = CHART
    ) -> list[str]:
        args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        path = VALUES_FILES[values] if values else None
        if path is not None:
            args += ["--values", str(path)]
        for key, value in settings.items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        for api in api_versions:
            args += ["--api-versions", api]
        return args

    def template(
        self, values: str | None = None, *, settings: dict[str, Any] | None = None, api_versions: tuple[str, ...] = ()
    ) -> Manifests:
        """Render the chart; a failure fails the test with helm's message."""
        result = self.run(*self._template(values, settings or {}, api_versions))
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return Manifests(doc for doc in yaml.safe_load_all(result.stdout) if doc)

    def refusal(self, values: str | None = None, *, settings: dict[str, Any] | None = None, by: str = "chart") -> str:
        """Render values the chart must refuse, `by` its templates' checks or its values schema; helm's message."""
        result = self.run(*self._template(values, settings or {}, ()))
        assert result.returncode != 0, f"helm template accepted values it must refuse: {settings}"
        expected = {"chart": "execution error", "schema": "don't meet the specifications of the schema"}[by]
        assert expected in result.stderr, f"not refused by the {by}:\n{result.stderr}"
        return result.stderr

    def notes(self, values: str | None = None, *, settings: dict[str, Any] | None = None) -> str:
        """What `helm install` would print (NOTES.txt), rendered through a copy of the chart."""
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / "openfusion"
            shutil.copytree(CHART, chart)
            (chart / "templates" / "notes-preview.yaml").write_text(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
                'data: {notes: {{ include "openfusion.notes" . | toJson }}}\n'
            )
            args = [*self._template(values, settings or {}, (), chart), "--show-only", "templates/notes-preview.yaml"]
            result = self.run(*args)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return yaml.safe_load(result.stdout)["data"]["notes"]
