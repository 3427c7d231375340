"""kopf wiring: one daemon per HarmonyAutoscaler runs `Runtime.step` (a reconcile and its writes).

Settings come from `configure(OperatorOptions)` (the CLI) or, when started as `kopf run -m
harmony_operator.handlers`, from the environment (`OperatorOptions.from_env`). kopf runs standalone (no
peering objects); who acts on a resource is decided by the Leases in `harmony_operator.sharding` (one
Lease per shard, one shard unless `shards` says otherwise). A daemon whose resource this instance does not
own waits without touching the cluster, and every write is fenced by ownership of the resource's shard.
Handler results are never returned, so kopf writes nothing into `.status` beside what the reconciler writes.

Level-triggered: the daemon sleeps until its next interval *or* until a watch event shows a new generation
(a spec edit) or a changed pause annotation (`on_event`), so an edit acts within a moment, not after the
old interval. A step never raises: an unexpected exception ends in `Ready=False/InternalError` and a Warning
event, the decision memory in status is kept, and the loop retries with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from harmony_operator import GROUP, PLURAL, VERSION
from harmony_operator.batching import BatchSampler
from harmony_operator.kube import (
    ApiError,
    KubeClient,
    NotFound,
    NotLeader,
    connection_info,
    load_credentials,
    retrying,
)
from harmony_operator.leader import LeaderElector, default_identity
from harmony_operator.metrics import OperatorMetrics
from harmony_operator.models import ModelCache, ModelPolicy
from harmony_operator.prometheus import PrometheusAuth, PrometheusClient
from harmony_operator.reconcile import Event, Outcome, Reconciler, ReconcilerSettings
from harmony_operator.redact import redact
from harmony_operator.sharding import ShardLeases

__all__ = ["PAUSED_ANNOTATION", "OperatorOptions", "Runtime", "configure", "is_paused"]

log = logging.getLogger(__name__)

PAUSED_ANNOTATION = f"{GROUP}/paused"

# A daemon whose resource this instance does not own sleeps until what it owns changes (a lease round
# signals it); this bounds the sleep should a signal ever be missed. Polling every resource each second
# instead cost 0.7 cores for 5,000 idle daemons (benchmarks.operator_watch).
OWNERSHIP_RECHECK_S = 30.0

# The uid of the resource the running step acts on: the write fence asks whether this instance owns it.
_ACTING_UID: contextvars.ContextVar[str] = contextvars.ContextVar("harmony_acting_uid", default="")

# Every status key the reconciler may write: a patch sets the ones it did not write this time to null, so
# the status never shows a stale probability or forecast next to a fresh fallback decision.
STATUS_KEYS = (
    "observedGeneration",
    "currentReplicas",
    "desiredReplicas",
    "lastScaleTime",
    "lastDecisionTime",
    "bindingIndicator",
    "violationProbability",
    "expectedCost",
    "reason",
    "fallback",
    "forecast",
    "calibration",
    "model",
    "state",
    "health",
    "conditions",
)


@dataclass
class OperatorOptions:
    prometheus_url: str
    metrics_port: int | None = 9090
    lease_name: str = "harmony-operator"
    lease_namespace: str | None = None
    leader_election: bool = True
    num_samples: int = 100
    model_cache_dir: str | None = None
    # Newest sample older than max(3 model steps, this) = stale; raise it for slowly scraped metrics.
    min_staleness_s: float = 120.0
    # client-go's defaults: a lease of 15 s, given up 10 s after the last renewal, renewed every 2 s.
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    identity: str | None = None
    # Sharding (harmony_operator.sharding): how many shards there are, and this instance's own.
    shards: int = 1
    shard: int = 0
    # Tenancy and bounds on models (ModelPolicy): where model.uri may point, how big and slow a load may be.
    model_uri_prefixes: tuple[str, ...] = ("models:/", "/models/")
    model_max_bytes: int = 512 * 1024**2
    model_load_timeout_s: float = 120.0
    inference_timeout_s: float = 30.0
    bind_address: str = "0.0.0.0"  # of /metrics (and, through the CLI, /healthz)
    # Credentials and CA for --prometheus-url, from mounted Secret files; servers resources may name.
    prometheus_auth: PrometheusAuth | None = None
    prometheus_url_prefixes: tuple[str, ...] = ()
    query_namespace_label: str | None = None  # the per-namespace query guard (harmony_operator.queryguard)

    @classmethod
    def from_env(cls) -> OperatorOptions:
        url = os.environ.get("HARMONY_PROMETHEUS_URL", "")
        if not url:
            raise kopf.PermanentError("HARMONY_PROMETHEUS_URL (or --prometheus-url) is required")
        port = os.environ.get("HARMONY_METRICS_PORT", "9090")
        return cls(
            prometheus_url=url,
            metrics_port=int(port) if port and port != "0" else None,
            lease_name=os.environ.get("HARMONY_LEASE_NAME", "harmony-operator"),
            lease_namespace=os.environ.get("HARMONY_LEASE_NAMESPACE") or os.environ.get("POD_NAMESPACE"),
            leader_election=os.environ.get("HARMONY_LEADER_ELECTION", "true").lower() not in ("0", "false"),
            num_samples=int(os.environ.get("HARMONY_NUM_SAMPLES", "100")),
            model_cache_dir=os.environ.get("HARMONY_MODEL_CACHE_DIR") or None,
            min_staleness_s=float(os.environ.get("HARMONY_MIN_STALENESS_S", "120")),
            lease_duration_s=float(os.environ.get("HARMONY_LEASE_DURATION_S", "15")),
            renew_deadline_s=float(os.environ.get("HARMONY_RENEW_DEADLINE_S", "10")),
            retry_period_s=float(os.environ.get("HARMONY_RETRY_PERIOD_S", "2")),
            model_uri_prefixes=tuple(
                p for p in os.environ.get("HARMONY_MODEL_URI_PREFIXES", "models:/,/models/").split(",") if p
            ),
            model_max_bytes=int(os.environ.get("HARMONY_MODEL_MAX_BYTES", str(512 * 1024**2))),
            model_load_timeout_s=float(os.environ.get("HARMONY_MODEL_LOAD_TIMEOUT_S", "120")),
            inference_timeout_s=float(os.environ.get("HARMONY_INFERENCE_TIMEOUT_S", "30")),
            bind_address=os.environ.get("HARMONY_BIND_ADDRESS", "0.0.0.0"),
            prometheus_auth=PrometheusAuth(
                bearer_token_file=os.environ.get("HARMONY_PROMETHEUS_BEARER_TOKEN_FILE") or None,
                username_file=os.environ.get("HARMONY_PROMETHEUS_USERNAME_FILE") or None,
                password_file=os.environ.get("HARMONY_PROMETHEUS_PASSWORD_FILE") or None,
                ca_file=os.environ.get("HARMONY_PROMETHEUS_CA_FILE") or None,
            ),
            prometheus_url_prefixes=tuple(
                p for p in os.environ.get("HARMONY_PROMETHEUS_URL_PREFIXES", "").split(",") if p
            ),
            query_namespace_label=os.environ.get("HARMONY_QUERY_NAMESPACE_LABEL") or None,
            shards=int(os.environ.get("HARMONY_SHARDS", "1")),
            shard=int(os.environ.get("HARMONY_SHARD", "0")),
        )


_OPTIONS: OperatorOptions | None = None


def configure(options: OperatorOptions) -> None:
    global _OPTIONS
    _OPTIONS = options


class Runtime:
    """Everything the handlers share: clients, caches, metrics, the reconciler and the leader lease."""

    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        # MLflow's download progress bars write to stderr and break one-JSON-object-per-line logs.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.metrics = OperatorMetrics()
        self.identity = options.identity or default_identity()
        # Every status and /scale write is fenced: asked of the lease right before it goes out.
        self.kube = KubeClient(
            user_agent=f"harmony-operator/{self.identity}", guard=lambda: self.owns(_ACTING_UID.get())
        )
        auth = options.prometheus_auth
        tls = auth.ssl_context() if auth is not None else None
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls) if tls else None)
        self.prometheus = PrometheusClient(options.prometheus_url, self.http, auth=auth)
        self.models = ModelCache(
            Path(options.model_cache_dir) if options.model_cache_dir else None,
            policy=ModelPolicy(
                tuple(options.model_uri_prefixes), options.model_max_bytes, options.model_load_timeout_s
            ),
        )
        self.sampler = BatchSampler(options.num_samples)
        self.reconciler = Reconciler(
            self.kube,
            self.prometheus,
            self.models,
            self.sampler,
            self.metrics,
            ReconcilerSettings(
                stale_min_s=options.min_staleness_s,
                inference_timeout_s=options.inference_timeout_s,
                prometheus_url_prefixes=tuple(options.prometheus_url_prefixes),
                query_namespace_label=options.query_namespace_label,
            ),
        )
        self.stop = asyncio.Event()
        self._wakes: dict[tuple[str, str], asyncio.Event] = {}
        self._acted: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._ownership = asyncio.Event()
        self.leases: ShardLeases | None = None
        self.leases_task: asyncio.Task[None] | None = None
        if options.leader_election:
            if not options.lease_namespace:
                raise kopf.PermanentError("leader election needs --lease-namespace or POD_NAMESPACE")
            self.leases = ShardLeases(
                self.kube,
                options.lease_namespace,
                options.lease_name,
                self.identity,
                shards=options.shards,
                home=options.shard,
                lease_s=options.lease_duration_s,
                renew_deadline_s=options.renew_deadline_s,
                retry_s=options.retry_period_s,
                on_change=self._leases_changed,
            )
        elif options.shards != 1:
            raise kopf.PermanentError("shards need leader election: each shard is a Lease")
        else:
            self.metrics.leader.set(1)
            self.metrics.shards_held.set(1)

    def _leases_changed(self, shards: int) -> None:
        """After a lease round changed what this instance acts on: metrics, and wake the waiting daemons."""
        self.metrics.leader.set(1 if shards else 0)
        self.metrics.shards_held.set(shards)
        woken, self._ownership = self._ownership, asyncio.Event()
        woken.set()  # every daemon waiting for its resource to become this instance's looks again

    def ownership_changed(self) -> asyncio.Event:
        """Set at the next change of what this instance owns; take it *before* asking `owns`."""
        return self._ownership

    async def wait_for_ownership(
        self, changed: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float
    ) -> None:
        """Until `changed` is set, the daemon is stopped, or `seconds` pass (a safety net)."""
        waiters = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    @property
    def elector(self) -> LeaderElector | None:
        """The Lease of this instance's home shard (the only one without sharding)."""
        return self.leases.home_elector if self.leases is not None else None

    @property
    def is_leader(self) -> bool:
        """Whether this instance acts for any shard now."""
        return self.leases is None or bool(self.leases.acting)

    def owns(self, uid: str) -> bool:
        """Whether this instance may act on, and write for, the resource with this uid now."""
        return self.leases is None or self.leases.owns(uid)

    async def start(self) -> None:
        if self.options.metrics_port:
            self.metrics.serve(self.options.metrics_port, self.options.bind_address)
        if self.leases is not None:
            await self.leases.round()
            self.leases_task = asyncio.create_task(self.leases.run(self.stop))

    # level-triggered wake-ups ---------------------------------------------------------------------------
    def _wake(self, namespace: str, name: str) -> asyncio.Event:
        return self._wakes.setdefault((namespace, name), asyncio.Event())

    def changed(self, namespace: str, name: str, version: tuple[Any, ...]) -> bool:
        """Whether a watch event shows another generation or pause state than the daemon last acted on."""
        acted = self._acted.get((namespace, name))
        return acted is not None and acted != version

    def notice(self, namespace: str, name: str, version: tuple[Any, ...]) -> None:
        """A watch event: wake the resource's daemon if it acted on another generation or pause state."""
        if self.changed(namespace, name, version):
            self._wake(namespace, name).set()

    async def sleep(self, namespace: str, name: str, stopped: kopf.DaemonStopped, seconds: float) -> None:
        """Until `seconds` pass, the daemon is stopped, or `notice` sees a change, whichever comes first."""
        waiters = [
            asyncio.ensure_future(self._wake(namespace, name).wait()),
            asyncio.ensure_future(stopped.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    def forget(self, namespace: str, name: str) -> None:
        self._wakes.pop((namespace, name), None)
        self._acted.pop((namespace, name), None)
        self.reconciler.forget(namespace, name)

    # one reconcile and its writes ------------------------------------------------------------------------
    async def step(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        status: dict[str, Any],
        generation: int | None,
        *,
        uid: str = "",
        version: tuple[Any, ...] = (),
        paused: bool = False,
        post_event: Callable[[Event], None] | None = None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> float:
        """Reconcile, then write the status and post the events (each write fenced); seconds until the next.

        Never raises but for cancellation: a failure of any kind becomes a condition and an event.
        Every write is fenced by this instance's ownership of `uid` (its shard's Lease).
        """
        token = _ACTING_UID.set(uid)
        try:
            return await self._step(
                namespace, name, spec, status, generation, version, paused, post_event, stopped
            )
        finally:
            _ACTING_UID.reset(token)

    async def _step(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        status: dict[str, Any],
        generation: int | None,
        version: tuple[Any, ...],
        paused: bool,
        post_event: Callable[[Event], None] | None,
        stopped: Callable[[], bool],
    ) -> float:
        self._acted[(namespace, name)] = version
        self._wake(namespace, name).clear()
        try:
            outcome = await self.reconciler.reconcile(
                namespace, name, spec, status, generation, paused=paused
            )
        except NotLeader as exc:
            log.info("%s/%s: %s", namespace, name, exc)
            return self.options.retry_period_s
        except Exception as exc:  # the loop must survive anything; the failure is reported, not lost
            log.exception("reconciling %s/%s failed", namespace, name)
            outcome = self.reconciler.failure(namespace, name, spec, status, generation, exc)
        if stopped():
            return 0.0  # deleted (or shutting down) while deciding: write nothing more
        await self.write(namespace, name, outcome, post_event)
        return outcome.next_in_s

    async def write(
        self, namespace: str, name: str, outcome: Outcome, post_event: Callable[[Event], None] | None
    ) -> None:
        patch: dict[str, Any] = dict.fromkeys(STATUS_KEYS)
        patch.update(outcome.status)
        # No credential in anything written: a URL with user:password@, a token in a query, a header.
        for cond in patch.get("conditions") or []:
            cond["message"] = redact(str(cond.get("message", "")))
        if isinstance(patch.get("reason"), str):
            patch["reason"] = redact(patch["reason"])
        try:
            await retrying(
                functools.partial(self.kube.patch_status, GROUP, VERSION, PLURAL, namespace, name, patch)
            )
        except NotLeader as exc:
            log.info("%s/%s: %s", namespace, name, exc)
            return
        except NotFound:
            return
        except ApiError as exc:
            log.warning("%s/%s: could not write the status: %s", namespace, name, exc)
        else:
            conditions = outcome.status.get("conditions") or [{}]
            log.info("%s/%s: %s", namespace, name, redact(str(outcome.status.get("reason", conditions[0]))))
        if post_event is not None:
            for event in outcome.events:
                if self.owns(_ACTING_UID.get()):  # events are writes too
                    post_event(Event(event.type, event.reason, redact(event.message)))

    async def close(self) -> None:
        self.stop.set()
        if self.leases_task is not None:
            await self.leases_task
        self.sampler.close()
        await self.http.close()
        await self.kube.close()


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    # The same credentials loader as the operator's own calls (kubernetes_asyncio): every kubeconfig form,
    # exec plugins and the in-cluster service account; kopf asks again when they expire or get a 401.
    return await connection_info(await load_credentials())


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    # The CRD is known at start-up; watching CRDs and namespaces for changes would need RBAC the operator
    # has no other use for (its ClusterRole grants only what docs/operator.md lists).
    settings.scanning.disabled = True
    settings.posting.loggers = False  # only the events we post on purpose
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    options = _OPTIONS or OperatorOptions.from_env()
    runtime = Runtime(options)
    await runtime.start()
    memo["runtime"] = runtime


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


@kopf.on.probe(id="leader")
def probe_leader(memo: kopf.Memo, **_: Any) -> bool:
    runtime: Runtime | None = memo.get("runtime")
    return bool(runtime is not None and runtime.is_leader)


def is_paused(meta: kopf.Meta | dict[str, Any]) -> bool:
    """KEDA's convention: the annotation `harmony.dev/paused: "true"` stops scaling, not deciding."""
    value = (meta.get("annotations") or {}).get(PAUSED_ANNOTATION)
    return str(value).strip().lower() == "true"


def _version(meta: kopf.Meta) -> tuple[Any, ...]:
    """What a daemon acts on beside the spec's content: the generation and the pause annotation."""
    return (meta.get("generation"), (meta.get("annotations") or {}).get(PAUSED_ANNOTATION))


def _wakes_daemon(namespace: str, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    # A filter, so that the handler (and kopf's log line for it) runs only for the events that matter: every
    # status write is a watch event too.
    runtime: Runtime | None = memo.get("runtime")
    return runtime is not None and runtime.changed(namespace, name, _version(meta))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_wakes_daemon)  # type: ignore[arg-type]
def on_event(namespace: str, name: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    # Watch events only wake daemons; they write nothing (kopf keeps no progress for event handlers).
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.notice(namespace, name, _version(meta))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30.0)  # type: ignore[arg-type]
async def autoscale(
    stopped: kopf.DaemonStopped,
    namespace: str,
    name: str,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    runtime: Runtime = memo["runtime"]
    runtime.metrics.resources.inc()
    uid = str(meta.get("uid") or "")

    def post(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])

    try:
        while not stopped:
            changed = runtime.ownership_changed()
            if not runtime.owns(uid):  # another shard's, or a standby: wait without touching the cluster
                await runtime.wait_for_ownership(changed, stopped, OWNERSHIP_RECHECK_S)
                continue
            generation = meta.get("generation")
            next_in = await runtime.step(
                namespace,
                name,
                dict(spec),
                dict(status),
                int(generation) if generation is not None else None,
                uid=uid,
                version=_version(meta),
                paused=is_paused(meta),
                post_event=post,
                stopped=lambda: bool(stopped),
            )
            await runtime.sleep(namespace, name, stopped, next_in)
    finally:
        runtime.forget(namespace, name)
        runtime.metrics.resources.dec()
