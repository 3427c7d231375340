"""harmony as a KEDA external scaler, tested as KEDA uses it: a real gRPC client on loopback calls every RPC of
`externalscaler.proto` on the running `harmony-scaler`, which reads the HarmonyAutoscalers that the real
operator (under KopfRunner) decided on a real Prometheus backfilled with the Fisher trace, through kmock's
HTTP Kubernetes API (operator_harness.py).

What KEDA does with the answers is reproduced from its and Kubernetes' source, not mocked: KEDA turns the
metric into a milli-quantity (`GenerateMetricInMili`) and the HPA's `GetExternalPerPodMetricReplicas`
computes the replicas from it (`hpa_replicas` below).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import math
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from harmony_operator.keda import externalscaler_pb2 as pb
from harmony_operator.keda import externalscaler_pb2_grpc as pb_grpc
from harmony_operator.keda.scaler import PAUSED_ANNOTATION, ScalerServer, ScalerSettings
from harmony_operator.keda.stubs import GENERATED, PACKAGE_DIR, generate
from kopf.testing import KopfRunner
from operator_harness import (  # type: ignore[import-not-found]
    Cluster,
    PrometheusServer,
    add_autoscaler,
    add_deployment,
    autoscaler_spec,
    wait_for,
)

HMA = "harmony.dev/v1alpha1/harmonyautoscalers"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_operator(monkeypatch: pytest.MonkeyPatch, prometheus_url: str) -> Iterator[KopfRunner]:
    monkeypatch.setenv("HARMONY_PROMETHEUS_URL", prometheus_url)
    monkeypatch.setenv("HARMONY_METRICS_PORT", "0")
    monkeypatch.setenv("HARMONY_LEADER_ELECTION", "false")
    monkeypatch.setenv("HARMONY_NUM_SAMPLES", "200")
    monkeypatch.setenv("HARMONY_MIN_STALENESS_S", "900")  # 10-minute trace samples are fresh here
    # The tests' models live in pytest's temporary directories (the default allows models:/ and /models/).
    monkeypatch.setenv("HARMONY_MODEL_URI_PREFIXES", f"models:/,{tempfile.gettempdir()}/")
    with KopfRunner(["run", "-A", "--standalone", "-m", "harmony_operator.handlers"], timeout=60) as runner:
        yield runner


@asynccontextmanager
async def scaler(**settings: Any) -> AsyncIterator[tuple[ScalerServer, pb_grpc.ExternalScalerStub]]:
    """The scaler on a free loopback port, and a client of it over a real gRPC channel."""
    defaults: dict[str, Any] = {
        "port": 0,
        "bind_address": "127.0.0.1",
        "cache_ttl_s": 0.0,
        "stream_period_s": 0.2,
        "status_period_s": 0.0,
    }
    server = ScalerServer(ScalerSettings(**{**defaults, **settings}))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, pb_grpc.ExternalScalerStub(channel)
    finally:
        await channel.close()
        await server.stop(grace_s=0.5)


def ref(autoscaler: str | None, *, so: str = "so", ns: str = "shop", **meta: str) -> Any:
    """The ScaledObjectRef KEDA sends: the ScaledObject's name and namespace, and the trigger's metadata."""
    metadata = {"scalerAddress": "harmony-operator-keda.harmony-system.svc:6000", **meta}
    if autoscaler is not None:
        metadata["autoscaler"] = autoscaler
    return pb.ScaledObjectRef(name=so, namespace=ns, scalerMetadata=metadata)


def hpa_replicas(current: int, metric_value: float, target: float, tolerance: float = 0.0) -> int:
    """What KEDA and the HPA make of an AverageValue external metric (Kubernetes' replica_calculator.go,
    GetExternalPerPodMetricReplicas; KEDA's GenerateMetricInMili and GetMetricTargetMili)."""
    usage = int(metric_value * 1000)  # milli-units, truncated to int64 as KEDA does
    target_milli = int(target * 1000)
    ratio = usage / (target_milli * current)
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(usage / target_milli)


def put_autoscaler(
    cluster: Cluster,
    ns: str,
    name: str,
    spec: dict[str, Any],
    *,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> None:
    """add_autoscaler, with annotations and a status set at creation (kmock stores objects by value)."""
    add_autoscaler(cluster, ns, name, spec)
    obj = copy.deepcopy(cluster.objects[HMA, ns, name].raw)
    obj["metadata"]["annotations"] = annotations or {}
    if status is not None:
        obj["status"] = status
    cluster.objects[HMA, ns, name] = obj


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.objects[HMA, ns, name].get("status") or {})


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), str(err.value.details())


async def test_every_rpc_answers_harmonys_decision_and_the_hpa_sets_exactly_it(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "web", replicas=1)
    spec = autoscaler_spec(model={"uri": str(model_dir)}, mode="Recommend", interval="30s")
    spec["indicators"][0]["capacityPerReplica"] = 0.1  # wants many more replicas than the 1 in place
    add_autoscaler(cluster, "shop", "web", spec)
    async with scaler() as (_, client):
        # Before the operator has decided: a defined error, and status says KEDA is the actuator.
        code, details = await code_of(
            client.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("web"), metricName="harmony-shop-web"))
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "not written a decision" in details
        await wait_for(
            lambda: (status(cluster, "shop", "web").get("keda") or {}).get("answer") == "NoDecision"
        )

        with running_operator(monkeypatch, prometheus.url) as runner:
            await wait_for(lambda: status(cluster, "shop", "web").get("desiredReplicas") is not None)
            desired = status(cluster, "shop", "web")["desiredReplicas"]
            assert desired > 1

            spec_answer = await client.GetMetricSpec(ref("web"))
            (metric,) = spec_answer.metricSpecs
            assert (metric.metricName, metric.targetSize, metric.targetSizeFloat) == (
                "harmony-shop-web",
                1,
                1.0,
            )

            values = await client.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref("web"), metricName=metric.metricName)
            )
            (value,) = values.metricValues
            assert (value.metricName, value.metricValue, value.metricValueFloat) == (
                "harmony-shop-web",
                desired,
                float(desired),
            )
            # KEDA reads metricValueFloat when > 0, targetSizeFloat when > 0; the HPA then sets exactly the
            # decision from any replica count when its tolerance is 0 ...
            for current in range(1, 60):
                assert hpa_replicas(current, value.metricValueFloat, metric.targetSizeFloat) == desired
            # ... and with the default 10% tolerance whenever the change is more than 10% of the replicas
            # in place (docs/operator.md: set behavior.scaleUp/scaleDown.tolerance to 0).
            for current in range(1, 60):
                got = hpa_replicas(current, value.metricValueFloat, metric.targetSizeFloat, tolerance=0.1)
                assert got == (desired if abs(desired / current - 1) > 0.1 else current)

            # The Fisher load is positive: the forecast's p99 peak says the workload needs replicas.
            assert (await client.IsActive(ref("web"))).result is True
            stream = client.StreamIsActive(ref("web"))
            first = await asyncio.wait_for(stream.read(), timeout=10)
            assert first.result is True
            stream.cancel()
            spec_stream = client.StreamMetricSpec(ref("web"))
            assert await asyncio.wait_for(spec_stream.read(), timeout=10) == spec_answer
            spec_stream.cancel()

            # A metric name KEDA did not get from GetMetricSpec is refused, naming the right one.
            code, details = await code_of(
                client.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("web"), metricName="cpu"))
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "harmony-shop-web" in details

            # The resource's status says KEDA actuates, for which ScaledObject, with what.
            await wait_for(
                lambda: (status(cluster, "shop", "web").get("keda") or {}).get("answer") == "Serving"
            )
            st = status(cluster, "shop", "web")
            assert st["actuator"] == "KEDA"
            assert st["keda"]["scaledObject"] == "shop/so"
            assert st["keda"]["metricName"] == "harmony-shop-web"
            assert st["keda"]["replicas"] == desired and st["keda"]["active"] is True
            # The operator's own status survived the scaler's patches, and it never touched the target.
            assert st["desiredReplicas"] == desired and st["reason"]
        assert runner.exception is None, runner.output
    assert cluster.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 1


async def test_missing_paused_fallback_apply_and_bad_triggers_get_defined_answers(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fallback: no model, so the operator decides with its reactive fallback rule.
    add_deployment(cluster, "shop", "fb", replicas=1)
    add_autoscaler(
        cluster,
        "shop",
        "fb",
        autoscaler_spec(
            mode="Recommend", interval="30s", scaleTargetRef={"kind": "Deployment", "name": "fb"}
        ),
    )
    # paused: the pause annotation holds the target's replicas (3) whatever harmony decides.
    add_deployment(cluster, "shop", "held", replicas=3)
    put_autoscaler(
        cluster,
        "shop",
        "held",
        autoscaler_spec(
            model={"uri": str(model_dir)},
            mode="Recommend",
            interval="30s",
            scaleTargetRef={"kind": "Deployment", "name": "held"},
        ),
        annotations={PAUSED_ANNOTATION: "true"},
    )
    # Apply: harmony actuates itself, KEDA must not.
    add_deployment(cluster, "shop", "applied", replicas=1)
    add_autoscaler(
        cluster,
        "shop",
        "applied",
        autoscaler_spec(
            mode="Apply", interval="30s", scaleTargetRef={"kind": "Deployment", "name": "applied"}
        ),
    )
    # Another tenant's resource.
    add_deployment(cluster, "other", "web", replicas=1)
    add_autoscaler(cluster, "other", "web", autoscaler_spec(mode="Recommend", interval="30s"))

    async with scaler() as (_, client):
        with running_operator(monkeypatch, prometheus.url) as runner:
            await wait_for(
                lambda: all(
                    status(cluster, ns, n).get("desiredReplicas") is not None
                    for ns, n in (("shop", "fb"), ("shop", "held"), ("shop", "applied"), ("other", "web"))
                )
            )
            # Fallback: harmony's fallback decision is served, and status says so.
            fb = status(cluster, "shop", "fb")
            assert fb["fallback"] is True
            values = await client.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref("fb"), metricName="harmony-shop-fb")
            )
            assert values.metricValues[0].metricValueFloat == fb["desiredReplicas"]
            # Without a forecast the demand is unknown: active, never a scale to zero.
            assert (await client.IsActive(ref("fb"))).result is True
            await wait_for(
                lambda: (status(cluster, "shop", "fb").get("keda") or {}).get("answer") == "Fallback"
            )

            # Paused: the target's replicas, so the HPA holds them; active.
            values = await client.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref("held"), metricName="harmony-shop-held")
            )
            assert values.metricValues[0].metricValueFloat == 3.0
            assert hpa_replicas(3, values.metricValues[0].metricValueFloat, 1.0) == 3
            assert (await client.IsActive(ref("held"))).result is True
            await wait_for(
                lambda: (status(cluster, "shop", "held").get("keda") or {}).get("answer") == "Paused"
            )

            # Apply mode: refused, and the resource says KEDA is not the actuator.
            code, details = await code_of(
                client.GetMetrics(
                    pb.GetMetricsRequest(scaledObjectRef=ref("applied"), metricName="harmony-shop-applied")
                )
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "mode: Recommend" in details
            code, _ = await code_of(client.IsActive(ref("applied")))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            await wait_for(
                lambda: (
                    (status(cluster, "shop", "applied").get("keda") or {}).get("answer") == "NotRecommendMode"
                )
            )
            assert "actuator" not in status(cluster, "shop", "applied")

            # Missing resource.
            code, details = await code_of(
                client.GetMetrics(
                    pb.GetMetricsRequest(scaledObjectRef=ref("ghost"), metricName="harmony-shop-ghost")
                )
            )
            assert code == grpc.StatusCode.NOT_FOUND and "shop/ghost not found" in details
            code, _ = await code_of(client.IsActive(ref("ghost")))
            assert code == grpc.StatusCode.NOT_FOUND

            # Trigger metadata: missing name, not a name, another namespace.
            code, details = await code_of(client.GetMetricSpec(ref(None)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata.autoscaler is required" in details
            code, details = await code_of(
                client.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("Bad_Name"), metricName="x"))
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "'Bad_Name'" in details
            code, details = await code_of(
                client.GetMetrics(
                    pb.GetMetricsRequest(
                        scaledObjectRef=ref("web", namespace="other"), metricName="harmony-other-web"
                    )
                )
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED and "--allow-cross-namespace" in details
            stream = client.StreamIsActive(ref(None))
            code, _ = await code_of(stream.read())
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert runner.exception is None, runner.output

    # A scaler allowed to cross namespaces serves the other tenant's decision.
    async with scaler(allow_cross_namespace=True) as (_, client):
        values = await client.GetMetrics(
            pb.GetMetricsRequest(
                scaledObjectRef=ref("web", namespace="other"), metricName="harmony-other-web"
            )
        )
        assert values.metricValues[0].metricValueFloat == status(cluster, "other", "web")["desiredReplicas"]


async def test_a_stale_decision_is_not_served(
    cluster: Cluster, prometheus: PrometheusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_deployment(cluster, "shop", "web", replicas=1)
    add_autoscaler(cluster, "shop", "web", autoscaler_spec(mode="Recommend", interval="1s"))
    async with scaler(stale_after_intervals=2.0, stale_min_s=0.0) as (_, client):
        request = pb.GetMetricsRequest(scaledObjectRef=ref("web"), metricName="harmony-shop-web")
        with running_operator(monkeypatch, prometheus.url) as runner:
            await wait_for(lambda: status(cluster, "shop", "web").get("desiredReplicas") is not None)
            await wait_for(lambda: status(cluster, "shop", "web").get("lastDecisionTime") is not None)
            served = (await client.GetMetrics(request)).metricValues[0].metricValueFloat
            assert served == status(cluster, "shop", "web")["desiredReplicas"]
            # The operator's own status patches (every second here) leave the scaler's fields alone.
            await wait_for(
                lambda: (status(cluster, "shop", "web").get("keda") or {}).get("answer") == "Fallback"
            )
            reported = status(cluster, "shop", "web")["keda"]["lastRequestTime"]
            await wait_for(lambda: status(cluster, "shop", "web")["lastDecisionTime"] > reported, timeout=10)
            await asyncio.sleep(1.5)
            st = status(cluster, "shop", "web")
            assert st["actuator"] == "KEDA" and st["keda"]["lastRequestTime"] == reported
        assert runner.exception is None, runner.output
        # The operator is gone: after two intervals (and the status' whole-second clock) nothing fresh.
        decided = dt.datetime.fromisoformat(
            status(cluster, "shop", "web")["lastDecisionTime"].replace("Z", "+00:00")
        )
        await asyncio.sleep(max(0.0, decided.timestamp() + 3.2 - dt.datetime.now(dt.UTC).timestamp()))
        code, details = await code_of(client.GetMetrics(request))
        assert code == grpc.StatusCode.UNAVAILABLE and "is the operator running?" in details
        await wait_for(
            lambda: (status(cluster, "shop", "web").get("keda") or {}).get("answer") == "StaleDecision"
        )


def _certificates(tmp: Path, ca_name: str = "harmony-test-ca") -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, as cert-manager would issue."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def issue(name: str, key: Any, *, ca: bool, san: list[str]) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(s) for s in san]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256())

    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {"ca.crt": tmp / "ca.crt"}
    out["ca.crt"].write_bytes(
        issue(ca_name, ca_key, ca=True, san=[]).public_bytes(serialization.Encoding.PEM)
    )
    for role, san in (("server", ["localhost"]), ("client", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(f"harmony-{role}", key, ca=False, san=san)
        out[f"{role}.crt"], out[f"{role}.key"] = tmp / f"{role}.crt", tmp / f"{role}.key"
        out[f"{role}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


async def test_tls_client_certificates_and_certificate_renewal(tmp_path: Path) -> None:
    pem = _certificates(tmp_path / "v1")
    # The scaler reads the files where a Secret volume mounts them; they are replaced on renewal.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (mounted / name).write_bytes(pem[name].read_bytes())
    settings = ScalerSettings(
        port=0,
        bind_address="127.0.0.1",
        tls_cert=mounted / "server.crt",
        tls_key=mounted / "server.key",
        tls_client_ca=mounted / "ca.crt",
    )
    server = ScalerServer(settings)
    port = await server.start()
    options = [("grpc.ssl_target_name_override", "localhost")]

    async def call(root: bytes, client: dict[str, Path] | None) -> Any:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=client["client.key"].read_bytes() if client else None,
            certificate_chain=client["client.crt"].read_bytes() if client else None,
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
            return await pb_grpc.ExternalScalerStub(channel).GetMetricSpec(ref("web"), timeout=10)

    try:
        # KEDA's caCert + tlsClientCert/tlsClientKey: served.
        answer = await call(pem["ca.crt"].read_bytes(), pem)
        assert answer.metricSpecs[0].metricName == "harmony-shop-web"
        # caCert alone (no client certificate) is refused when the scaler requires one.
        code, _ = await code_of(call(pem["ca.crt"].read_bytes(), None))
        assert code == grpc.StatusCode.UNAVAILABLE
        # A plaintext client gets nothing either.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, _ = await code_of(pb_grpc.ExternalScalerStub(channel).GetMetricSpec(ref("web"), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE

        # Renewal under a new CA, files swapped in place as a Secret volume does: new connections get the
        # new certificate, no restart.
        renewed = _certificates(tmp_path / "v2", ca_name="harmony-test-ca-2")
        for name in ("server.crt", "server.key", "ca.crt"):
            staged = mounted / f".{name}.new"
            staged.write_bytes(renewed[name].read_bytes())
            os.replace(staged, mounted / name)
        answer = await call(renewed["ca.crt"].read_bytes(), renewed)
        assert answer.metricSpecs[0].metricName == "harmony-shop-web"
        code, _ = await code_of(call(pem["ca.crt"].read_bytes(), pem))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(grace_s=0.5)


def test_settings_are_validated_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--tls-cert/--tls-key: give both"):
        ScalerSettings(tls_cert=tmp_path / "a.crt")
    with pytest.raises(ValueError, match=r"^--tls-client-ca: client certificates need TLS"):
        ScalerSettings(tls_client_ca=tmp_path / "ca.crt")
    with pytest.raises(ValueError, match=r"^--tls-cert: no such file: "):
        ScalerSettings(tls_cert=tmp_path / "a.crt", tls_key=tmp_path / "a.key")
    with pytest.raises(ValueError, match=r"^--port: expected 0..65535"):
        ScalerSettings(port=70000)
    with pytest.raises(ValueError, match=r"^--stale-after-intervals: expected a number >= 1"):
        ScalerSettings(stale_after_intervals=0.5)


async def test_the_harmony_scaler_command_serves_and_stops_on_sigterm(cluster: Cluster) -> None:
    """`python -m harmony_operator.keda` (the `harmony-scaler` entry point) as a process, reading a
    resource whose status holds a fresh decision, through the kubeconfig the cluster fixture wrote."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    put_autoscaler(
        cluster,
        "shop",
        "web",
        autoscaler_spec(mode="Recommend"),
        status={"desiredReplicas": 7, "lastDecisionTime": now, "fallback": False},
    )
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harmony_operator.keda",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--log-format",
        "json",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            client = pb_grpc.ExternalScalerStub(channel)
            values = await client.GetMetrics(
                pb.GetMetricsRequest(scaledObjectRef=ref("web"), metricName="harmony-shop-web")
            )
            assert values.metricValues[0].metricValue == 7
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert '"message": "KEDA external scaler listening on 127.0.0.1:' in log, log
    await wait_for(lambda: (status(cluster, "shop", "web").get("keda") or {}).get("replicas") == 7)

    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harmony_operator.keda",
        "--tls-key",
        "/nonexistent.key",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert await bad.wait() == 2
    assert bad.stderr is not None
    assert "--tls-cert/--tls-key: give both" in (await bad.stderr.read()).decode()

    with socket.socket() as taken:  # a port already in use: a one-line error, not a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "harmony_operator.keda",
            "--port",
            str(taken.getsockname()[1]),
            "--bind-address",
            "127.0.0.1",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert await busy.wait() == 1
    assert busy.stderr is not None
    err = (await busy.stderr.read()).decode()
    assert "harmony-scaler: cannot listen on 127.0.0.1:" in err and "Traceback" not in err, err


def test_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    assert sorted(fresh) == sorted(GENERATED)
    for name, content in fresh.items():
        assert (PACKAGE_DIR / name).read_bytes() == content, (
            f"{name} is stale: run `python -m harmony_operator.keda.stubs` and commit the result"
        )
    # The wire contract KEDA calls: service and method paths.
    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert sorted(m.name for m in service.methods) == [
        "GetMetricSpec",
        "GetMetrics",
        "IsActive",
        "StreamIsActive",
        "StreamMetricSpec",
    ]
