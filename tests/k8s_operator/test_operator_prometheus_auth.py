"""Prometheus behind TLS and authentication (KEDA parity), and a resource's own Prometheus server.

A loopback HTTPS proxy (certificate from trustme) in front of the real backfilled Prometheus demands either
a bearer token or basic auth and forwards what it accepts. The operator's client reads its credentials and
CA from files, as the chart mounts them from Secrets, and re-reads them on every query (rotation).
"""

from __future__ import annotations

import base64
import math
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
from harmony_operator.batching import BatchSampler
from harmony_operator.kube import KubeClient
from harmony_operator.metrics import OperatorMetrics
from harmony_operator.models import ModelCache, ModelPolicy
from harmony_operator.prometheus import MetricsError, PrometheusAuth, PrometheusClient
from harmony_operator.reconcile import Reconciler, ReconcilerSettings
from operator_harness import (  # type: ignore[import-not-found]
    LOOKBACK,
    STEP_S,
    TLS,
    Cluster,
    PrometheusServer,
    add_deployment,
    autoscaler_spec,
    prometheus_proxy,
)

QUERY = [("load", 'fisher_load{container="container1"}')]
ACCEPTED = {"Bearer s3cr3t-token", "Basic " + base64.b64encode(b"harmony:pa55").decode()}


@pytest.fixture
async def guarded_prometheus(prometheus: PrometheusServer, tls: TLS) -> AsyncIterator[str]:
    seen: list[str] = []

    async def check(request: aiohttp.web.Request) -> aiohttp.web.Response | None:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") not in ACCEPTED:
            return aiohttp.web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        return None

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.server.configure_cert(ctx)
    async with prometheus_proxy(prometheus.url, check, ctx) as url:
        yield url


async def _history(url: str, auth: PrometheusAuth | None, prometheus: PrometheusServer) -> float:
    end = math.floor(prometheus.now / STEP_S) * STEP_S
    tls = auth.ssl_context() if auth is not None else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls) if tls else None) as http:
        h = await PrometheusClient(url, http, auth=auth).history(
            QUERY, end, STEP_S, LOOKBACK, stale_after_s=1800
        )
    return float(h.values[-1, 0])


async def test_bearer_token_and_basic_auth_over_tls_with_a_ca_file(
    guarded_prometheus: str, prometheus: PrometheusServer, tls: TLS, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(tls.ca.cert_pem.bytes())
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    end = math.floor(prometheus.now / STEP_S) * STEP_S
    expected = float(prometheus.load[int((prometheus.times == end).nonzero()[0][0])])
    bearer = PrometheusAuth(bearer_token_file=str(token), ca_file=str(ca))
    assert await _history(guarded_prometheus, bearer, prometheus) == expected
    (tmp_path / "user").write_text("harmony")
    (tmp_path / "password").write_text("pa55")
    basic = PrometheusAuth(
        username_file=str(tmp_path / "user"), password_file=str(tmp_path / "password"), ca_file=str(ca)
    )
    assert await _history(guarded_prometheus, basic, prometheus) == expected
    # A rotated Secret is read at the next query; a refused credential is its own reason, without it.
    token.write_text("expired")
    with pytest.raises(MetricsError) as info:
        await _history(guarded_prometheus, bearer, prometheus)
    assert info.value.reason == "PrometheusUnauthorized"
    assert "expired" not in str(info.value)
    # Without the CA the server's certificate is not trusted.
    with pytest.raises(MetricsError) as info:
        await _history(guarded_prometheus, PrometheusAuth(bearer_token_file=str(token)), prometheus)
    assert info.value.reason == "PrometheusUnreachable"
    assert "certificate" in str(info.value).lower()


def test_auth_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="not both"):
        PrometheusAuth(bearer_token_file="/t", username_file="/u", password_file="/p")
    with pytest.raises(ValueError, match="both a username file and a password file"):
        PrometheusAuth(username_file="/u")


async def test_a_resource_may_name_only_an_allowed_prometheus(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    """spec.prometheus.url: a server under an allowed prefix is queried (without the operator's credentials);
    any other (e.g. a cloud metadata address) is refused before a request is made."""
    add_deployment(cluster, "shop", "web", replicas=2)
    port = prometheus.url.rsplit(":", 1)[1]
    own = f"http://localhost:{port}"  # the same real server under another name: "the resource's own"
    async with aiohttp.ClientSession() as http, KubeClient() as kube:
        rec = Reconciler(
            kube,
            PrometheusClient("http://127.0.0.1:9", http),  # the operator's default server is down
            ModelCache(policy=ModelPolicy((tempfile.gettempdir() + "/",))),
            BatchSampler(50),
            OperatorMetrics(),
            ReconcilerSettings(stale_min_s=1800, prometheus_url_prefixes=("http://localhost:",)),
        )
        results = {}
        for url in (own, "http://169.254.169.254/latest"):
            spec = autoscaler_spec(model={"uri": str(model_dir)}, mode="Recommend", prometheus={"url": url})
            out = await rec.reconcile("shop", "web", spec, {}, 1)
            results[url] = {c["type"]: c for c in out.status["conditions"]}["MetricsAvailable"]
    assert (results[own]["status"], results[own]["reason"]) == ("True", "Queried")
    refused = results["http://169.254.169.254/latest"]
    assert (refused["status"], refused["reason"]) == ("False", "PrometheusNotAllowed")
    assert "not under an allowed prefix ['http://localhost:']" in refused["message"]
