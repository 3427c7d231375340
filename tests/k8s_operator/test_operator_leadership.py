"""Fenced leadership with two real operator runtimes against the HTTPS Kubernetes API and real Prometheus.

Instance `b`'s wall clock runs ahead; instance `a` leads, then its lease renewals start failing while one of
its reconciles is slow (its Prometheus answers after 5 s). client-go's rules must hold: `b` never takes over
on the strength of its own clock, the two never lead at once, `a`'s late decision is never written, and
every write comes from the one leader of the moment.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.web
import kmock
import pytest
from harmony_operator.handlers import OperatorOptions, Runtime
from harmony_operator.kube import KubeClient, NotLeader
from operator_harness import (  # type: ignore[import-not-found]
    Cluster,
    Fault,
    PrometheusServer,
    add_autoscaler,
    add_deployment,
    autoscaler_spec,
    prometheus_proxy,
    wait_for,
)

SLOW_S = 5.0


@pytest.fixture
async def slow_prometheus(prometheus: PrometheusServer) -> AsyncIterator[str]:
    """A loopback proxy that answers with the real Prometheus' answer SLOW_S seconds late."""

    async def late(request: aiohttp.web.Request) -> None:
        await asyncio.sleep(SLOW_S)

    async with prometheus_proxy(prometheus.url, late) as url:
        yield url


def _options(identity: str, prometheus_url: str) -> OperatorOptions:
    return OperatorOptions(
        prometheus_url=prometheus_url,
        metrics_port=None,
        lease_namespace="harmony-system",
        num_samples=50,
        min_staleness_s=900,
        lease_duration_s=3.0,
        renew_deadline_s=2.0,
        retry_period_s=0.5,
        identity=identity,
        model_uri_prefixes=(tempfile.gettempdir() + "/",),
    )


def _writes(cluster: Cluster) -> list[tuple[str, str]]:
    return [
        (str(r.headers.get("User-Agent", "")).rsplit("/", 1)[-1], r.url.path)
        for r in cluster
        if r.method == kmock.method.PATCH and r.url.path.endswith(("/scale", "/status"))
    ]


async def test_skewed_clock_and_slow_reconcile_leave_one_writer(
    cluster: Cluster,
    prometheus: PrometheusServer,
    slow_prometheus: str,
    model_dir: Path,
) -> None:
    add_deployment(cluster, "shop", "web", replicas=1)
    spec = autoscaler_spec(model={"uri": str(model_dir)})
    spec["indicators"][0]["capacityPerReplica"] = 0.05  # any decision scales up: a write is due
    add_autoscaler(cluster, "shop", "web", spec)
    a = Runtime(_options("a", slow_prometheus))
    b = Runtime(_options("b", prometheus.url))
    assert b.elector is not None
    b.elector.wall_clock = lambda: time.time() + 60  # b's renewTime reading says a's lease is long dead
    both: list[float] = []

    async def watch_overlap() -> None:
        while True:
            if a.is_leader and b.is_leader:
                both.append(time.monotonic())
            await asyncio.sleep(0.01)

    monitor = asyncio.create_task(watch_overlap())
    try:
        await a.start()
        assert a.is_leader
        await b.start()
        await asyncio.sleep(2.0)  # four renewals by a: b, however skewed, stays a follower
        assert not b.is_leader
        # From now on a's renewals fail, while a's reconcile waits SLOW_S on its Prometheus.
        cluster.faults = [Fault("PATCH", "/leases/harmony-operator", 503, agent="harmony-operator/a")]
        slow = asyncio.create_task(a.step("shop", "web", spec, {}, 1))
        await asyncio.sleep(0.1)
        assert a.is_leader  # it started as the leader
        await wait_for(lambda: b.is_leader, timeout=10)
        # b waited a whole lease duration after the last renewal it saw, a stopped before that.
        assert not a.is_leader
        await slow  # a's decision arrives late: fenced, nothing written
        assert _writes(cluster) == []
        await b.step("shop", "web", spec, {}, 1)
    finally:
        monitor.cancel()
        await a.close()
        await b.close()
    writers = {who for who, _ in _writes(cluster)}
    assert writers == {"b"}, _writes(cluster)
    assert both == []
    lease = cluster.objects["coordination.k8s.io/v1/leases", "harmony-system", "harmony-operator"]
    assert lease["spec"]["leaseTransitions"] == 1
    st = cluster.objects["harmony.dev/v1alpha1/harmonyautoscalers", "shop", "web"].get("status") or {}
    assert cluster.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] > 1, st


async def test_a_fenced_write_is_never_sent(cluster: Cluster) -> None:
    add_deployment(cluster, "shop", "web", replicas=3)
    async with KubeClient(guard=lambda: False) as kube:
        assert (await kube.get_scale("shop", "deployments", "web")).spec_replicas == 3  # reads pass
        with pytest.raises(NotLeader, match="not the leader any more"):
            await kube.patch_scale("shop", "deployments", "web", 5)
        with pytest.raises(NotLeader):
            await kube.patch_status("harmony.dev", "v1alpha1", "harmonyautoscalers", "shop", "web", {})
    assert [r.method for r in cluster] == [kmock.method.GET]
