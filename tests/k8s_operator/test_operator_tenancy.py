"""Tenancy: where model.uri may point, bounds on a model's size and load time, clean-up of downloads, and no
credential or other tenant's labels in any message. Against real files, a real MLflow store and real HTTP."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
from harmony_operator.models import ModelCache, ModelError, ModelPolicy
from harmony_operator.prometheus import MetricsError, PrometheusClient
from harmony_operator.redact import redact
from operator_harness import (  # type: ignore[import-not-found]
    LOOKBACK,
    STEP_S,
    Cluster,
    PrometheusServer,
    serve_app,
)


@pytest.mark.parametrize(
    "uri",
    [
        "/",
        "/etc",
        "file:///etc",
        "/models/../etc",
        "/modelsX/a",
        "s3://bucket/model",
        "http://127.0.0.1:9/model",
        "runs:/abc/model",
        "models:/../x",
    ],
)
async def test_default_policy_allows_only_the_registry_and_the_models_directory(
    uri: str, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(ModelError) as info:
        await cache.get(uri)
    assert info.value.reason == "ModelNotAllowed"
    assert "not under an allowed prefix ['models:/', '/models/']" in str(info.value)
    assert cache.loads == 0


async def test_a_symbolic_link_cannot_leave_an_allowed_directory(tmp_path: Path, model_dir: Path) -> None:
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "escape").symlink_to(model_dir)  # points outside the allowed directory
    policy = ModelPolicy((f"{allowed}/",))
    with pytest.raises(ModelError) as info:
        await ModelCache(tmp_path / "cache", policy=policy).get(str(allowed / "escape"))
    assert info.value.reason == "ModelNotAllowed"
    # A model inside an allowed directory loads.
    inside = ModelCache(tmp_path / "cache", policy=ModelPolicy((f"{model_dir.parent}/",)))
    assert (await inside.get(str(model_dir))).uri == str(model_dir)


def test_policy_is_validated_at_the_edge() -> None:
    for kwargs, message in (
        ({"allowed_prefixes": ()}, "prefixes"),
        ({"allowed_prefixes": ("",)}, "prefixes"),
        ({"max_bytes": 0}, "size bound"),
        ({"load_timeout_s": math.nan}, "time bound"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelPolicy(**kwargs)  # type: ignore[arg-type]


async def test_model_size_is_bounded(tmp_path: Path, model_dir: Path) -> None:
    size = sum(p.stat().st_size for p in model_dir.iterdir())
    policy = ModelPolicy((f"{model_dir.parent}/",), max_bytes=size - 1)
    with pytest.raises(ModelError) as info:
        await ModelCache(tmp_path / "cache", policy=policy).get(str(model_dir))
    assert info.value.reason == "ModelTooLarge"
    assert f"{size} bytes" in str(info.value)


@pytest.fixture
async def slow_registry() -> AsyncIterator[str]:
    """An HTTP server that answers every MLflow call with 404 after 3 s."""

    async def slow(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await asyncio.sleep(3.0)
        return aiohttp.web.json_response({"error_code": "RESOURCE_DOES_NOT_EXIST"}, status=404)

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    async with serve_app(app) as url:
        yield url


async def test_model_load_time_is_bounded(
    tmp_path: Path, slow_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", slow_registry)
    mlflow.set_tracking_uri(slow_registry)
    try:
        cache = ModelCache(tmp_path / "cache", policy=ModelPolicy(load_timeout_s=1.0))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ModelError) as info:
            await cache.get("models:/fisher-load/1")
        assert info.value.reason == "ModelLoadTimeout"
        assert loop.time() - started < 2.5
        await asyncio.sleep(3.5)  # the abandoned worker finishes its download attempt and cleans up
        assert list((tmp_path / "cache").iterdir()) == []
    finally:
        mlflow.set_tracking_uri(None)


async def test_failed_and_finished_downloads_leave_no_files(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from harmony.model import mlflow_model
    from harmony.model.base import Forecaster

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            mlflow.pyfunc.log_model(
                name="forecaster",
                python_model=mlflow_model.__file__,
                artifacts={mlflow_model.FORECASTER_ARTIFACT: str(model_dir)},
                signature=mlflow_model.model_signature(Forecaster.load(model_dir)),
            )
        cache = ModelCache(tmp_path / "cache", policy=ModelPolicy(("runs:/",)))
        for bad in (f"runs:/{run.info.run_id}/no-such-path", "runs:/0123456789abcdef/forecaster"):
            with pytest.raises(ModelError) as info:
                await cache.get(bad)
            assert info.value.reason in ("ModelNotFound", "ModelCorrupt"), info.value
            assert list((tmp_path / "cache").iterdir()) == []
        loaded = await cache.get(f"runs:/{run.info.run_id}/forecaster")
        assert loaded.forecaster.spec.indicators == ("load", "cpu_cores")
        assert list((tmp_path / "cache").iterdir()) == []  # the weights are in memory; the files went
    finally:
        mlflow.set_tracking_uri(None)


def test_redact_removes_credentials() -> None:
    text = (
        "GET https://alice:pa55@prom.example:9090/api?query=up&token=t0k&x=1 failed: "
        "{'Authorization': 'Bearer abc.def'} s3://bucket/m?X-Amz-Signature=ffff&X-Amz-Credential=AKIA"
    )
    out = redact(text)
    for secret in ("alice", "pa55", "t0k", "abc.def", "ffff", "AKIA"):
        assert secret not in out
    assert "https://***@prom.example:9090/api?query=up&token=***&x=1" in out


async def test_prometheus_messages_carry_no_credentials_nor_other_series_labels(
    prometheus: PrometheusServer,
) -> None:
    end = math.floor(prometheus.now / STEP_S) * STEP_S
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsError) as info:
            await PrometheusClient("http://harmony:hunter2@127.0.0.1:9", http, timeout_s=2).history(
                [("load", "up")], end, STEP_S, LOOKBACK, stale_after_s=1800
            )
        assert info.value.reason == "PrometheusUnreachable"
        assert "hunter2" not in str(info.value) and "***@127.0.0.1:9" in str(info.value)
        with pytest.raises(MetricsError) as info:
            await PrometheusClient(prometheus.url, http).history(
                [("load", '{__name__=~"fisher_load|fisher_cpu_cores"}')],
                end,
                STEP_S,
                LOOKBACK,
                stale_after_s=1800,
            )
    assert info.value.reason == "AmbiguousQuery"
    assert "container1" not in str(info.value).replace('{__name__=~"fisher_load|fisher_cpu_cores"}', "")
    assert "returned 2 series" in str(info.value)


def test_operator_environment_sets_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from harmony_operator.handlers import OperatorOptions

    monkeypatch.setenv("HARMONY_PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("HARMONY_MODEL_URI_PREFIXES", "models:/team-a-,/models/team-a/")
    monkeypatch.setenv("HARMONY_MODEL_MAX_BYTES", "1000")
    options = OperatorOptions.from_env()
    assert options.model_uri_prefixes == ("models:/team-a-", "/models/team-a/")
    assert options.model_max_bytes == 1000
    assert os.environ["HARMONY_MODEL_URI_PREFIXES"]


@pytest.mark.parametrize(
    ("query", "allowed"),
    [
        ('sum(rate(http_requests_total{namespace="team-a", job="web"}[2m]))', True),
        ('max_over_time(queue_depth{namespace="team-a"}[10m:1m])', True),
        ('sum(rate(a{namespace="team-a"}[1m])) / on() group_left sum(b{namespace="team-a"})', True),
        ('x{job="web" or namespace="team-a"}', False),  # the first alternative is not confined
        ('sum(rate(a{namespace="team-a"}[1m])) / sum(b)', False),  # one selector escapes
        ('x{namespace=~"team-a|team-b"}', False),  # only equality confines
        ('{__name__=~"fisher_.*"}', False),
        ("sum(", False),  # does not parse: refused, not sent
    ],
)
def test_query_guard_confines_every_selector_to_the_namespace(query: str, allowed: bool) -> None:
    from harmony_operator.queryguard import QueryNotAllowed, check_query

    if allowed:
        check_query(query, "namespace", "team-a")
    else:
        with pytest.raises(QueryNotAllowed):
            check_query(query, "namespace", "team-a")


async def test_a_guarded_operator_refuses_another_namespaces_query(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    """With the guard on, a query that would read series outside the resource's namespace never reaches
    Prometheus; the condition names the selector at fault."""
    from harmony_operator.batching import BatchSampler
    from harmony_operator.kube import KubeClient
    from harmony_operator.metrics import OperatorMetrics
    from harmony_operator.reconcile import Reconciler, ReconcilerSettings
    from operator_harness import add_deployment, autoscaler_spec  # type: ignore[import-not-found]

    add_deployment(cluster, "shop", "web", replicas=2)
    async with aiohttp.ClientSession() as http, KubeClient() as kube:
        rec = Reconciler(
            kube,
            PrometheusClient(prometheus.url, http),
            ModelCache(policy=ModelPolicy((tempfile.gettempdir() + "/",))),
            BatchSampler(50),
            OperatorMetrics(),
            ReconcilerSettings(stale_min_s=1800, query_namespace_label="container"),
        )
        # The backfilled series carry container="container1": treat that label as the "namespace" label.
        spec = autoscaler_spec(model={"uri": str(model_dir)}, mode="Recommend")
        out = await rec.reconcile("shop", "web", spec, {}, 1)
    c = {c["type"]: c for c in out.status["conditions"]}["MetricsAvailable"]
    assert (c["status"], c["reason"]) == ("False", "QueryNotAllowed")
    assert 'every series selector needs container="shop"' in c["message"]
    assert 'fisher_load{container="container1"}' in c["message"]
