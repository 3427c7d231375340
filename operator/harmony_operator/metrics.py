"""The operator's own Prometheus metrics, served on `--metrics-port` at /metrics.

One registry per `OperatorMetrics` (not the process-global default) so several operators in one test
process never collide. Per-resource series carry `namespace` and `name` labels and are removed when the
resource is deleted.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["OperatorMetrics"]

_RESOURCE = ("namespace", "name")


class OperatorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "harmony_operator_decisions",
            "Decisions made, by how they were made (forecast, fallback, hold, invalid).",
            [*_RESOURCE, "mode", "kind"],
            registry=r,
        )
        self.scale_patches = Counter(
            "harmony_operator_scale_patches",
            "PATCHes of a target's /scale, by result.",
            [*_RESOURCE, "result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "harmony_operator_fallbacks",
            "Decisions that used the fallback rule or held the replicas, by reason.",
            [*_RESOURCE, "reason"],
            registry=r,
        )
        self.errors = Counter(
            "harmony_operator_errors",
            "Failed steps of a reconcile, by reason.",
            [*_RESOURCE, "reason"],
            registry=r,
        )
        self.desired = Gauge(
            "harmony_operator_desired_replicas",
            "Replicas the last decision asked for.",
            _RESOURCE,
            registry=r,
        )
        self.current = Gauge(
            "harmony_operator_current_replicas", "Replicas of the target seen last.", _RESOURCE, registry=r
        )
        self.p_violation = Gauge(
            "harmony_operator_violation_probability",
            "Predicted probability that demand exceeds the desired replicas' capacity.",
            _RESOURCE,
            registry=r,
        )
        self.forecast_error = Histogram(
            "harmony_operator_forecast_relative_error",
            "|realised - forecast median| / realised of each demand indicator, one step after the lead time.",
            _RESOURCE,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.loop_seconds = Histogram(
            "harmony_operator_reconcile_seconds",
            "Wall time of one reconcile of one resource.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.model_loads = Counter("harmony_operator_model_loads", "Models loaded (or reloaded).", registry=r)
        self.batch_size = Gauge(
            "harmony_operator_inference_batch_size",
            "Resources in the last batched forecaster call.",
            registry=r,
        )
        self.leader = Gauge(
            "harmony_operator_leader", "1 while this instance holds the leader lease.", registry=r
        )
        self.shards_held = Gauge(
            "harmony_operator_shards_held",
            "Shards whose Lease this instance holds and acts for (its home shard and any it took over).",
            registry=r,
        )
        self.resources = Gauge(
            "harmony_operator_resources", "HarmonyAutoscalers this instance serves.", registry=r
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted resource's series so /metrics does not report it forever."""
        per_resource: tuple[Gauge | Histogram, ...] = (
            self.desired,
            self.current,
            self.p_violation,
            self.forecast_error,
        )
        for metric in per_resource:
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)
        for counter in (self.decisions, self.scale_patches, self.fallbacks, self.errors):
            # prometheus_client has no public listing of a metric's label sets.
            for labels in list(counter._metrics):
                if labels[:2] == (namespace, name):
                    counter.remove(*labels)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
