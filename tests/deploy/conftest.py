"""The helm binary for the chart tests: $HELM_BINARY (deploy/helm/ci-check.sh sets it), else installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy.chart import REPO, Helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm from $HELM_BINARY (set by deploy/helm/ci-check.sh), else installed by install-helm.sh."""
    path = os.environ.get("HELM_BINARY")
    if not path:
        installer = REPO / "deploy" / "helm" / "install-helm.sh"
        result = subprocess.run([str(installer)], capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"{installer} failed:\n{result.stderr}"
        path = result.stdout.strip()
    return Helm(Path(path))
