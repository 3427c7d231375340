"""Real components for the operator's tests: an HTTPS Kubernetes API (kmock) and a real Prometheus.

Kubernetes: `kmock.KubernetesEmulator` serves a stateful Kubernetes API over real HTTP on loopback, here
behind TLS that verifies client certificates (`tls` fixture: a CA, a server certificate for 127.0.0.1 and
a client certificate, made by `trustme` at test time). The tests' kubeconfig embeds the CA and the client
certificate and key as base64 data, the form kind, kubeadm and most cloud tools write; a request without
an untrusted certificate never reaches the emulator; `Cluster.peers` records the client certificate's
common name and `Cluster.auths` the Authorization header each request came with. Its gaps that matter to the operator are closed in `Cluster` below:

* JSON patches (kopf adds and removes its finalizer with them) are applied with `jsonpatch`, including
  the `test` of `metadata.resourceVersion`, which fails with 409 like a real API server;
* objects get `uid`, `resourceVersion` (bumped on every write), `generation` (bumped when `.spec`
  changes), `creationTimestamp`, and their namespace from the URL;
* `generateName` is honoured (every kopf event is posted with one);
* `GET .../scale` answers an `autoscaling/v1` Scale built from the parent, as the API server does.

Gaps left open, and what stands in: the CRD's schema is not enforced by the emulator (tests validate their
resources against it with jsonschema in tests/chart, and the operator validates every spec itself); label
selectors and field selectors are ignored (the operator uses neither); no admission, no RBAC (the chart's
RBAC is asserted in tests/chart). The `e2e` marker runs the same scenarios against a real cluster.

Prometheus: the Debian `prometheus` package's server and promtool (`.ci/run` and `make test` install it).
The tests backfill a slice of the real Fisher trace (container1, 10-minute steps) with promtool, re-timed so
that its last steps lie around the test's wall-clock time, start the server on loopback and query it over
HTTP exactly as the operator does in a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import functools
import math
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch
import kmock
import numpy as np
import pytest
import requests
import trustme
from kmock import KubernetesObjectNotFoundError

from harmony.model.base import Forecaster, ForecastSpec

STEP_S = 600.0  # the Fisher trace's 10-minute step
LOOKBACK = 36
HORIZON = 6
SLICE_ROWS = 400
FUTURE_STEPS = 12  # samples after "now", so a slow test never sees its data go stale


def _merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new` (None deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    out: dict[str, Any] = {}
    for k in old:
        if k not in new:
            out[k] = None
    for k, v in new.items():
        if k not in old:
            out[k] = copy.deepcopy(v)
        elif old[k] != v:
            out[k] = _merge_diff(old[k], v)
    return out


@dataclass
class Fault:
    """Answer `times` requests of `method` whose path ends with `path_suffix` with HTTP `status`
    (only those from the client whose User-Agent ends with `agent`, when set)."""

    method: str
    path_suffix: str
    status: int
    times: int = 1_000_000
    hits: int = 0
    agent: str | None = None  # only requests whose User-Agent ends with this


class Cluster(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps above closed, plus injectable API faults (409, 5xx)."""

    _rv: int = 0
    faults: list[Fault] = []  # noqa: RUF012 - replaced per test by the fixture
    peers: list[str] = []  # noqa: RUF012 - the client certificate's common name of each request
    auths: list[str] = []  # noqa: RUF012 - the Authorization header of each request

    def _peer(self, request: kmock.Request) -> str:
        raw = request._raw_request
        cert = raw.transport.get_extra_info("peercert") if raw is not None and raw.transport else None
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return ""

    def _next_rv(self) -> str:
        type(self)._rv += 1
        return str(type(self)._rv)

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(dict(self.objects[key].raw))
        return None

    async def _handle(self, request: kmock.Request) -> Any:
        self.peers.append(self._peer(request))
        self.auths.append(str(request.headers.get("Authorization", "")))
        for fault in self.faults:
            if (
                fault.hits < fault.times
                and str(request.method).upper().endswith(fault.method)
                and request.url.path.endswith(fault.path_suffix)
                and (fault.agent is None or str(request.headers.get("User-Agent", "")).endswith(fault.agent))
            ):
                fault.hits += 1
                return await self._error(request, fault.status)
        if (
            request.resource is not None
            and request.action == kmock.action.CREATE
            and isinstance(request.data, dict)
        ):
            data = copy.deepcopy(request.data)
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta["resourceVersion"] = self._next_rv()
            if "spec" in data:
                meta.setdefault("generation", 1)
            request = self._replace(request, data)
        elif request.resource is not None and request.action == kmock.action.UPDATE and request.name:
            current = self._current(request)
            if current is not None and request.subresource not in ("scale",):
                patch = request.data
                if isinstance(patch, list):  # a JSON patch
                    try:
                        new = jsonpatch.apply_patch(current, patch)
                    except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed):
                        return await self._error(request, 409)
                    patch = _merge_diff(current, new)
                elif isinstance(patch, dict) and request.subresource is None:
                    # A resourceVersion in a merge patch is a precondition, as on a real API server.
                    sent_rv = (patch.get("metadata") or {}).get("resourceVersion")
                    if sent_rv and sent_rv != (current.get("metadata") or {}).get("resourceVersion"):
                        return await self._error(request, 409)
                if isinstance(patch, dict):
                    if request.subresource == "status":
                        patch = {"status": patch.get("status")}
                    patch = copy.deepcopy(patch)
                    meta = patch.setdefault("metadata", {}) or {}
                    patch["metadata"] = meta
                    meta["resourceVersion"] = self._next_rv()
                    if "spec" in patch and request.subresource is None:
                        meta["generation"] = int((current.get("metadata") or {}).get("generation", 1)) + 1
                    request = self._replace(request, patch)
        return await super()._handle(request)

    def _replace(self, request: kmock.Request, data: Any) -> kmock.Request:
        # kmock matches reactions against the requests it has recorded: record the rewritten one instead.
        new = attrs.evolve(request, data=data)
        for k in range(len(self._requests) - 1, -1, -1):
            if self._requests[k] is request:
                self._requests[k] = new
                break
        return new

    async def _error(self, request: kmock.Request, status: int) -> Any:
        import aiohttp.web

        reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}.get(status, "Failure")
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "code": status,
            "message": f"{reason} on {request.method} {request.url.path}",
        }
        return aiohttp.web.json_response(body, status=status)


def scale_of(cluster: Cluster, plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.objects[f"apps/v1/{plural}", namespace, name]
    spec = obj.get("spec", {})
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": obj.get("status", {}).get("replicas", spec.get("replicas", 1))},
    }


CLIENT_CN = "system:serviceaccount:harmony-system:harmony-operator"


@dataclass(frozen=True)
class TLS:
    """A CA, the API server's certificate for 127.0.0.1 and the operator's client certificate."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        # Optional, so that token-only logins (in-cluster, exec tokens) can be tested too; an untrusted
        # certificate is still refused, and `Cluster.peers` shows which requests carried the trusted one.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        self.client.configure_cert(ctx)
        return ctx

    @staticmethod
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def kubeconfig(
        self, server: str, *, user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None
    ) -> str:
        """A kubeconfig embedding the CA and the client certificate and key (`user`/`cluster` override)."""
        import yaml

        cluster_entry = cluster or {
            "server": server,
            "certificate-authority-data": self.b64(self.ca.cert_pem.bytes()),
        }
        user_entry = (
            user
            if user is not None
            else {
                "client-certificate-data": self.b64(self.client.cert_chain_pems[0].bytes()),
                "client-key-data": self.b64(self.client.private_key_pem.bytes()),
            }
        )
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": cluster_entry}],
                "users": [{"name": "test", "user": user_entry}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}
                ],
                "current-context": "test",
            }
        )


@pytest.fixture(scope="session")
def tls() -> TLS:
    ca = trustme.CA()
    return TLS(ca, ca.issue_cert("127.0.0.1"), ca.issue_cert("harmony-operator", common_name=CLIENT_CN))


class TLSServer(aiohttp.test_utils.RawTestServer):
    """kmock's server (aiohttp's raw test server) listening with TLS."""

    def __init__(self, handler: Any, *, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._tls = ssl_context

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        await super().start_server(loop=loop, ssl=self._tls, **kwargs)


@pytest.fixture
def kmock_options(tls: TLS) -> dict[str, Any]:
    client_ctx = tls.client_context()
    return {
        "cls": Cluster,
        "server_cls": functools.partial(TLSServer, ssl_context=tls.server_context()),
        # kmock's own client (cluster.get/delete in tests) also needs the CA and a client certificate.
        "client_fct": lambda url: aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=client_ctx)),
    }


@pytest.fixture
def cluster(kmock: Cluster, tls: TLS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The emulated cluster with the resources the operator uses, and a kubeconfig pointing at it."""
    kmock.faults = []
    kmock.peers = []
    kmock.auths = []
    kmock.resources.load_bundled()
    kmock.resources["harmony.dev/v1alpha1/harmonyautoscalers"] = kmock.ResourceInfo(
        kind="HarmonyAutoscaler",
        namespaced=True,
        singular="harmonyautoscaler",
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    )

    def get_scale(request: kmock.Request) -> dict[str, Any]:
        try:
            gone = kmock.objects[
                f"apps/v1/{request.resource.plural}", request.namespace, request.name
            ].deleted
        except KeyError:
            gone = True
        if gone:
            raise KubernetesObjectNotFoundError()
        return scale_of(kmock, request.resource.plural, request.namespace, request.name)

    for plural in ("deployments", "statefulsets"):
        kmock["get", kmock.resource(f"apps/v1/{plural}"), kmock.subresource("scale")] << get_scale
    config = tmp_path / "kubeconfig"
    config.write_text(tls.kubeconfig(str(kmock.url).rstrip("/")))
    monkeypatch.setenv("KUBECONFIG", str(config))
    # Not in a pod: the in-cluster service account must not shadow the kubeconfig.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return kmock


def _metadata(namespace: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1",
        "generation": 1,
    }


def add_deployment(cluster: Cluster, namespace: str, name: str, replicas: int | str = 1) -> None:
    cluster.objects["apps/v1/deployments", namespace, name] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(namespace, name),
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        "status": {"replicas": replicas},
    }


def add_autoscaler(
    cluster: Cluster,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> None:
    obj: dict[str, Any] = {
        "apiVersion": "harmony.dev/v1alpha1",
        "kind": "HarmonyAutoscaler",
        "metadata": _metadata(namespace, name),
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    cluster.objects["harmony.dev/v1alpha1/harmonyautoscalers", namespace, name] = obj


# --- Prometheus backfilled with a real trace slice ---------------------------------------------------------


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    now: float  # the wall-clock instant the slice was aligned to
    load: np.ndarray  # the slice's `load` values, oldest first
    cpu: np.ndarray
    times: np.ndarray  # unix seconds of each value


@contextlib.asynccontextmanager
async def prometheus_proxy(
    upstream: str,
    before: Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.Response | None]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """A loopback proxy in front of a real Prometheus at `upstream`; yields its URL (https with
    `ssl_context`). `before` sees each request first: it may delay it, or answer it itself (a refusal);
    otherwise the upstream's own answer is returned unchanged."""

    async def proxy(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if before is not None and (answer := await before(request)) is not None:
            return answer
        async with (
            aiohttp.ClientSession() as http,
            http.get(upstream + request.path, params=request.query) as resp,
        ):
            return aiohttp.web.Response(
                body=await resp.read(), status=resp.status, content_type="application/json"
            )

    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", proxy)
    async with serve_app(app, ssl_context) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_app(
    app: aiohttp.web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (https with `ssl_context`)."""
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context is not None else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_prometheus() -> tuple[str, str]:
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prom and promtool:
        return prom, promtool
    # make test installs it; a developer's plain `pytest` on a Debian machine gets it here.
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "prometheus"],
            check=False,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not (shutil.which("prometheus") and shutil.which("promtool")):
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "prometheus"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and promtool):
        pytest.fail(
            "the operator tests need the Debian package `prometheus` (apt-get install prometheus)",
            pytrace=False,
        )
    return prom, promtool


def _om(value: float) -> str:
    return "NaN" if not math.isfinite(value) else repr(float(value))


@pytest.fixture(scope="session")
def fisher_slice(load_trace: Any) -> tuple[np.ndarray, np.ndarray]:
    """`load` and `cpu_cores` of Fisher container1: the busiest stretch, SLICE_ROWS rows of real data."""
    frame = load_trace("fisher_containers")["container1"][["load", "cpu_cores"]].to_numpy()
    rows = SLICE_ROWS + FUTURE_STEPS
    start = len(frame) - rows
    chunk = frame[start:]
    assert np.isfinite(chunk).all(), "the chosen Fisher stretch must be complete"
    return chunk[:, 0].copy(), chunk[:, 1].copy()


@pytest.fixture(scope="session")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, fisher_slice: tuple[np.ndarray, np.ndarray]
) -> Iterator[PrometheusServer]:
    prom, promtool = _ensure_prometheus()
    root = tmp_path_factory.mktemp("prometheus")
    load, cpu = fisher_slice
    now = time.time()
    # The grid the operator queries is floor(now / step) * step; align the slice to it, with FUTURE_STEPS
    # samples after now so minutes of test time never make it stale.
    last = math.floor(now / STEP_S) * STEP_S + FUTURE_STEPS * STEP_S
    times = last - STEP_S * np.arange(len(load))[::-1]
    lines: list[str] = []
    lines.append("# TYPE fisher_load gauge")
    lines += [
        f'fisher_load{{container="container1"}} {_om(v)} {int(t)}' for v, t in zip(load, times, strict=True)
    ]
    lines.append("# TYPE fisher_cpu_cores gauge")
    lines += [
        f'fisher_cpu_cores{{container="container1"}} {_om(v)} {int(t)}'
        for v, t in zip(cpu, times, strict=True)
    ]
    # Faults, from the same real values: a series that stopped two hours before now (stale) and one
    # whose samples are all NaN (a broken exporter).
    lines.append("# TYPE fisher_load_stale gauge")
    lines += [
        f'fisher_load_stale{{container="container1"}} {_om(v)} {int(t)}'
        for v, t in zip(load, times, strict=True)
        if t < now - 7200
    ]
    lines.append("# TYPE fisher_load_nan gauge")
    lines += [f'fisher_load_nan{{container="container1"}} NaN {int(t)}' for t in times]
    lines.append("# EOF")
    data = root / "data.om"
    data.write_text("\n".join(lines) + "\n")
    tsdb = root / "tsdb"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(data), str(tsdb)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    (root / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    port = _free_port()
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=3650d",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}", pytrace=False
                )
            time.sleep(0.1)
        else:
            pytest.fail("prometheus did not become ready in 30 s", pytrace=False)
        yield PrometheusServer(url, now, load, cpu, times)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- a trained model on the same trace ------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, load_trace: Any) -> Path:
    """Seasonal naive (a real fitted forecaster, seconds to fit) on Fisher container1's load and CPU."""
    import harmony.model.registry  # noqa: F401  (registers the models)
    from harmony.data.windows import chronological_split

    trace = load_trace("fisher_containers")
    spec = ForecastSpec.for_trace(
        trace,
        lookback=LOOKBACK,
        horizon=HORIZON,
        lead_time=0,
        targets=["load"],
        indicators=["load", "cpu_cores"],
    )
    model = Forecaster.registered()["seasonal_naive"](spec)
    model.fit(trace, chronological_split(trace, (0.7, 0.1, 0.2)))
    out = tmp_path_factory.mktemp("models") / "fisher-load"
    model.save(out)
    return out


def autoscaler_spec(
    prom_query_load: str = 'fisher_load{container="container1"}', **over: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1,
        "maxReplicas": 40,
        "mode": "Apply",
        "interval": "2s",
        "leadTime": "0s",
        "slo": {"maxViolationProbability": 0.05},
        "cost": {"replicaHourPrice": 1.0, "violationPenalty": 0.0},
        "indicators": [
            {"name": "load", "query": prom_query_load, "capacityPerReplica": 1.0, "level": 1},
            {"name": "cpu_cores", "query": 'fisher_cpu_cores{container="container1"}', "level": 2},
        ],
        "behavior": {"scaleDownStabilization": "0s"},
        "fallback": {"targetUtilization": 0.7, "safetyMargin": 0.1},
    }
    spec.update(over)
    return spec


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Poll (without blocking the loop that serves kmock) until `predicate()` is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}"
    )
