"""The operator, run for real under kopf's KopfRunner, against kmock's HTTP Kubernetes API and a real
Prometheus backfilled with a slice of the Fisher trace (see conftest.py for both).

Each scenario asserts on the objects the operator leaves behind (status, conditions, the target's replicas)
and on the request log (which requests were or were not made).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kmock
import numpy as np
import pytest
import requests
from kopf.testing import KopfRunner
from operator_harness import (  # type: ignore[import-not-found]
    CLIENT_CN,
    STEP_S,
    Cluster,
    Fault,
    PrometheusServer,
    add_autoscaler,
    add_deployment,
    autoscaler_spec,
    wait_for,
)

HMA = "harmony.dev/v1alpha1/harmonyautoscalers"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The tests' models live in pytest's temporary directories; the chart's default allows only models:/ and
# /models/.
MODEL_PREFIXES = f"models:/,runs:/,{tempfile.gettempdir()}/"


@contextmanager
def running_operator(
    monkeypatch: pytest.MonkeyPatch,
    prometheus_url: str,
    *,
    leader: bool = False,
    metrics_port: int = 0,
    model_prefixes: str = MODEL_PREFIXES,
) -> Iterator[KopfRunner]:
    monkeypatch.setenv("HARMONY_MODEL_URI_PREFIXES", model_prefixes)
    monkeypatch.setenv("HARMONY_PROMETHEUS_URL", prometheus_url)
    monkeypatch.setenv("HARMONY_METRICS_PORT", str(metrics_port))
    monkeypatch.setenv("HARMONY_LEADER_ELECTION", "true" if leader else "false")
    monkeypatch.setenv("POD_NAMESPACE", "harmony-system")
    monkeypatch.setenv("HARMONY_NUM_SAMPLES", "200")
    # The Fisher trace has 10-minute samples: what a 15-s scrape calls stale is fresh here.
    monkeypatch.setenv("HARMONY_MIN_STALENESS_S", "900")
    with KopfRunner(["run", "-A", "--standalone", "-m", "harmony_operator.handlers"], timeout=60) as runner:
        yield runner


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.objects[HMA, ns, name]
    return dict(obj.get("status") or {}) if not obj.deleted else {}


def condition(cluster: Cluster, ns: str, name: str, type_: str) -> dict[str, Any]:
    for c in status(cluster, ns, name).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def replicas(cluster: Cluster, ns: str, name: str) -> int:
    return int(cluster.objects["apps/v1/deployments", ns, name]["spec"]["replicas"])


def scale_patches(cluster: Cluster, ns: str, name: str) -> list[Any]:
    return [
        r
        for r in cluster
        if r.method == kmock.method.PATCH
        and r.url.path == f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"
    ]


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    out = []
    for r in cluster:
        if (
            r.method == kmock.method.POST
            and r.url.path == f"/api/v1/namespaces/{ns}/events"
            and (r.data.get("involvedObject") or {}).get("name") == name
        ):
            out.append(r.data)
    return out


def load_at(prometheus: PrometheusServer, when: str) -> float:
    """The newest backfilled load at or before the ISO time `when` (a decision's time)."""
    import datetime as dt

    now = dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    t = math.floor(now / STEP_S) * STEP_S
    return float(prometheus.load[int(np.flatnonzero(prometheus.times == t)[0])])


async def test_apply_scales_the_target_and_explains_the_decision(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "web", replicas=1)
    add_autoscaler(cluster, "shop", "web", autoscaler_spec(model={"uri": str(model_dir)}))
    port = _free_port()
    with running_operator(monkeypatch, prometheus.url, leader=True, metrics_port=port) as runner:
        await wait_for(
            lambda: (
                status(cluster, "shop", "web").get("desiredReplicas") is not None
                and condition(cluster, "shop", "web", "ScalingActive").get("status") == "True"
            )
        )
        metrics = (await asyncio.to_thread(requests.get, f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    assert runner.exception is None, runner.output

    st = status(cluster, "shop", "web")
    desired = st["desiredReplicas"]
    # The working quantile is the 95th (eps = 0.05): between the forecast's p90 and p99 of peak load,
    # at 1 load unit per replica.
    forecast = {f["name"]: f for f in st["forecast"]}
    assert set(forecast) == {"load"}
    f = forecast["load"]
    assert f["p50"] <= f["p90"] <= f["p99"]
    assert max(1, math.ceil(f["p90"] - 1e-9)) <= desired <= max(1, math.ceil(f["p99"]))
    assert st["bindingIndicator"] == "load"
    assert 0.0 <= st["violationProbability"] <= 0.05 + 1e-9
    assert st["fallback"] is False
    assert "95th" in st["reason"] or "p95" in st["reason"] or "0.95" in st["reason"], st["reason"]
    assert st["model"]["uri"] == str(model_dir)
    assert st["calibration"]["workingQuantile"] == pytest.approx(0.95, abs=1e-6)
    for type_, expected in (("Ready", "True"), ("MetricsAvailable", "True"), ("ModelLoaded", "True")):
        assert condition(cluster, "shop", "web", type_)["status"] == expected, st["conditions"]

    # The target was scaled through its /scale subresource, once, to the decision.
    assert replicas(cluster, "shop", "web") == desired
    patches = scale_patches(cluster, "shop", "web")
    if desired != 1:
        assert [p.data for p in patches][:1] == [{"spec": {"replicas": desired}}]
        assert st["lastScaleTime"]
        scaled = [e for e in events(cluster, "shop", "web") if e["reason"] == "Scaled"]
        assert scaled and scaled[0]["type"] == "Normal" and scaled[0]["message"].startswith(f"1 -> {desired}")
    else:
        assert patches == []

    # The leader Lease was taken in the operator's namespace.
    lease = cluster.objects["coordination.k8s.io/v1/leases", "harmony-system", "harmony-operator"]
    assert lease["spec"]["holderIdentity"]
    # Its own /metrics.
    assert 'harmony_operator_desired_replicas{name="web",namespace="shop"}' in metrics
    assert "harmony_operator_reconcile_seconds_bucket" in metrics
    assert "harmony_operator_leader 1.0" in metrics
    assert "harmony_operator_inference_batch_size 1.0" in metrics  # one resource, one per batch
    # Every request, kopf's watches and the operator's own calls, came over TLS with the kubeconfig's
    # embedded client certificate.
    assert cluster.peers and set(cluster.peers) == {CLIENT_CN}


async def test_recommend_mode_never_patches_the_target(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "shadow", replicas=1)
    spec = autoscaler_spec(
        model={"uri": str(model_dir)},
        mode="Recommend",
        scaleTargetRef={"kind": "Deployment", "name": "shadow"},
    )
    # Capacity so small that any sane decision wants many more replicas than the 1 in place.
    spec["indicators"][0]["capacityPerReplica"] = 0.05
    add_autoscaler(cluster, "shop", "shadow", spec)
    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: status(cluster, "shop", "shadow").get("desiredReplicas") is not None)
        await asyncio.sleep(4.5)  # two more intervals
    assert runner.exception is None, runner.output
    st = status(cluster, "shop", "shadow")
    assert st["desiredReplicas"] > 1
    assert replicas(cluster, "shop", "shadow") == 1
    assert scale_patches(cluster, "shop", "shadow") == []
    c = condition(cluster, "shop", "shadow", "ScalingActive")
    assert (c["status"], c["reason"]) == ("False", "RecommendOnly")
    assert not [e for e in events(cluster, "shop", "shadow") if e["reason"] == "Scaled"]


async def test_faults_end_in_their_documented_states(
    cluster: Cluster,
    prometheus: PrometheusServer,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "forecaster.json").write_text("{not json")
    cases: dict[str, dict[str, Any]] = {
        "nodata": autoscaler_spec(
            'fisher_load_never_exported{container="container1"}', model={"uri": str(model_dir)}
        ),
        "nan": autoscaler_spec('fisher_load_nan{container="container1"}', model={"uri": str(model_dir)}),
        "stale": autoscaler_spec('fisher_load_stale{container="container1"}', model={"uri": str(model_dir)}),
        "ambiguous": autoscaler_spec(
            '{__name__=~"fisher_load|fisher_cpu_cores"}', model={"uri": str(model_dir)}
        ),
        "badquery": autoscaler_spec("sum(fisher_load", model={"uri": str(model_dir)}),
        "nomodel": autoscaler_spec(model={"uri": str(tmp_path / "no-such-model")}),
        "corrupt": autoscaler_spec(model={"uri": str(corrupt)}),
        "mismatch": autoscaler_spec(model={"uri": str(model_dir)}),
        "notarget": autoscaler_spec(model={"uri": str(model_dir)}),
        "invalid": autoscaler_spec(model={"uri": str(model_dir)}, mode="Auto"),
        "floor": autoscaler_spec('fisher_load_never_exported{container="container1"}', minReplicas=2),
    }
    cases["mismatch"]["indicators"] = cases["mismatch"]["indicators"][:1]  # the model also reads cpu_cores
    for name, spec in cases.items():
        spec["scaleTargetRef"] = {"kind": "Deployment", "name": "ghost" if name == "notarget" else name}
        if name != "notarget":
            add_deployment(cluster, "faults", name, replicas=0 if name == "floor" else 3)
        add_autoscaler(cluster, "faults", name, spec)

    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: all(condition(cluster, "faults", n, "Ready") for n in cases), timeout=45)
        await asyncio.sleep(2.5)
    assert runner.exception is None, runner.output

    def cond(name: str, type_: str) -> tuple[str, str]:
        c = condition(cluster, "faults", name, type_)
        return c.get("status", ""), c.get("reason", "")

    # Metrics unusable: hold the replicas in place, say why, warn.
    for name, reason in (
        ("nodata", "NoData"),
        ("nan", "NoData"),
        ("stale", "StaleData"),
        ("ambiguous", "AmbiguousQuery"),
        ("badquery", "QueryError"),
    ):
        assert cond(name, "MetricsAvailable") == ("False", reason), (name, status(cluster, "faults", name))
        assert cond(name, "Ready") == ("False", "MetricsUnavailable")
        assert status(cluster, "faults", name)["desiredReplicas"] == 3
        assert replicas(cluster, "faults", name) == 3
        assert scale_patches(cluster, "faults", name) == []
        # Announced once while the cause lasts, not every interval (which Kubernetes never aggregates).
        fallbacks = [e for e in events(cluster, "faults", name) if e["reason"] == "Fallback"]
        assert len(fallbacks) == 1 and fallbacks[0]["type"] == "Warning", (name, fallbacks)

    # Model unusable: the reactive rule on current demand, ceil(load / (1.0 * 0.7) * 1.1).
    for name, reason in (
        ("nomodel", "ModelNotFound"),
        ("corrupt", "ModelCorrupt"),
        ("mismatch", "ModelMismatch"),
    ):
        assert cond(name, "ModelLoaded") == ("False", reason), (name, status(cluster, "faults", name))
        st = status(cluster, "faults", name)
        load_now = load_at(prometheus, st["lastDecisionTime"])
        expected = max(1, math.ceil(load_now / 0.7 * 1.1 - 1e-9))
        assert st["fallback"] is True and st["reason"].startswith("fallback: model unusable")
        assert st["desiredReplicas"] == expected == replicas(cluster, "faults", name), (name, load_now, st)
        assert cond(name, "Ready")[0] == "True"
        kinds = {e["reason"] for e in events(cluster, "faults", name)}
        assert {"Fallback", "ModelError"} <= kinds

    # A missing target: nothing to scale, said once.
    assert cond("notarget", "Ready") == ("False", "TargetNotFound")
    assert [e["reason"] for e in events(cluster, "faults", "notarget")].count("TargetNotFound") == 1

    # An invalid resource: not touched at all.
    assert cond("invalid", "Ready") == ("False", "InvalidSpec")
    assert "spec.mode" in condition(cluster, "faults", "invalid", "Ready")["message"]
    assert replicas(cluster, "faults", "invalid") == 3
    assert scale_patches(cluster, "faults", "invalid") == []

    # No data and 0 replicas in place: never below minReplicas.
    assert replicas(cluster, "faults", "floor") == 2
    assert [p.data for p in scale_patches(cluster, "faults", "floor")] == [{"spec": {"replicas": 2}}]


async def test_api_conflicts_and_server_errors_are_retried(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two conflicts, then the PATCH goes through; a target whose /scale always answers 503; one whose /scale
    # PATCH always fails.
    cluster.faults = [
        Fault("PATCH", "/deployments/busy/scale", 409, times=2),
        Fault("GET", "/deployments/broken/scale", 503),
        Fault("PATCH", "/deployments/stuck/scale", 503),
    ]
    for name in ("busy", "broken", "stuck"):
        add_deployment(cluster, "api", name, replicas=1)
        spec = autoscaler_spec(
            model={"uri": str(model_dir)}, scaleTargetRef={"kind": "Deployment", "name": name}
        )
        spec["indicators"][0]["capacityPerReplica"] = 0.05  # forces a scale-up
        add_autoscaler(cluster, "api", name, spec)
    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(
            lambda: (
                replicas(cluster, "api", "busy") > 1
                and condition(cluster, "api", "broken", "Ready").get("reason") == "KubernetesAPIError"
                and condition(cluster, "api", "stuck", "Ready").get("reason") == "ScaleFailed"
            )
        )
    assert runner.exception is None, runner.output
    patches = scale_patches(cluster, "api", "busy")
    assert len(patches) >= 3 and cluster.faults[0].hits == 2
    assert replicas(cluster, "api", "busy") == status(cluster, "api", "busy")["desiredReplicas"]
    assert cluster.faults[1].hits >= 4  # retried within the reconcile before giving up
    assert replicas(cluster, "api", "broken") == 1
    assert scale_patches(cluster, "api", "broken") == []
    # A scale that keeps failing is not Ready (it used to stay True).
    c = condition(cluster, "api", "stuck", "Ready")
    assert (c["status"], c["reason"]) == ("False", "ScaleFailed")
    assert "scaling Deployment stuck to" in c["message"] and replicas(cluster, "api", "stuck") == 1
    assert condition(cluster, "api", "stuck", "ScalingActive")["reason"] == "ScaleFailed"


async def test_prometheus_unreachable_holds_the_replicas(
    cluster: Cluster, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "web", replicas=4)
    add_autoscaler(cluster, "shop", "web", autoscaler_spec(model={"uri": str(model_dir)}))
    with running_operator(monkeypatch, f"http://127.0.0.1:{_free_port()}") as runner:
        await wait_for(
            lambda: (
                condition(cluster, "shop", "web", "MetricsAvailable").get("reason") == "PrometheusUnreachable"
            )
        )
    assert runner.exception is None, runner.output
    assert status(cluster, "shop", "web")["desiredReplicas"] == 4
    assert replicas(cluster, "shop", "web") == 4
    assert scale_patches(cluster, "shop", "web") == []


async def test_deleted_resource_is_left_alone(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "gone", replicas=1)
    spec = autoscaler_spec(
        model={"uri": str(model_dir)}, scaleTargetRef={"kind": "Deployment", "name": "gone"}
    )
    add_autoscaler(cluster, "shop", "gone", spec)
    path = "/apis/harmony.dev/v1alpha1/namespaces/shop/harmonyautoscalers/gone"
    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: status(cluster, "shop", "gone").get("desiredReplicas") is not None)
        resp = await cluster.delete(path)
        assert resp.status == 200
        await wait_for(lambda: cluster.objects[HMA, "shop", "gone"].deleted, timeout=20)
        seen = len(list(cluster))
        await asyncio.sleep(5)  # more than two intervals
        later = list(cluster)[seen:]
    assert runner.exception is None, runner.output
    touching = [
        r
        for r in later
        if "/gone" in r.url.path
        or (r.data and isinstance(r.data, dict) and json.dumps(r.data).find('"gone"') >= 0)
    ]
    assert touching == []


async def test_a_spec_edit_acts_within_one_short_interval(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recommend every hour, edited to Apply every 2 s: the edit is acted on at once, not in an hour."""
    add_deployment(cluster, "shop", "edit", replicas=1)
    spec = autoscaler_spec(
        model={"uri": str(model_dir)},
        mode="Recommend",
        interval="1h",
        scaleTargetRef={"kind": "Deployment", "name": "edit"},
    )
    spec["indicators"][0]["capacityPerReplica"] = 0.05  # any decision wants more than 1 replica
    add_autoscaler(cluster, "shop", "edit", spec)
    path = "/apis/harmony.dev/v1alpha1/namespaces/shop/harmonyautoscalers/edit"
    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: status(cluster, "shop", "edit").get("desiredReplicas") is not None)
        assert replicas(cluster, "shop", "edit") == 1
        edited = {**spec, "mode": "Apply", "interval": "2s"}
        started = time.monotonic()
        resp = await cluster.patch(
            path, json={"spec": edited}, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status == 200
        await wait_for(lambda: replicas(cluster, "shop", "edit") > 1, timeout=30)
        acted_after = time.monotonic() - started
        # The status write follows the /scale write (and is retried after a conflict with kopf's own patch).
        await wait_for(lambda: status(cluster, "shop", "edit").get("observedGeneration") == 2, timeout=30)
    assert runner.exception is None, runner.output
    assert acted_after < 2.0 + 3.0, acted_after  # one short interval, plus a reconcile's own time
    st = status(cluster, "shop", "edit")
    assert st["observedGeneration"] == 2
    assert replicas(cluster, "shop", "edit") == st["desiredReplicas"]


async def test_every_exception_ends_in_a_condition_and_an_event(
    cluster: Cluster,
    prometheus: PrometheusServer,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each exception class of issue 19 item 4: the loop survives it, the status and an event say why."""
    from harmony_operator.spec import parse_spec

    from harmony.decision import Decider

    zero_step = tmp_path / "zero-step"
    shutil.copytree(model_dir, zero_step)
    meta = json.loads((zero_step / "forecaster.json").read_text())
    meta["spec"]["frequency_s"] = 0.0
    (zero_step / "forecaster.json").write_text(json.dumps(meta))
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("HARMONY_MODEL_CACHE_DIR", str(cache))
    cases: dict[str, dict[str, Any]] = {
        "s3": autoscaler_spec(model={"uri": "s3://models/fisher-load"}),  # no boto3 in the image
        "http": autoscaler_spec(model={"uri": "http://127.0.0.1:9/fisher-load"}),  # ValueError in MLflow
        "zerostep": autoscaler_spec(model={"uri": str(zero_step)}),  # would divide by zero
        "future": autoscaler_spec(model={"uri": str(model_dir)}),  # state from a clock an hour ahead
        "garbled": autoscaler_spec(model={"uri": str(model_dir)}),  # the API answers replicas: "many"
    }
    future = Decider(parse_spec(cases["future"]).decision_config())
    future.stabilizer.load_state_dict([(time.time() + 3600.0, 7)])
    for name, spec in cases.items():
        spec["scaleTargetRef"] = {"kind": "Deployment", "name": name}
        add_deployment(cluster, "errs", name, replicas="many" if name == "garbled" else 3)
        saved = {"state": future.state_dict()} if name == "future" else None
        add_autoscaler(cluster, "errs", name, spec, status=saved)

    def reconciles(name: str) -> int:
        scale = f"/apis/apps/v1/namespaces/errs/deployments/{name}/scale"
        return sum(1 for r in cluster if r.method == kmock.method.GET and r.url.path == scale)

    with running_operator(
        monkeypatch, prometheus.url, model_prefixes=f"{MODEL_PREFIXES},s3://models/,http://127.0.0.1:9/"
    ) as runner:
        await wait_for(lambda: all(condition(cluster, "errs", n, "Ready") for n in cases), timeout=45)
        # The loops survive: every resource is reconciled again after its failure.
        counts = {n: reconciles(n) for n in cases}
        await wait_for(lambda: all(reconciles(n) > counts[n] for n in cases), timeout=30)
    assert runner.exception is None, runner.output

    def cond(name: str, type_: str) -> tuple[str, str]:
        c = condition(cluster, "errs", name, type_)
        return c.get("status", ""), c.get("reason", "")

    for name in ("s3", "http"):
        assert cond(name, "ModelLoaded") == ("False", "ModelNotFound"), status(cluster, "errs", name)
        st = status(cluster, "errs", name)
        assert st["fallback"] is True and cond(name, "Ready")[0] == "True"
        assert {"ModelError", "Fallback"} <= {e["reason"] for e in events(cluster, "errs", name)}
    assert "botocore" in condition(cluster, "errs", "s3", "ModelLoaded")["message"]
    assert cond("zerostep", "ModelLoaded") == ("False", "ModelCorrupt")
    assert "frequency_s must be > 0" in condition(cluster, "errs", "zerostep", "ModelLoaded")["message"]
    # The failed downloads left nothing behind in the model cache.
    assert list(cache.iterdir()) == []

    # Saved state from the future: trimmed, announced, and the decision goes on from the forecast.
    st = status(cluster, "errs", "future")
    assert cond("future", "Ready") == ("True", "Deciding") and st["fallback"] is False
    assert all(t <= time.time() for t, _ in st["state"]["stabilizer"])
    assert [e["reason"] for e in events(cluster, "errs", "future")].count("ClockSkew") == 1

    # Anything else: Ready=False/InternalError with the exception, one event, the target untouched.
    c = condition(cluster, "errs", "garbled", "Ready")
    assert (c["status"], c["reason"]) == ("False", "InternalError")
    assert c["message"].startswith("ValueError: invalid literal for int()"), c
    assert [e["reason"] for e in events(cluster, "errs", "garbled")].count("InternalError") == 1
    assert scale_patches(cluster, "errs", "garbled") == []


async def test_pause_annotation_and_fallback_replicas(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KEDA's paused annotation (decide, never scale; lifting it acts at once) and its fixed fallback replicas
    after N reconciles without metrics, with the health counter in status."""
    add_deployment(cluster, "keda", "paused", replicas=1)
    paused = autoscaler_spec(
        model={"uri": str(model_dir)}, scaleTargetRef={"kind": "Deployment", "name": "paused"}
    )
    paused["indicators"][0]["capacityPerReplica"] = 0.05  # any decision wants more than 1 replica
    add_autoscaler(cluster, "keda", "paused", paused, annotations={"harmony.dev/paused": "true"})
    add_deployment(cluster, "keda", "nometrics", replicas=1)
    nometrics = autoscaler_spec(
        'fisher_load_never_exported{container="container1"}',
        model={"uri": str(model_dir)},
        scaleTargetRef={"kind": "Deployment", "name": "nometrics"},
        fallback={"replicas": 5, "failureThreshold": 2},
    )
    add_autoscaler(cluster, "keda", "nometrics", nometrics)
    path = "/apis/harmony.dev/v1alpha1/namespaces/keda/harmonyautoscalers/paused"
    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: replicas(cluster, "keda", "nometrics") == 5, timeout=45)
        await wait_for(lambda: status(cluster, "keda", "paused").get("desiredReplicas") is not None)
        await asyncio.sleep(2.5)  # another interval: still paused
        assert scale_patches(cluster, "keda", "paused") == []
        c = condition(cluster, "keda", "paused", "ScalingActive")
        assert (c["status"], c["reason"]) == ("False", "Paused")
        assert status(cluster, "keda", "paused")["desiredReplicas"] > 1
        started = time.monotonic()
        resp = await cluster.patch(
            path,
            json={"metadata": {"annotations": {"harmony.dev/paused": "false"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status == 200
        await wait_for(lambda: replicas(cluster, "keda", "paused") > 1, timeout=20)
        resumed_after = time.monotonic() - started
    assert runner.exception is None, runner.output
    assert resumed_after < 2.0 + 3.0, resumed_after

    st = status(cluster, "keda", "nometrics")
    assert st["health"]["status"] == "Failing" and st["health"]["consecutiveFailures"] >= 2
    assert "NoData" in st["health"]["lastFailure"]
    assert st["desiredReplicas"] == 5 and st["fallback"] is True
    assert st["reason"].startswith("fallback replicas: metrics unusable for")
    # Held at 1 for the first failure, 5 from the threshold on: one PATCH, one event.
    assert [p.data for p in scale_patches(cluster, "keda", "nometrics")] == [{"spec": {"replicas": 5}}]
    assert [e["reason"] for e in events(cluster, "keda", "nometrics")].count("FallbackReplicas") == 1
    assert status(cluster, "keda", "paused")["health"] == {"status": "Happy", "consecutiveFailures": 0}


async def test_any_scalable_kind_and_conflicting_autoscalers(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Argo Rollout found through API discovery is scaled through its /scale; kinds without one are
    reported; an HPA, a KEDA ScaledObject or an older HarmonyAutoscaler on the same target stops scaling."""
    cluster.resources["argoproj.io/v1alpha1/rollouts"] = kmock.ResourceInfo(
        kind="Rollout",
        namespaced=True,
        singular="rollout",
        verbs={"get", "list", "patch"},
        subresources={"scale"},
    )
    cluster.resources["keda.sh/v1alpha1/scaledobjects"] = kmock.ResourceInfo(
        kind="ScaledObject", namespaced=True, singular="scaledobject", verbs={"get", "list"}
    )

    def rollout_scale(request: kmock.Request) -> dict[str, Any]:
        obj = cluster.objects["argoproj.io/v1alpha1/rollouts", request.namespace, request.name]
        n = obj["spec"]["replicas"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "spec": {"replicas": n},
            "status": {"replicas": n},
        }

    (
        cluster["get", cluster.resource("argoproj.io/v1alpha1/rollouts"), cluster.subresource("scale")]
        << rollout_scale
    )
    cluster.objects["argoproj.io/v1alpha1/rollouts", "multi", "canary"] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "canary", "namespace": "multi"},
        "spec": {"replicas": 1},
    }
    cluster.objects["autoscaling/v2/horizontalpodautoscalers", "multi", "web-hpa"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web-hpa", "namespace": "multi"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "withhpa"}},
    }
    cluster.objects["keda.sh/v1alpha1/scaledobjects", "multi", "queue"] = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "queue", "namespace": "multi"},
        "spec": {"scaleTargetRef": {"name": "withkeda"}},  # KEDA's defaults: apps/v1 Deployment
    }

    def spec_for(api_version: str, kind: str, target: str) -> dict[str, Any]:
        spec = autoscaler_spec(
            model={"uri": str(model_dir)},
            scaleTargetRef={"apiVersion": api_version, "kind": kind, "name": target},
        )
        spec["indicators"][0]["capacityPerReplica"] = 0.05  # any decision wants more than 1 replica
        return spec

    for target in ("withhpa", "withkeda", "twice"):
        add_deployment(cluster, "multi", target, replicas=1)
    resources = {
        "rollout": spec_for("argoproj.io/v1alpha1", "Rollout", "canary"),
        "widget": spec_for("example.com/v1", "Widget", "w"),
        "daemonset": spec_for("apps/v1", "DaemonSet", "agents"),
        "withhpa": spec_for("apps/v1", "Deployment", "withhpa"),
        "withkeda": spec_for("apps/v1", "Deployment", "withkeda"),
        "first": spec_for("apps/v1", "Deployment", "twice"),
        "second": spec_for("apps/v1", "Deployment", "twice"),
        "shadow": {**spec_for("apps/v1", "Deployment", "withhpa"), "mode": "Recommend"},
    }
    for name, spec in resources.items():
        add_autoscaler(cluster, "multi", name, spec)
    for name, created in (("first", "2026-01-01T00:00:00Z"), ("second", "2026-06-01T00:00:00Z")):
        cluster.objects[HMA, "multi", name].patch({"metadata": {"creationTimestamp": created}})

    with running_operator(monkeypatch, prometheus.url) as runner:
        await wait_for(lambda: all(condition(cluster, "multi", n, "Ready") for n in resources), timeout=45)
        await wait_for(
            lambda: (
                cluster.objects["argoproj.io/v1alpha1/rollouts", "multi", "canary"]["spec"]["replicas"] > 1
            )
        )
        await asyncio.sleep(2.5)  # another interval for every loop
    assert runner.exception is None, runner.output

    def cond(name: str, type_: str) -> tuple[str, str, str]:
        c = condition(cluster, "multi", name, type_)
        return c.get("status", ""), c.get("reason", ""), c.get("message", "")

    rollout = [
        r
        for r in cluster
        if r.method == kmock.method.PATCH
        and r.url.path == "/apis/argoproj.io/v1alpha1/namespaces/multi/rollouts/canary/scale"
    ]
    # Scaled through the Rollout's own /scale, to the decision.
    assert rollout and rollout[-1].data == {
        "spec": {"replicas": status(cluster, "multi", "rollout")["desiredReplicas"]}
    }
    assert cluster.objects["argoproj.io/v1alpha1/rollouts", "multi", "canary"]["spec"]["replicas"] > 1
    assert cond("rollout", "Ready")[:2] == ("True", "Deciding")
    assert cond("widget", "Ready")[:2] == ("False", "TargetNotFound")
    assert "serves no kind Widget in example.com/v1" in cond("widget", "Ready")[2]
    assert cond("daemonset", "Ready")[:2] == ("False", "TargetNotFound")
    assert "has no scale subresource" in cond("daemonset", "Ready")[2]

    for name, other in (
        ("withhpa", "HorizontalPodAutoscaler web-hpa"),
        ("withkeda", "ScaledObject queue"),
        ("second", "HarmonyAutoscaler first"),
    ):
        target = resources[name]["scaleTargetRef"]["name"]
        assert cond(name, "Ready") == ("False", "ConflictingAutoscaler", f"also scaled by {other}"), name
        assert cond(name, "ScalingActive")[:2] == ("False", "ConflictingAutoscaler")
        assert status(cluster, "multi", name)["desiredReplicas"] > 1  # still decides
        assert [e["reason"] for e in events(cluster, "multi", name)].count("ConflictingAutoscaler") == 1
        if name != "second":
            assert scale_patches(cluster, "multi", target) == []
    # Shadow mode runs beside the autoscaler in charge by design: no conflict.
    assert cond("shadow", "Ready")[:2] == ("True", "Deciding")
    assert cond("shadow", "ScalingActive")[:2] == ("False", "RecommendOnly")
    # Of two HarmonyAutoscalers on one target the older scales, alone.
    assert cond("first", "Ready")[:2] == ("True", "Deciding")
    assert replicas(cluster, "multi", "twice") == status(cluster, "multi", "first")["desiredReplicas"] > 1
