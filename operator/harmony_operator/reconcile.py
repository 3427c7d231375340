"""One reconcile of one HarmonyAutoscaler: metrics -> forecast -> decision -> /scale -> status and events.

`Reconciler.reconcile` is the whole loop body, independent of kopf so it can be driven by the daemon, the
benchmark and tests alike. Every fault ends in a defined state (docs/operator.md has the table):

    invalid spec            Ready=False/InvalidSpec, Warning event; the target is not touched
    target missing (404)    Ready=False/TargetNotFound, Warning event; nothing to scale
    Kubernetes API 5xx      retried with back-off within the reconcile; then Ready=False/KubernetesAPIError
                            and the next reconcile comes sooner (back-off capped at the interval)
    metrics unusable        MetricsAvailable=False/<reason>; the replicas in place are held (clamped into
                            [minReplicas, maxReplicas]), Warning event Fallback
    model unusable/absent   ModelLoaded=False/<reason>; the reactive fallback rule on current demand,
                            never below the replicas in place when any demand is unknown, Warning event
    forecast miscalibrated  ForecastCalibrated=False; the decider's own fallback rule
    scale PATCH fails       retried (409 and 5xx) with back-off; then Ready=False and
                            ScalingActive=False/ScaleFailed
    saved state from the future (a leader with a clock ahead wrote it): its stabilisation entries newer than
                            now are dropped, Warning event ClockSkew; the calibration posterior is kept
    not the leader any more `NotLeader` propagates: the caller writes nothing
    another autoscaler      an HPA, a KEDA ScaledObject or an older HarmonyAutoscaler on the same target:
                            Ready=False/ConflictingAutoscaler, Warning event; decides but never scales

Whatever the early exit, the decision memory in status (`state`, `calibration`, `lastScaleTime`) is carried
over, so a transient API error or a target missing for a while does not erase what was learnt. No path sets
fewer than minReplicas (>= 1) replicas: the decision clips, and `_safe` clips again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from harmony.data.windows import MAX_MISSING_FRACTION, STALE_STEPS
from harmony_operator.batching import BatchSampler
from harmony_operator.conflicts import ConflictFinder
from harmony_operator.kube import ApiError, KubeClient, NotFound, NotLeader, retrying
from harmony_operator.memory import (
    Memory,
    calibration_condition,
    calibration_status,
    decider_for,
    remember_forecast,
    score_pending,
)
from harmony_operator.metrics import OperatorMetrics
from harmony_operator.models import LoadedModel, ModelCache, ModelError, check_indicators
from harmony_operator.outcome import (
    MEMORY_KEYS,
    STATUS_QUANTILES,
    Conditions,
    Event,
    Outcome,
    carry_memory,
    iso_time,
)
from harmony_operator.prometheus import History, MetricsError, PrometheusClient
from harmony_operator.queryguard import QueryNotAllowed, check_query
from harmony_operator.spec import AutoscalerSpec, SpecError, parse_spec

__all__ = ["MEMORY_KEYS", "Event", "Outcome", "Reconciler", "ReconcilerSettings", "carry_memory"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcilerSettings:
    # Without a model the fallback needs only the current demand: a short window at this step.
    fallback_step_s: float = 15.0
    fallback_window_s: float = 300.0
    # A series whose newest sample is older than max(stale_steps * step, stale_min_s) is stale.
    stale_steps: float = STALE_STEPS  # the backtest's rules for gaps, so that it replays what runs here
    stale_min_s: float = 120.0
    max_missing_fraction: float = MAX_MISSING_FRACTION
    retry_base_s: float = 5.0
    # A forecast that takes longer is abandoned for the fallback rule (ModelLoaded=False/ForecastFailed).
    inference_timeout_s: float = 30.0
    # How long a namespace's list of autoscalers (HPAs, ScaledObjects, HarmonyAutoscalers) is reused when
    # looking for another autoscaler on the same target: bounds the API load to 3 lists per namespace.
    conflict_cache_s: float = 10.0
    # Prometheus servers a resource may name in spec.prometheus.url besides the operator's own (URL
    # prefixes; none by default). They are queried without the operator's credentials.
    prometheus_url_prefixes: tuple[str, ...] = ()
    # When set, every series selector of a resource's queries must carry this label equal to the resource's
    # namespace (harmony_operator.queryguard); None: no guard.
    query_namespace_label: str | None = None


def window_steps(model: LoadedModel, lead_time_s: float, window_s: float | None) -> list[int]:
    """Horizon indices whose target times fall in (now + leadTime, now + leadTime + window]; with no window
    (`decisionWindow` unset), every horizon step after the lead time, as the backtest's default.

    Step j of the model's horizon is (lead_time + j + 1) frequency steps after the last observation. A
    window shorter than one step takes the first step after the lead time; a lead time past the horizon
    takes the last step (the closest the model can see).
    """
    spec = model.forecaster.spec
    f = spec.frequency_s
    offsets = [(spec.lead_time + j + 1) * f for j in range(spec.horizon)]
    eps = 1e-6 * f
    after = [j for j, o in enumerate(offsets) if o > lead_time_s + eps]
    if window_s is None:
        return after or [spec.horizon - 1]
    chosen = [j for j in after if offsets[j] <= lead_time_s + window_s + eps]
    if chosen:
        return chosen
    return [after[0]] if after else [spec.horizon - 1]


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        prometheus: PrometheusClient,
        models: ModelCache,
        sampler: BatchSampler,
        metrics: OperatorMetrics,
        settings: ReconcilerSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        group: str = "harmony.dev",
        version: str = "v1alpha1",
        plural: str = "harmonyautoscalers",
    ) -> None:
        self.kube = kube
        self.prometheus = prometheus
        self.models = models
        self.sampler = sampler
        self.metrics = metrics
        self.settings = settings or ReconcilerSettings()
        self.clock = clock
        self.api = (group, version, plural)
        self._memory: dict[tuple[str, str], Memory] = {}
        self._servers: dict[str, PrometheusClient] = {}
        self.conflicts = ConflictFinder(kube, self.api, self.settings.conflict_cache_s)

    def forget(self, namespace: str, name: str) -> None:
        self._memory.pop((namespace, name), None)
        self.metrics.forget(namespace, name)

    # ------------------------------------------------------------------------------------------------
    async def reconcile(
        self,
        namespace: str,
        name: str,
        spec_raw: Mapping[str, Any],
        status_raw: Mapping[str, Any] | None,
        generation: int | None = None,
        *,
        paused: bool = False,
    ) -> Outcome:
        """One reconcile; `paused` (the resource's pause annotation) decides and reports but never scales."""
        started = time.perf_counter()
        try:
            outcome = await self._reconcile(
                namespace, name, spec_raw, dict(status_raw or {}), generation, paused
            )
            # A reconcile that ran through ends an InternalError episode: the next one is announced again.
            self._memory[(namespace, name)].last_warning.pop("InternalError", None)
            return outcome
        finally:
            self.metrics.loop_seconds.observe(time.perf_counter() - started)

    async def _reconcile(
        self,
        namespace: str,
        name: str,
        spec_raw: Mapping[str, Any],
        old: dict[str, Any],
        generation: int | None,
        paused: bool = False,
    ) -> Outcome:
        now = self.clock()
        mem = self._memory.setdefault((namespace, name), Memory())
        conds = Conditions(old.get("conditions"), now, generation)
        events: list[Event] = []
        status: dict[str, Any] = {"lastDecisionTime": iso_time(now)}
        if generation is not None:
            status["observedGeneration"] = generation
        labels = (namespace, name)

        def warn_once(reason: str, message: str, key: str | None = None) -> None:
            # Persistent faults (a bad spec, a missing target, a fallback for the same cause) are announced
            # when they start or change (`key`, else the message), not every interval; scales every time.
            if mem.last_warning.get(reason) != (key or message):
                events.append(Event("Warning", reason, message))
                mem.last_warning[reason] = key or message

        def finish(next_in: float) -> Outcome:
            status["conditions"] = conds.render()
            if status.get("state") is None and mem.decider is not None:
                status["state"] = mem.decider.state_dict()
            carry_memory(status, old)
            return Outcome(status, events, next_in)

        # 1. the spec --------------------------------------------------------------------------------------
        try:
            spec = parse_spec(spec_raw)
        except SpecError as exc:
            conds.set("Ready", False, "InvalidSpec", str(exc))
            conds.set(
                "ScalingActive", False, "InvalidSpec", "the resource is invalid; the target is not touched"
            )
            warn_once("InvalidSpec", str(exc))
            self.metrics.decisions.labels(*labels, "unknown", "invalid").inc()
            return finish(self._retry_in(mem, 60.0, transient=False))
        mem.last_warning.pop("InvalidSpec", None)
        status["currentReplicas"] = old.get("currentReplicas")

        # 2. the target's /scale ---------------------------------------------------------------------------
        plural = spec.target_plural
        try:
            if plural is None:
                found = await retrying(
                    lambda: self.kube.scale_target(spec.target_api_version, spec.target_kind)
                )
                plural = found.plural
            target_plural = plural
            scale = await retrying(
                lambda: self.kube.get_scale(
                    namespace, target_plural, spec.target_name, api_version=spec.target_api_version
                )
            )
        except NotFound as exc:
            msg = (
                f"{spec.target_kind} {namespace}/{spec.target_name} not found"
                if plural is not None
                else f"{spec.target_kind} {spec.target_name}: {exc}"
            )
            conds.set("Ready", False, "TargetNotFound", msg)
            conds.set("ScalingActive", False, "TargetNotFound", msg)
            warn_once("TargetNotFound", msg)
            self.metrics.errors.labels(*labels, "TargetNotFound").inc()
            status.pop("currentReplicas", None)
            return finish(self._retry_in(mem, spec.interval_s, transient=False))
        except ApiError as exc:
            msg = f"reading the scale of {spec.target_kind} {spec.target_name}: {exc}"
            conds.set("Ready", False, "KubernetesAPIError", msg)
            conds.set("ScalingActive", None, "KubernetesAPIError", msg)
            warn_once("KubernetesAPIError", msg)
            self.metrics.errors.labels(*labels, "KubernetesAPIError").inc()
            return finish(self._retry_in(mem, spec.interval_s, transient=True))
        mem.last_warning.pop("TargetNotFound", None)
        mem.last_warning.pop("KubernetesAPIError", None)
        current = scale.spec_replicas
        status["currentReplicas"] = current
        self.metrics.current.labels(*labels).set(current)

        # Shadow mode runs beside the autoscaler in charge by design: only a resource that scales checks.
        conflicts = await self.conflicts.find(namespace, name, spec) if spec.apply and not paused else []

        # 3. the model -------------------------------------------------------------------------------------
        model: LoadedModel | None = None
        model_problem: str | None = None
        names = [i.name for i in spec.indicators]
        if spec.model_uri is None:
            conds.set("ModelLoaded", False, "NoModel", "no model configured: deciding with the fallback rule")
            model_problem = "no model configured"
        else:
            loads_before = self.models.loads
            try:
                model = await self.models.get(spec.model_uri)
                check_indicators(model, names, list(spec.capacities))
            except ModelError as exc:
                model, model_problem = None, f"model unusable ({exc.reason})"
                conds.set("ModelLoaded", False, exc.reason, str(exc))
                warn_once("ModelError", str(exc))
                self.metrics.errors.labels(*labels, exc.reason).inc()
            else:
                mem.last_warning.pop("ModelError", None)
                conds.set("ModelLoaded", True, "Loaded", f"{model.uri} (version {model.version})")
                status["model"] = {
                    "uri": model.uri,
                    "version": model.version,
                    "loadedAt": iso_time(model.loaded_at),
                }
            if self.models.loads > loads_before:
                self.metrics.model_loads.inc(self.models.loads - loads_before)

        # 4. the decider (rebuilt when the decision settings change; its state survives restarts) ----------
        window = window_steps(model, spec.lead_time_s, spec.decision_window_s) if model is not None else None
        lead_steps = (model.forecaster.spec.lead_time + window[0]) if model is not None and window else 0
        dconfig = spec.decision_config(lead_steps=lead_steps)
        decider = decider_for(mem, dconfig, old.get("state"))
        future = [t for t, _ in decider.stabilizer.state_dict() + decider.stabilizer.rate_state() if t > now]
        if future:
            # Written by a leader whose clock ran ahead: those entries would stall the stabiliser ("time went
            # backwards"); drop them, keep the rest (the calibration posterior has no timestamps).
            decider.stabilizer.load_state_dict(
                [(t, r) for t, r in decider.stabilizer.state_dict() if t <= now]
            )
            decider.stabilizer.load_rate_state(
                [(t, c) for t, c in decider.stabilizer.rate_state() if t <= now]
            )
            warn_once(
                "ClockSkew",
                f"saved stabilisation state ran up to {max(future) - now:.0f}s ahead of this operator's "
                f"clock; dropped {len(future)} entr{'y' if len(future) == 1 else 'ies'}",
            )

        # 5. the indicators' history -----------------------------------------------------------------------
        history: History | None = None
        metrics_problem: str | None = None
        queries = [(i.name, i.query) for i in spec.indicators]
        if model is not None:
            step = model.forecaster.spec.frequency_s
            steps = model.forecaster.spec.lookback
        else:
            step = self.settings.fallback_step_s
            steps = max(2, int(self.settings.fallback_window_s / step))
        end = math.floor(now / step) * step
        try:
            label = self.settings.query_namespace_label
            for indicator in spec.indicators if label else ():
                try:
                    check_query(indicator.query, str(label), namespace)
                except QueryNotAllowed as exc:
                    raise MetricsError("QueryNotAllowed", str(exc), indicator.name) from None
            history = await self._prometheus_for(spec).history(
                queries,
                end,
                step,
                steps,
                stale_after_s=max(self.settings.stale_steps * step, self.settings.stale_min_s),
                # The fallback needs only the current demand: gaps in its short window do not matter.
                max_missing_fraction=self.settings.max_missing_fraction if model is not None else 1.0,
            )
        except MetricsError as exc:
            metrics_problem = f"metrics unavailable ({exc.reason}: {exc})"
            conds.set("MetricsAvailable", False, exc.reason, str(exc))
            self.metrics.errors.labels(*labels, exc.reason).inc()
        else:
            conds.set(
                "MetricsAvailable",
                True,
                "Queried",
                f"{len(queries)} indicator(s), {steps} steps of {step:g}s"
                + (f", {history.filled} gap(s) interpolated" if history.filled else ""),
            )

        # In shadow mode the replicas in place are someone else's: calibration, stabilisation and step limits
        # follow the replicas harmony would have set.
        apply = spec.apply and not paused and not conflicts
        acting = current if apply or mem.last_desired is None else mem.last_desired

        # 6. calibration feedback and forecast error from what has been realised since the last decision ---
        latest: dict[str, float] | None = None
        if history is not None:
            latest = history.latest()
            newest = float(history.times[-1])
            if newest > mem.last_observed and mem.last_observed > -math.inf:
                decider.observe({k: latest[k] for k in spec.capacities}, acting)
            mem.last_observed = max(mem.last_observed, newest)
            score_pending(mem, history, self.metrics, labels)

        # 7. decide ----------------------------------------------------------------------------------------
        draws: NDArray[np.float64] | None = None
        if model is not None and history is not None and window is not None:
            fspec = model.forecaster.spec
            cols = [names.index(n) for n in fspec.indicators]
            seed = zlib.crc32(f"{namespace}/{name}/{int(history.times[-1])}".encode())
            try:
                full = await asyncio.wait_for(
                    self.sampler.sample(
                        model.forecaster,
                        history.values[-fspec.lookback :, cols],
                        float(history.times[-1]),
                        seed,
                    ),
                    timeout=self.settings.inference_timeout_s,
                )
                draws = full[:, window, :]
                self.metrics.batch_size.set(self.sampler.last_batch_size)
            except Exception as exc:
                log.exception("sampling %s/%s failed", namespace, name)
                why = (
                    f"no forecast within {self.settings.inference_timeout_s:g}s"
                    if isinstance(exc, TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
                model_problem = f"forecast failed ({why})"
                conds.set("ModelLoaded", False, "ForecastFailed", why)
        if draws is not None and model is not None:
            decision = decider.decide(
                draws, list(model.forecaster.spec.targets), acting, now, current_demand=latest
            )
            remember_forecast(mem, model, draws, window or [0], history)
        else:
            why = metrics_problem or model_problem or "no forecast"
            decision = decider.decide(None, [], acting, now, current_demand=latest, fallback_reason=why)
        desired = self._safe(decision.replicas, spec)
        # Health of the metrics (KEDA's per-trigger health): consecutive reconciles without usable metrics,
        # kept in status so a restart or a new leader continues the count.
        saved_health = old.get("health")
        old_health: Mapping[str, Any] = saved_health if isinstance(saved_health, Mapping) else {}
        failures = int(old_health.get("consecutiveFailures", 0) or 0) + 1 if metrics_problem else 0
        status["health"] = {
            "status": "Failing" if metrics_problem else "Happy",
            "consecutiveFailures": failures,
        }
        if metrics_problem:
            status["health"]["lastFailure"] = metrics_problem
        fixed = spec.fallback_replicas
        if fixed is not None and failures >= spec.fallback_failure_threshold:
            why = (
                f"fallback replicas: metrics unusable for {failures} reconciles in a row "
                f"(threshold {spec.fallback_failure_threshold}): {metrics_problem}"
            )
            desired = self._safe(fixed, spec)
            decision = dataclasses.replace(decision, replicas=desired, reason=why, fallback=True)
            warn_once("FallbackReplicas", why, key=str(fixed))
        else:
            mem.last_warning.pop("FallbackReplicas", None)
        mem.last_desired = desired

        # 8. act -------------------------------------------------------------------------------------------
        kind = "fallback" if decision.fallback else "forecast"
        if metrics_problem is not None:
            kind = "hold"
        self.metrics.decisions.labels(*labels, spec.mode, kind).inc()
        if decision.fallback:
            reason_label = "metrics" if metrics_problem else ("model" if model_problem else "miscalibrated")
            self.metrics.fallbacks.labels(*labels, reason_label).inc()
            warn_once("Fallback", decision.reason, key=reason_label)
        else:
            mem.last_warning.pop("Fallback", None)
        transient = False
        scale_problem: str | None = None
        if apply:
            if desired != current:
                try:
                    await retrying(
                        lambda: self.kube.patch_scale(
                            namespace,
                            target_plural,
                            spec.target_name,
                            desired,
                            api_version=spec.target_api_version,
                        )
                    )
                except NotLeader:
                    raise
                except ApiError as exc:
                    msg = f"scaling {spec.target_kind} {spec.target_name} to {desired} failed: {exc}"
                    scale_problem = msg
                    conds.set("ScalingActive", False, "ScaleFailed", msg)
                    events.append(Event("Warning", "ScaleFailed", msg))
                    self.metrics.scale_patches.labels(*labels, "error").inc()
                    transient = True
                else:
                    status["lastScaleTime"] = iso_time(now)
                    status["currentReplicas"] = desired
                    self.metrics.scale_patches.labels(*labels, "success").inc()
                    events.append(
                        Event("Normal", "Scaled", f"{current} -> {desired} replicas: {decision.reason}")
                    )
                    conds.set("ScalingActive", True, "Scaled", f"scaled {current} -> {desired}")
            else:
                conds.set(
                    "ScalingActive", True, "Holding", f"{current} replicas are what the decision asks for"
                )
        elif conflicts:
            msg = (
                f"{', '.join(conflicts)} also scale{'s' if len(conflicts) == 1 else ''} {spec.target_kind} "
                f"{spec.target_name}: not scaling ({desired} replicas recommended) until one autoscaler does"
            )
            conds.set("ScalingActive", False, "ConflictingAutoscaler", msg)
            warn_once("ConflictingAutoscaler", msg, key=", ".join(conflicts))
        elif paused:
            conds.set(
                "ScalingActive",
                False,
                "Paused",
                f"annotation {self.api[0]}/paused: {desired} replicas recommended, the target is not scaled",
            )
        else:
            conds.set(
                "ScalingActive",
                False,
                "RecommendOnly",
                f"mode Recommend: {desired} replicas recommended, the target is not scaled",
            )
        if "lastScaleTime" not in status and old.get("lastScaleTime"):
            status["lastScaleTime"] = old["lastScaleTime"]

        # 9. status ----------------------------------------------------------------------------------------
        status.update(
            {
                "desiredReplicas": desired,
                "bindingIndicator": decision.binding_indicator or "",
                "reason": decision.reason,
                "fallback": decision.fallback,
                "state": decider.state_dict(),
            }
        )
        if decision.p_violation is not None:
            status["violationProbability"] = round(float(decision.p_violation), 6)
            self.metrics.p_violation.labels(*labels).set(decision.p_violation)
        if decision.expected_cost is not None:
            status["expectedCost"] = round(float(decision.expected_cost), 6)
        if draws is not None and model is not None:
            peaks = draws.max(axis=1)  # [S, targets]: each indicator's peak over the window
            qs = np.quantile(peaks, STATUS_QUANTILES, axis=0)
            status["forecast"] = [
                {"name": n, "p50": float(qs[0, k]), "p90": float(qs[1, k]), "p99": float(qs[2, k])}
                for k, n in enumerate(model.forecaster.spec.targets)
            ]
        status["calibration"] = calibration_status(decider)
        calibration_condition(conds, decider)
        self.metrics.desired.labels(*labels).set(desired)

        if not conflicts:
            mem.last_warning.pop("ConflictingAutoscaler", None)
        if conflicts:
            conds.set("Ready", False, "ConflictingAutoscaler", f"also scaled by {', '.join(conflicts)}")
        elif metrics_problem is not None:
            conds.set("Ready", False, "MetricsUnavailable", f"holding replicas: {metrics_problem}")
        elif scale_problem is not None:
            conds.set("Ready", False, "ScaleFailed", scale_problem)
        else:
            conds.set("Ready", True, "Deciding", decision.reason)
        status["conditions"] = conds.render()
        next_in = self._retry_in(mem, spec.interval_s, transient=transient or metrics_problem is not None)
        return Outcome(status, events, next_in, decision)

    def failure(
        self,
        namespace: str,
        name: str,
        spec_raw: Mapping[str, Any],
        status_raw: Mapping[str, Any] | None,
        generation: int | None,
        exc: BaseException,
    ) -> Outcome:
        """The outcome of a reconcile that raised: Ready=False/InternalError, a Warning event when the
        error changes, the decision memory kept, and the next try sooner (back-off capped at the interval)."""
        now = self.clock()
        old = dict(status_raw or {})
        mem = self._memory.setdefault((namespace, name), Memory())
        conds = Conditions(old.get("conditions"), now, generation)
        message = f"{type(exc).__name__}: {exc}"[:500]
        conds.set("Ready", False, "InternalError", message)
        conds.set(
            "ScalingActive", None, "InternalError", "no decision this interval; replicas left as they are"
        )
        status: dict[str, Any] = {"lastDecisionTime": iso_time(now), "conditions": conds.render()}
        for key in ("currentReplicas", "desiredReplicas"):
            if old.get(key) is not None:
                status[key] = old[key]
        if generation is not None:
            status["observedGeneration"] = generation
        if mem.decider is not None:
            status["state"] = mem.decider.state_dict()
        carry_memory(status, old)
        events: list[Event] = []
        if mem.last_warning.get("InternalError") != message:
            events.append(Event("Warning", "InternalError", message))
            mem.last_warning["InternalError"] = message
        self.metrics.errors.labels(namespace, name, "InternalError").inc()
        try:
            interval = parse_spec(spec_raw).interval_s
        except (SpecError, TypeError, ValueError):
            interval = 60.0
        return Outcome(status, events, self._retry_in(mem, interval, transient=True))

    def _prometheus_for(self, spec: AutoscalerSpec) -> PrometheusClient:
        """The operator's Prometheus, or the resource's own server when an allowed prefix covers it."""
        url = (spec.prometheus_url or "").rstrip("/")
        if not url or url == self.prometheus.base_url:
            return self.prometheus
        if not url.startswith(self.settings.prometheus_url_prefixes):
            raise MetricsError(
                "PrometheusNotAllowed",
                f"spec.prometheus.url {url} is not under an allowed prefix "
                f"{list(self.settings.prometheus_url_prefixes)} (the operator's --prometheus-url-prefix)",
            )
        client = self._servers.get(url)
        if client is None:
            # No credentials: the operator's own are for its own Prometheus, never for a tenant's server.
            timeout = self.prometheus.timeout.total or 10.0
            client = self._servers[url] = PrometheusClient(url, self.prometheus.session, timeout_s=timeout)
        return client

    # helpers ------------------------------------------------------------------------------------------
    def _retry_in(self, mem: Memory, interval_s: float, *, transient: bool) -> float:
        if not transient:
            mem.failures = 0
            return interval_s
        mem.failures += 1
        return float(min(interval_s, self.settings.retry_base_s * 2.0 ** (mem.failures - 1)))

    @staticmethod
    def _safe(replicas: int, spec: AutoscalerSpec) -> int:
        return int(min(max(replicas, spec.min_replicas, 1), spec.max_replicas))
