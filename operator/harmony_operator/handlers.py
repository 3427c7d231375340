"""kopf wiring: one daemon per HarmonyAutoscaler runs `Reconciler.reconcile` every interval.

Settings come from `configure(OperatorOptions)` (the CLI) or, when started as `kopf run -m
harmony_operator.handlers`, from the environment (`OperatorOptions.from_env`). kopf runs standalone (no
peering objects); one-active-instance is the Lease in `harmony_operator.leader`. A standby instance's
daemons wait without touching the cluster until it holds the lease. Handler results are never returned,
so kopf writes nothing into `.status` beside what the reconciler writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from harmony_operator import GROUP, PLURAL, VERSION
from harmony_operator.batching import BatchSampler
from harmony_operator.kube import ApiError, KubeClient, NotFound, connection_info, load_credentials, retrying
from harmony_operator.leader import LeaderElector
from harmony_operator.metrics import OperatorMetrics
from harmony_operator.models import ModelCache
from harmony_operator.prometheus import PrometheusClient
from harmony_operator.reconcile import Reconciler, ReconcilerSettings

__all__ = ["OperatorOptions", "Runtime", "configure"]

log = logging.getLogger(__name__)

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
        )


_OPTIONS: OperatorOptions | None = None


def configure(options: OperatorOptions) -> None:
    global _OPTIONS
    _OPTIONS = options


class Runtime:
    """Everything the handlers share: clients, caches, metrics, the reconciler and the leader lease."""

    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        self.metrics = OperatorMetrics()
        self.kube = KubeClient()
        self.http = aiohttp.ClientSession()
        self.prometheus = PrometheusClient(options.prometheus_url, self.http)
        self.models = ModelCache(Path(options.model_cache_dir) if options.model_cache_dir else None)
        self.sampler = BatchSampler(options.num_samples)
        self.reconciler = Reconciler(
            self.kube,
            self.prometheus,
            self.models,
            self.sampler,
            self.metrics,
            ReconcilerSettings(stale_min_s=options.min_staleness_s),
        )
        self.stop = asyncio.Event()
        self.elector: LeaderElector | None = None
        self.elector_task: asyncio.Task[None] | None = None
        if options.leader_election:
            if not options.lease_namespace:
                raise kopf.PermanentError("leader election needs --lease-namespace or POD_NAMESPACE")
            self.elector = LeaderElector(
                self.kube,
                options.lease_namespace,
                options.lease_name,
                on_change=lambda leader: self.metrics.leader.set(1 if leader else 0),
            )
        else:
            self.metrics.leader.set(1)

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def start(self) -> None:
        if self.options.metrics_port:
            self.metrics.serve(self.options.metrics_port)
        if self.elector is not None:
            await self.elector.try_acquire_or_renew()
            self.elector_task = asyncio.create_task(self.elector.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.elector_task is not None:
            await self.elector_task
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
    try:
        while not stopped:
            if not runtime.is_leader:
                await stopped.wait(1.0)
                continue
            generation = meta.get("generation")
            outcome = await runtime.reconciler.reconcile(
                namespace, name, dict(spec), dict(status), int(generation) if generation is not None else None
            )
            if stopped:
                break  # deleted (or shutting down) while deciding: write nothing more
            patch: dict[str, Any] = dict.fromkeys(STATUS_KEYS)
            patch.update(outcome.status)
            try:
                await retrying(
                    functools.partial(
                        runtime.kube.patch_status, GROUP, VERSION, PLURAL, namespace, name, patch
                    )
                )
            except NotFound:
                break
            except ApiError as exc:
                logger.warning("could not write the status: %s", exc)
            for event in outcome.events:
                kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])
            logger.info("%s", outcome.status.get("reason", outcome.status.get("conditions", [{}])[0]))
            await stopped.wait(outcome.next_in_s)
    finally:
        runtime.reconciler.forget(namespace, name)
        runtime.metrics.resources.dec()
