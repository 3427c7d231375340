"""The operator's scenarios against a real cluster: `HARMONY_E2E=1 KUBECONFIG=... pytest -m e2e tests/k8s_operator`.

Without both these tests are skipped and pytest reports them as skipped (`-ra`). With it, they install
the chart's CRD, work in a fresh namespace (deleted afterwards), run the operator locally under KopfRunner
(so it reaches the tests' own Prometheus on loopback) and check the same outcomes as the kmock scenarios:
Apply scales through /scale, Recommend never does, the API server refuses an invalid resource by the CRD's
schema, and a deleted resource is left alone.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import PrometheusServer, autoscaler_spec  # type: ignore[import-not-found]

# Read before any fixture points KUBECONFIG at kmock.
REAL_KUBECONFIG = os.environ.get("KUBECONFIG")
CRD = Path(__file__).resolve().parents[2] / "helm/harmony-operator/crds/harmonyautoscalers.harmony.dev.yaml"

pytestmark = [
    pytest.mark.e2e,
    # Opt-in, as pyproject's marker says: a KUBECONFIG a developer happens to have set must not send the
    # test suite to a real cluster.
    pytest.mark.skipif(
        not (REAL_KUBECONFIG and os.environ.get("HARMONY_E2E") == "1"),
        reason="e2e: set HARMONY_E2E=1 and KUBECONFIG to a real cluster to run these",
    ),
]


@pytest.fixture
def k8s(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    assert REAL_KUBECONFIG
    monkeypatch.setenv("KUBECONFIG", REAL_KUBECONFIG)
    config.load_kube_config(REAL_KUBECONFIG)
    ext = client.ApiextensionsV1Api()
    body = yaml.safe_load(CRD.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    ns = f"harmony-e2e-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield client, ns
    finally:
        core.delete_namespace(ns)


def _deployment(client: Any, ns: str, name: str) -> None:
    client.AppsV1Api().create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.9"}]},
                },
            },
        },
    )


async def _wait(fn: Any, timeout: float = 90.0) -> Any:
    for _ in range(int(timeout / 0.5)):
        value = await asyncio.to_thread(fn)
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError("timed out")


async def test_e2e_apply_recommend_invalid_and_delete(
    k8s: tuple[Any, str], prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kopf.testing import KopfRunner
    from kubernetes.client.rest import ApiException

    client, ns = k8s
    custom = client.CustomObjectsApi()
    apps = client.AppsV1Api()

    def create(name: str, spec: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(
            "harmony.dev",
            "v1alpha1",
            ns,
            "harmonyautoscalers",
            {
                "apiVersion": "harmony.dev/v1alpha1",
                "kind": "HarmonyAutoscaler",
                "metadata": {"name": name},
                "spec": spec,
            },
        )

    def status(name: str) -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object("harmony.dev", "v1alpha1", ns, "harmonyautoscalers", name)
        return dict(obj.get("status") or {})

    for name in ("apply", "shadow"):
        _deployment(client, ns, name)
        spec = autoscaler_spec(
            model={"uri": str(model_dir)},
            scaleTargetRef={"kind": "Deployment", "name": name},
            mode="Apply" if name == "apply" else "Recommend",
        )
        spec["indicators"][0]["capacityPerReplica"] = 0.2
        create(name, spec)
    with pytest.raises(ApiException) as refused:
        create("invalid", autoscaler_spec(mode="Auto"))
    assert refused.value.status == 422

    monkeypatch.setenv("HARMONY_PROMETHEUS_URL", prometheus.url)
    monkeypatch.setenv("HARMONY_METRICS_PORT", "0")
    monkeypatch.setenv("HARMONY_LEADER_ELECTION", "false")
    monkeypatch.setenv("HARMONY_MIN_STALENESS_S", "900")
    monkeypatch.setenv("HARMONY_MODEL_URI_PREFIXES", f"{model_dir}/")
    with KopfRunner(
        ["run", "--namespace", ns, "--standalone", "-m", "harmony_operator.handlers"], timeout=120
    ) as runner:
        await _wait(
            lambda: status("apply").get("desiredReplicas") and status("shadow").get("desiredReplicas")
        )
        desired = status("apply")["desiredReplicas"]
        await _wait(lambda: apps.read_namespaced_deployment_scale("apply", ns).spec.replicas == desired)
        custom.delete_namespaced_custom_object("harmony.dev", "v1alpha1", ns, "harmonyautoscalers", "apply")
        await asyncio.sleep(5)
        apps.patch_namespaced_deployment_scale("apply", ns, {"spec": {"replicas": 1}})
        await asyncio.sleep(5)
    assert runner.exception is None, runner.output
    assert apps.read_namespaced_deployment_scale("apply", ns).spec.replicas == 1  # left alone after deletion
    assert apps.read_namespaced_deployment_scale("shadow", ns).spec.replicas == 1  # Recommend never scales
    assert status("shadow")["desiredReplicas"] > 1
