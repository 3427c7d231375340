"""The decision memory in status survives a transient API error and a target missing for a while.

A real operator runtime (`Runtime.step`: reconcile, then the status PATCH that nulls every key it does
not set) against the HTTPS Kubernetes API and the backfilled Prometheus.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harmony_operator.handlers import OperatorOptions, Runtime
from harmony_operator.spec import parse_spec
from operator_harness import (  # type: ignore[import-not-found]
    Cluster,
    Fault,
    PrometheusServer,
    add_autoscaler,
    add_deployment,
    autoscaler_spec,
)

from harmony.decision import Decider

HMA = "harmony.dev/v1alpha1/harmonyautoscalers"


def _plain(value: Any) -> Any:
    """kmock's stored object as plain JSON data (what a watch event would hand the operator)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _status(cluster: Cluster) -> dict[str, Any]:
    return dict(_plain(cluster.objects[HMA, "shop", "web"].get("status") or {}))


def _ready(cluster: Cluster) -> tuple[str, str]:
    for c in _status(cluster).get("conditions") or []:
        if c["type"] == "Ready":
            return c["status"], c["reason"]
    return "", ""


async def test_memory_survives_api_errors_and_a_missing_target(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    spec = autoscaler_spec(model={"uri": str(model_dir)})
    learnt = Decider(parse_spec(spec).decision_config())
    y = np.linspace(1.0, 3.0, 100).reshape(100, 1, 1)
    for violated in (True, False, True, True, False):
        d = learnt.decide(y, ["load"], 2, 0.0)
        learnt.observe({"load": 5.0 if violated else 0.5}, d.replicas)
    saved = _plain(
        {
            "state": learnt.state_dict(),
            "lastScaleTime": "2026-12-01T00:00:00Z",
            "calibration": {"alpha": 1.0, "beta": 2.0},
        }
    )
    add_deployment(cluster, "shop", "web", replicas=2)
    add_autoscaler(cluster, "shop", "web", spec, status=saved)
    runtime = Runtime(
        OperatorOptions(
            prometheus_url=prometheus.url,
            metrics_port=None,
            leader_election=False,
            num_samples=50,
            min_staleness_s=900,
            model_uri_prefixes=(tempfile.gettempdir() + "/",),
        )
    )

    # MLflow's download progress bars would break one-JSON-object-per-line logs: off in the operator.
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"

    async def step() -> None:
        await runtime.step("shop", "web", spec, _status(cluster), 1)

    try:
        # 1. The API server answers 503 to every read of the target's /scale.
        cluster.faults = [Fault("GET", "/deployments/web/scale", 503)]
        await step()
        assert _ready(cluster) == ("False", "KubernetesAPIError")
        st = _status(cluster)
        assert st["state"] == saved["state"]
        assert (st["lastScaleTime"], st["calibration"]) == (saved["lastScaleTime"], saved["calibration"])
        # 2. The target is gone for a while.
        cluster.faults = []
        resp = await cluster.delete("/apis/apps/v1/namespaces/shop/deployments/web")
        assert resp.status == 200
        for _ in range(2):
            await step()
            assert _ready(cluster) == ("False", "TargetNotFound")
            assert _status(cluster)["state"] == saved["state"]
            assert _status(cluster)["lastScaleTime"] == saved["lastScaleTime"]
        # 3. It is back: the decision continues from the memory, nothing was relearnt from scratch.
        add_deployment(cluster, "shop", "web", replicas=2)
        await step()
    finally:
        await runtime.close()
    assert _ready(cluster) == ("True", "Deciding"), _status(cluster)["conditions"]
    st = _status(cluster)
    assert st["state"]["tracker"]["n_updates"] == learnt.tracker.n_updates >= 4
    assert st["calibration"]["alpha"] == pytest.approx(learnt.tracker.summary()["alpha"], abs=1e-6)
