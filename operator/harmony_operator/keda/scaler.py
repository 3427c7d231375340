"""`harmony-scaler`: KEDA's External Scaler gRPC service, answering with harmony's decisions.

KEDA (and the HPA it creates) stays the actuator; harmony's operator keeps deciding. A ScaledObject trigger

    - type: external            # or external-push
      metadata:
        scalerAddress: harmony-operator-keda.harmony-system.svc:6000
        autoscaler: llm-server  # a HarmonyAutoscaler in mode Recommend
        namespace: inference    # optional: the ScaledObject's namespace

makes KEDA call this service. Every answer is read from the HarmonyAutoscaler the reconcile loop already
keeps: its `status.desiredReplicas`, `lastDecisionTime`, `fallback` and `forecast`. The scaler never decides
itself, so any number of scaler replicas (leader or standby operator pods) give the same answer.

The metric. `GetMetricSpec` asks for one external metric with target 1 and `GetMetrics` returns harmony's
desired replicas as its value. With KEDA's default metric type `AverageValue` the HPA computes
`ceil(value / target) = ceil(desired / 1) = desired` whatever the current replica count, unlike `Value`
(`ceil(value / target * readyPods)`) which would multiply the decision by the pods. The HPA's tolerance
(default 10%) skips a change when `|desired / current - 1| <= tolerance`; docs/operator.md says how to set it
to 0 (`behavior.scaleUp/scaleDown.tolerance`, Kubernetes 1.33+) so that every decision is applied exactly.

Defined answers (never an exception reaching KEDA as a crash):

    answer           when                                         RPCs
    Serving          a fresh decision                             metric = desiredReplicas
    Fallback         a fresh decision of the fallback rule        metric = desiredReplicas (status.fallback)
    Paused           annotation harmony.dev/paused: "true"        metric = the target's replicas (hold),
                                                                  IsActive true
    NotFound         no such HarmonyAutoscaler                    NOT_FOUND
    InvalidTrigger   trigger metadata wrong                       INVALID_ARGUMENT / PERMISSION_DENIED
    NotRecommendMode mode Apply: harmony scales the target itself FAILED_PRECONDITION
    InvalidSpec      the resource's spec is invalid               FAILED_PRECONDITION
    NoDecision       no decision in status yet                    UNAVAILABLE
    StaleDecision    decision older than N intervals              UNAVAILABLE
    KubernetesError  the API server failed                        UNAVAILABLE

On an error status KEDA keeps the replicas in place, or applies the ScaledObject's own `fallback` replicas
after its `failureThreshold`: both are KEDA's defined behaviour for a scaler that cannot answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from harmony_operator import GROUP, PLURAL, VERSION
from harmony_operator.keda import externalscaler_pb2 as pb
from harmony_operator.keda import externalscaler_pb2_grpc as pb_grpc
from harmony_operator.keda.credentials import server_credentials
from harmony_operator.kube import ApiError, KubeClient, NotFound
from harmony_operator.outcome import iso_time
from harmony_operator.spec import AutoscalerSpec, SpecError, parse_spec

__all__ = [
    "META_AUTOSCALER",
    "META_NAMESPACE",
    "PAUSED_ANNOTATION",
    "Answer",
    "ConfigError",
    "HarmonyScaler",
    "ScalerServer",
    "ScalerSettings",
    "metric_name",
]

log = logging.getLogger("harmony_operator.keda")

# The operator's pause annotation (KEDA's `autoscaling.keda.sh/paused` in harmony's group).
PAUSED_ANNOTATION = f"{GROUP}/paused"
# Trigger metadata keys (the ScaledObject's `triggers[].metadata`).
META_AUTOSCALER = "autoscaler"
META_NAMESPACE = "namespace"
_MAX_ENTRIES = 4096  # per-name memory (cache, log de-duplication) is bounded
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ConfigError(ValueError):
    """A setting of the scaler is wrong; `field` names the flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ScalerSettings:
    port: int = 6000
    bind_address: str = "0.0.0.0"
    # TLS: the server's certificate chain and key (PEM); with a client CA, clients must present a
    # certificate it signed (KEDA's tlsClientCert / tlsClientKey).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # A ScaledObject may name a HarmonyAutoscaler in another namespace only when this is on: otherwise a
    # tenant could read another tenant's decisions.
    allow_cross_namespace: bool = False
    # A decision older than max(this many of the resource's intervals, stale_min_s) is not served.
    stale_after_intervals: float = 3.0
    stale_min_s: float = 60.0
    # KEDA calls GetMetrics and IsActive back to back: one read of the resource answers both.
    cache_ttl_s: float = 2.0
    # How often StreamIsActive (external-push) re-reads the resource.
    stream_period_s: float = 5.0
    # The resource's status.keda is rewritten when the answer changes, and at least this often.
    status_period_s: float = 60.0
    write_status: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port", f"expected 0..65535 (0 = any free port), got {self.port}")
        if not self.bind_address:
            raise ConfigError("--bind-address", "expected an address, e.g. 0.0.0.0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert/--tls-key", "give both the certificate and its key, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-client-ca", "client certificates need TLS: give --tls-cert and --tls-key"
            )
        for name, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(name, f"no such file: {path}")
        for name, value, low in (
            ("--stale-after-intervals", self.stale_after_intervals, 1.0),
            ("--stale-min", self.stale_min_s, 0.0),
            ("--cache-ttl", self.cache_ttl_s, 0.0),
            ("--stream-period", self.stream_period_s, 0.05),
            ("--status-period", self.status_period_s, 0.0),
        ):
            if not math.isfinite(value) or value < low:
                raise ConfigError(name, f"expected a number >= {low:g}, got {value!r}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def metric_name(namespace: str, name: str) -> str:
    """The external metric's name (KEDA prefixes it with `s<trigger index>-`)."""
    return f"harmony-{namespace}-{name}"


@dataclass(frozen=True)
class Answer:
    """What the scaler tells KEDA about one HarmonyAutoscaler now."""

    state: str
    message: str
    replicas: int | None = None  # the metric's value; None: an error status instead
    active: bool | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    actuator: str | None = None  # status.actuator to write (None removes it)

    @property
    def ok(self) -> bool:
        return bool(self.code == grpc.StatusCode.OK)


class TriggerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    """The HarmonyAutoscaler a trigger names, and the ScaledObject it names it from."""

    namespace: str
    name: str
    scaled_object: str  # namespace/name

    @property
    def metric(self) -> str:
        return metric_name(self.namespace, self.name)


def parse_trigger(ref: Any, allow_cross_namespace: bool) -> Target:
    """The trigger's metadata, validated: `autoscaler` (required) and `namespace` (optional)."""
    so_ns, so_name = str(ref.namespace), str(ref.name)
    meta: Mapping[str, str] = ref.scalerMetadata
    name = meta.get(META_AUTOSCALER, "").strip()
    if not name:
        raise TriggerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"trigger metadata.{META_AUTOSCALER} is required: "
            "the name of a HarmonyAutoscaler in mode Recommend",
        )
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        raise TriggerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"trigger metadata.{META_AUTOSCALER}: {name!r} is not a Kubernetes object name",
        )
    namespace = meta.get(META_NAMESPACE, "").strip() or so_ns
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise TriggerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"trigger metadata.{META_NAMESPACE}: {namespace!r} is not a namespace name",
        )
    if namespace != so_ns and not allow_cross_namespace:
        raise TriggerError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"trigger metadata.{META_NAMESPACE}: ScaledObject {so_ns}/{so_name} may not read "
            f"HarmonyAutoscaler {namespace}/{name} in another namespace "
            "(the scaler runs without --allow-cross-namespace)",
        )
    return Target(namespace, name, f"{so_ns}/{so_name}")


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _is_paused(obj: Mapping[str, Any]) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).strip().lower() == "true"


def _active(spec: AutoscalerSpec, status: Mapping[str, Any]) -> bool:
    """Does the workload need any replica? Yes when the forecast's p99 peak of a demand indicator over the
    decision window is above zero; yes when there is no forecast (the fallback rule: demand unknown)."""
    forecasts = {
        f.get("name"): f for f in status.get("forecast") or [] if isinstance(f, Mapping) and f.get("name")
    }
    seen = [forecasts[n] for n in spec.capacities if n in forecasts]
    if not seen:
        return True
    return any(float(f.get("p99") or 0.0) > 0.0 for f in seen)


def evaluate(
    obj: Mapping[str, Any], now: float, settings: ScalerSettings
) -> tuple[Answer, AutoscalerSpec | None]:
    """The answer for a HarmonyAutoscaler object, except a paused one's replicas (read from /scale)."""
    try:
        spec = parse_spec(obj.get("spec") or {})
    except SpecError as exc:
        return Answer("InvalidSpec", str(exc), code=grpc.StatusCode.FAILED_PRECONDITION), None
    if spec.apply:
        return (
            Answer(
                "NotRecommendMode",
                "spec.mode is Apply: harmony scales the target itself; "
                "set mode: Recommend to let KEDA actuate",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            ),
            spec,
        )
    if _is_paused(obj):
        return Answer("Paused", "paused: holding the target's replicas", active=True, actuator="KEDA"), spec
    status: Mapping[str, Any] = obj.get("status") or {}
    desired = status.get("desiredReplicas")
    decided_at = _parse_time(status.get("lastDecisionTime"))
    if not isinstance(desired, int) or isinstance(desired, bool) or decided_at is None:
        return (
            Answer(
                "NoDecision",
                "the operator has not written a decision to status yet",
                code=grpc.StatusCode.UNAVAILABLE,
                actuator="KEDA",
            ),
            spec,
        )
    age = now - decided_at
    limit = max(settings.stale_after_intervals * spec.interval_s, settings.stale_min_s)
    if age > limit:
        return (
            Answer(
                "StaleDecision",
                f"the last decision is {age:.0f}s old (limit {limit:.0f}s): is the operator running?",
                code=grpc.StatusCode.UNAVAILABLE,
                actuator="KEDA",
            ),
            spec,
        )
    # A decision made under an older spec still lies in harmony's bounds once clipped into the current ones.
    replicas = int(min(max(desired, spec.min_replicas), spec.max_replicas))
    active = _active(spec, status)
    if status.get("fallback"):
        reason = str(status.get("reason") or "the fallback rule")
        return Answer("Fallback", f"{replicas} replicas: {reason}", replicas, active, actuator="KEDA"), spec
    return Answer(
        "Serving", f"{replicas} replicas: {status.get('reason', '')}", replicas, active, actuator="KEDA"
    ), spec


@dataclass
class _Reported:
    key: tuple[Any, ...]
    at: float


@dataclass
class HarmonyScaler:
    """The answers (resource reads, pause handling, status reports), independent of gRPC."""

    kube: KubeClient
    settings: ScalerSettings
    clock: Callable[[], float] = time.time
    _cache: dict[tuple[str, str], tuple[float, Any]] = field(default_factory=dict)
    _reported: dict[tuple[str, str], _Reported] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _read(self, namespace: str, name: str) -> Mapping[str, Any]:
        key = (namespace, name)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.settings.cache_ttl_s:
            obj = hit[1]
        else:
            try:
                obj = await self.kube.request(
                    "GET",
                    f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
                    what=f"HarmonyAutoscaler {namespace}/{name}",
                )
            except ApiError as exc:
                obj = exc
            now = time.monotonic()
            if len(self._cache) >= _MAX_ENTRIES:  # names come from clients: keep the cache bounded
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.settings.cache_ttl_s}
            self._cache[key] = (now, obj)
        if isinstance(obj, ApiError):
            raise obj
        return dict(obj or {})

    async def answer(self, target: Target) -> Answer:
        try:
            obj = await self._read(target.namespace, target.name)
        except NotFound:
            return Answer(
                "NotFound",
                f"HarmonyAutoscaler {target.namespace}/{target.name} not found",
                code=grpc.StatusCode.NOT_FOUND,
            )
        except ApiError as exc:
            return Answer(
                "KubernetesError", f"reading the HarmonyAutoscaler: {exc}", code=grpc.StatusCode.UNAVAILABLE
            )
        answer, spec = evaluate(obj, self.clock(), self.settings)
        if answer.state == "Paused" and spec is not None:
            try:
                # A kind beside Deployment and StatefulSet is found through API discovery (cached).
                plural = (
                    spec.target_plural
                    or (await self.kube.scale_target(spec.target_api_version, spec.target_kind)).plural
                )
                scale = await self.kube.get_scale(
                    target.namespace, plural, spec.target_name, api_version=spec.target_api_version
                )
            except ApiError as exc:
                code = grpc.StatusCode.NOT_FOUND if isinstance(exc, NotFound) else grpc.StatusCode.UNAVAILABLE
                answer = Answer(
                    "Paused",
                    f"paused, and the target's replicas are unknown: {exc}",
                    code=code,
                    actuator="KEDA",
                )
            else:
                answer = Answer(
                    "Paused",
                    f"paused: holding {spec.target_kind} {spec.target_name} "
                    f"at {scale.spec_replicas} replicas",
                    scale.spec_replicas,
                    True,
                    actuator="KEDA",
                )
        return answer

    def report(self, target: Target, answer: Answer) -> None:
        """Write status.actuator and status.keda (in the background; throttled; failures only logged)."""
        if not self.settings.write_status or answer.state in ("NotFound", "KubernetesError"):
            return
        key = (target.namespace, target.name)
        now = self.clock()
        what = (target.scaled_object, answer.state, answer.replicas, answer.active, answer.actuator)
        last = self._reported.get(key)
        if last is not None and last.key == what and now - last.at < self.settings.status_period_s:
            return
        self._reported[key] = _Reported(what, now)
        status = {
            "actuator": answer.actuator,
            "keda": {
                "scaledObject": target.scaled_object,
                "metricName": target.metric,
                "answer": answer.state,
                "replicas": answer.replicas,
                "active": answer.active,
                "message": answer.message[:1000],
                "lastRequestTime": iso_time(now),
            },
        }
        task = asyncio.create_task(self._write(target, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, target: Target, status: dict[str, Any]) -> None:
        try:
            await self.kube.patch_status(GROUP, VERSION, PLURAL, target.namespace, target.name, status)
        except ApiError as exc:
            self._reported.pop((target.namespace, target.name), None)  # try again on the next request
            log.warning("could not write status.keda of %s/%s: %s", target.namespace, target.name, exc)

    async def drain(self) -> None:
        """Wait for the status writes in flight."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class ExternalScalerService:
    """The gRPC servicer (registered with the generated `add_ExternalScalerServicer_to_server`)."""

    def __init__(self, scaler: HarmonyScaler) -> None:
        self.scaler = scaler
        self._last_logged: dict[str, str] = {}

    def _log(self, target: Target | None, answer: Answer) -> None:
        key = target.scaled_object if target else "?"
        line = f"{answer.state}: {answer.message}"
        if self._last_logged.get(key) != line:
            if len(self._last_logged) >= _MAX_ENTRIES:
                self._last_logged.clear()
            self._last_logged[key] = line
            level = logging.INFO if answer.ok else logging.WARNING
            log.log(level, "ScaledObject %s -> %s", key, line)

    async def _answer(self, ref: Any) -> tuple[Target | None, Answer]:
        try:
            target = parse_trigger(ref, self.scaler.settings.allow_cross_namespace)
        except TriggerError as exc:
            return None, Answer("InvalidTrigger", str(exc), code=exc.code)
        try:
            answer = await self.scaler.answer(target)
        except Exception as exc:  # a defined answer even for a bug: KEDA sees INTERNAL, never a dropped call
            log.exception("answering %s failed", target.scaled_object)
            answer = Answer("Error", f"{type(exc).__name__}: {exc}", code=grpc.StatusCode.INTERNAL)
        self._log(target, answer)
        return target, answer

    async def IsActive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        target, answer = await self._answer(request)
        if target is not None:
            self.scaler.report(target, answer)
        if not answer.ok:
            await context.abort(answer.code, answer.message)
        return pb.IsActiveResponse(result=bool(answer.active))

    async def StreamIsActive(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # external-push: send the activity now and on every change. While there is no answer nothing is sent
        # (KEDA's polling still sees the error), except a bad trigger, which ends the stream with its status.
        last: bool | None = None
        while True:
            target, answer = await self._answer(request)
            if target is None:
                await context.abort(answer.code, answer.message)
            if answer.ok and answer.active is not None and answer.active != last:
                last = answer.active
                yield pb.IsActiveResponse(result=last)
            await asyncio.sleep(self.scaler.settings.stream_period_s)

    async def GetMetricSpec(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # Answered from the trigger alone, so KEDA can build its HPA before the resource has a decision.
        try:
            target = parse_trigger(request, self.scaler.settings.allow_cross_namespace)
        except TriggerError as exc:
            await context.abort(exc.code, str(exc))
        return _metric_spec(target)

    async def StreamMetricSpec(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # The target never changes (1 replica per unit): send it once and hold the stream open.
        try:
            target = parse_trigger(request, self.scaler.settings.allow_cross_namespace)
        except TriggerError as exc:
            await context.abort(exc.code, str(exc))
        yield _metric_spec(target)
        await asyncio.Event().wait()

    async def GetMetrics(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        target, answer = await self._answer(request.scaledObjectRef)
        if target is not None and request.metricName != target.metric:
            answer = Answer(
                "InvalidTrigger",
                f"unknown metric {request.metricName!r}: this trigger's metric is {target.metric!r}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        elif target is not None:
            self.scaler.report(target, answer)
        if not answer.ok or answer.replicas is None or target is None:
            await context.abort(answer.code, answer.message)
        assert target is not None and answer.replicas is not None
        return pb.GetMetricsResponse(
            metricValues=[
                pb.MetricValue(
                    metricName=target.metric,
                    metricValue=answer.replicas,
                    metricValueFloat=float(answer.replicas),
                )
            ]
        )


def _metric_spec(target: Target) -> Any:
    return pb.GetMetricSpecResponse(
        metricSpecs=[pb.MetricSpec(metricName=target.metric, targetSize=1, targetSizeFloat=1.0)]
    )


class ScalerServer:
    """The gRPC server on `settings.bind_address:settings.port`; `start()` returns the bound port."""

    def __init__(self, settings: ScalerSettings, kube: KubeClient | None = None) -> None:
        self.settings = settings
        self._own_kube = kube is None
        self.kube = kube or KubeClient()
        self.scaler = HarmonyScaler(self.kube, settings)
        self.service = ExternalScalerService(self.scaler)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        server = grpc.aio.server()
        pb_grpc.add_ExternalScalerServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        address = f"{self.settings.bind_address}:{self.settings.port}"
        st = self.settings
        creds = server_credentials(st.tls_cert, st.tls_key, st.tls_client_ca)
        try:
            port: int = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's "Failed to bind": address in use or not local
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server, self.port = server, port
        log.info(
            "KEDA external scaler listening on %s:%d (%s)",
            self.settings.bind_address,
            port,
            "TLS" if creds else "plaintext",
        )
        return port

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        await self.scaler.drain()
        if self._own_kube:
            await self.kube.close()
