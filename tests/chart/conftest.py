"""The `helm` fixture: every chart test that takes it runs once with helm 3 and once with helm 4."""

from __future__ import annotations

import os
import subprocess

import pytest
from chart_helpers import HELM_RELEASES, Helm, cache_root, install_helm


def _make_helm(name: str, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = install_helm(HELM_RELEASES[name], cache_root())
    home = tmp_path_factory.mktemp(f"{name}-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        # No cluster is ever contacted; a missing kubeconfig keeps a developer's real one out of reach.
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    version = subprocess.run([str(binary), "version", "--short"], env=env, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert version.startswith(HELM_RELEASES[name].version), version
    return Helm(name, binary, env, tmp_path_factory.mktemp(f"{name}-values"))


@pytest.fixture(scope="session", params=sorted(HELM_RELEASES))
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return _make_helm(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def helm4(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm 4 alone, for what helm 3 cannot do offline (install --dry-run=client needs a cluster in helm 3)."""
    return _make_helm("helm4", tmp_path_factory)
