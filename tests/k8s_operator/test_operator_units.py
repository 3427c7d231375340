"""The operator's parts against known answers and real servers: spec validation, the Prometheus client on
the real backfilled Prometheus, leader election on the HTTP Kubernetes API, the model cache on a real MLflow
store, batched sampling, and decision state kept across a restart."""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from harmony_operator.batching import BatchSampler
from harmony_operator.kube import KubeClient
from harmony_operator.leader import LeaderElector
from harmony_operator.models import LoadedModel, ModelCache, ModelError, ModelPolicy, check_indicators
from harmony_operator.prometheus import MetricsError, PrometheusClient
from harmony_operator.reconcile import window_steps
from harmony_operator.spec import SpecError, parse_duration, parse_spec
from operator_harness import (  # type: ignore[import-not-found]
    LOOKBACK,
    STEP_S,
    Cluster,
    PrometheusServer,
)

from harmony.model.base import Forecaster

# The tests' models are in pytest's temporary directories.
TMP_POLICY = ModelPolicy(("models:/", "runs:/", tempfile.gettempdir() + "/"))

MINIMAL: dict[str, Any] = {
    "scaleTargetRef": {"name": "web"},
    "maxReplicas": 10,
    "indicators": [{"name": "requests", "query": "sum(rate(x[1m]))", "capacityPerReplica": 20}],
}


# --- spec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("5m", 300.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        (45, 45.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "interval") == seconds


@pytest.mark.parametrize("text", ["1 minute", "60", "-5s", "5d", "", "s", "1m 30s"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(SpecError, match=r"^spec\.interval: expected a duration"):
        parse_duration(text, "interval")


def test_minimal_spec_gets_the_crd_defaults() -> None:
    s = parse_spec(MINIMAL)
    assert (s.target_kind, s.target_plural, s.min_replicas, s.mode) == (
        "Deployment",
        "deployments",
        1,
        "Apply",
    )
    assert (s.interval_s, s.lead_time_s, s.scale_down_stabilization_s) == (60.0, 0.0, 300.0)
    assert (s.max_violation_probability, s.replica_hour_price, s.violation_penalty) == (0.01, 1.0, 0.0)
    assert (s.fallback_target_utilization, s.fallback_margin) == (0.7, 0.1)
    assert s.capacities == {"requests": 20.0} and s.model_uri is None
    cfg = s.decision_config(lead_steps=2)
    assert (cfg.max_replicas, cfg.min_replicas, cfg.interval_s, cfg.lead_steps) == (10, 1, 60.0, 2)
    assert cfg.capacities == {"requests": 20.0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "Auto"}, "mode"),
        ({"minReplicas": 0}, "minReplicas"),
        ({"minReplicas": 11}, "minReplicas"),
        ({"maxReplicas": "ten"}, "maxReplicas"),
        ({"slo": {"maxViolationProbability": 1.5}}, "slo.maxViolationProbability"),
        ({"interval": "1 minute"}, "interval"),
        ({"interval": "500ms"}, "interval"),
        ({"indicators": []}, "indicators"),
        ({"indicators": [{"name": "requests"}]}, "indicators[0].query"),
        ({"indicators": [{"name": "cpu", "query": "x"}]}, "indicators"),
        (
            {
                "indicators": [
                    {"name": "a", "query": "x", "capacityPerReplica": 1},
                    {"name": "a", "query": "y"},
                ]
            },
            "indicators[1].name",
        ),
        (
            {"indicators": [{"name": "a", "query": "x", "capacityPerReplica": 0}]},
            "indicators[0].capacityPerReplica",
        ),
        ({"scaleTargetRef": {"kind": "daemon set", "name": "web"}}, "scaleTargetRef.kind"),
        ({"scaleTargetRef": {"apiVersion": "argoproj.io", "name": "web"}}, "scaleTargetRef.apiVersion"),
        ({"scaleTargetRef": None}, "scaleTargetRef"),
        ({"model": {"uri": " "}}, "model.uri"),
        ({"behavior": {"maxScaleUpStep": 0}}, "behavior.maxScaleUpStep"),
        ({"fallback": {"targetUtilization": 0}}, "fallback.targetUtilization"),
        ({"fallback": {"replicas": 11}}, "fallback.replicas"),  # above maxReplicas (10)
        ({"fallback": {"replicas": 2, "failureThreshold": 0}}, "fallback.failureThreshold"),
    ],
)
def test_invalid_specs_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**MINIMAL, **change})
    assert info.value.field == field
    assert str(info.value).startswith(f"spec.{field}: ")


def test_hpa_behavior_maps_to_the_decision_settings() -> None:
    from harmony.decision.rates import RateLimit, RateRule

    s = parse_spec(
        {
            **MINIMAL,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "selectPolicy": "Min",
                    "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 60},
                        {"type": "Percent", "value": 100, "periodSeconds": 60},
                    ],
                },
                "scaleDown": {"stabilizationWindowSeconds": 600, "selectPolicy": "Disabled"},
            },
        }
    )
    cfg = s.decision_config()
    assert cfg.scale_up_stabilization_s == 60.0 and cfg.scale_down_stabilization_s == 600.0
    assert cfg.scale_up_rate == RateLimit(
        (RateRule("Pods", 4.0, 60.0), RateRule("Percent", 100.0, 60.0)), "Min"
    )
    assert cfg.scale_down_rate == RateLimit((), "Disabled")
    plain = parse_spec(MINIMAL).decision_config()
    assert (plain.scale_up_rate, plain.scale_down_rate, plain.scale_up_stabilization_s) == (None, None, 0.0)


@pytest.mark.parametrize(
    ("behavior", "field"),
    [
        ({"scaleUp": {"selectPolicy": "Most"}}, "behavior.scaleUp.selectPolicy"),
        ({"scaleUp": {"policies": []}}, "behavior.scaleUp.policies"),
        (
            {"scaleUp": {"policies": [{"type": "Replicas", "value": 1, "periodSeconds": 60}]}},
            "behavior.scaleUp.policies[0].type",
        ),
        (
            {"scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 60}]}},
            "behavior.scaleDown.policies[0].value",
        ),
        (
            {"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 3600}]}},
            "behavior.scaleDown.policies[0].periodSeconds",
        ),
        (
            {"scaleDown": {"stabilizationWindowSeconds": 7200}},
            "behavior.scaleDown.stabilizationWindowSeconds",
        ),
        (
            {"scaleDownStabilization": "60s", "scaleDown": {"stabilizationWindowSeconds": 60}},
            "behavior.scaleDown.stabilizationWindowSeconds",
        ),
    ],
)
def test_bad_hpa_behavior_names_the_field(behavior: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**MINIMAL, "behavior": behavior})
    assert info.value.field == field


async def test_scale_up_rate_limits_the_applied_replicas(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    """'2 pods per 10 minutes' against a decision that wants many more: 1 -> 3, then held at 3."""
    from harmony_operator.metrics import OperatorMetrics
    from harmony_operator.reconcile import Reconciler, ReconcilerSettings
    from operator_harness import add_deployment, autoscaler_spec  # type: ignore[import-not-found]

    add_deployment(cluster, "shop", "web", replicas=1)
    spec = autoscaler_spec(
        model={"uri": str(model_dir)},
        behavior={
            "scaleDownStabilization": "0s",
            "scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 600}]},
        },
    )
    spec["indicators"][0]["capacityPerReplica"] = 0.05  # the forecast wants tens of replicas
    async with aiohttp.ClientSession() as http, KubeClient() as kube:
        rec = Reconciler(
            kube,
            PrometheusClient(prometheus.url, http),
            ModelCache(policy=TMP_POLICY),
            BatchSampler(50),
            OperatorMetrics(),
            ReconcilerSettings(stale_min_s=1800),
        )
        first = await rec.reconcile("shop", "web", spec, {}, 1)
        second = await rec.reconcile("shop", "web", spec, first.status, 1)
    assert first.decision is not None and first.decision.recommendation > 3
    assert (first.status["desiredReplicas"], second.status["desiredReplicas"]) == (3, 3)
    assert first.status["reason"].endswith("(scale-up rate 2pods/600s)")
    assert cluster.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 3
    assert first.status["state"]["rate_changes"][0][1] == 2


# --- which horizon steps a decision covers ------------------------------------------------------------


def test_window_steps(model_dir: Path) -> None:
    model = LoadedModel("x", "1", Forecaster.load(model_dir), 0.0)  # 10-min steps, horizon 6, lead 0
    assert window_steps(model, 0.0, 600.0) == [0]
    assert window_steps(model, 0.0, 1800.0) == [0, 1, 2]
    assert window_steps(model, 600.0, 1200.0) == [1, 2]
    assert window_steps(model, 0.0, 60.0) == [0]  # shorter than a step: the first step after the lead
    assert window_steps(model, 7200.0, 600.0) == [5]  # past the horizon: the last step
    # No decisionWindow: every step after the lead time, as the backtest's default (window_steps: null).
    assert window_steps(model, 0.0, None) == [0, 1, 2, 3, 4, 5]
    assert window_steps(model, 1800.0, None) == [3, 4, 5]
    assert window_steps(model, 7200.0, None) == [5]


def test_the_operator_decides_on_the_steps_the_backtest_replays(model_dir: Path, load_trace: Any) -> None:
    # The backtest's draws for a decision (harmony.backtest.check_forecaster: first step, count) and the
    # operator's window must be the same horizon steps, with and without a window, at every lead time.
    from harmony.backtest import Settings, check_forecaster

    model = LoadedModel("x", "1", Forecaster.load(model_dir), 0.0)
    trace = load_trace("fisher_containers")
    step = model.forecaster.spec.frequency_s
    for lead in range(4):
        for window in (None, 1, 2):
            settings = Settings(capacities={"load": 1.0}, lead_time=lead, window_steps=window)
            first, count = check_forecaster(model.forecaster, trace, settings)
            seconds = None if window is None else window * step
            expected = list(range(first, first + count))
            assert window_steps(model, lead * step, seconds) == expected, (lead, window)


def test_decision_window_is_a_positive_duration_or_unset() -> None:
    base = dict(MINIMAL)
    assert parse_spec(base).decision_window_s is None
    assert parse_spec({**base, "decisionWindow": "10m"}).decision_window_s == 600.0
    with pytest.raises(SpecError, match=r"^spec\.decisionWindow: expected a duration above 0s .*got '0s'"):
        parse_spec({**base, "decisionWindow": "0s"})


# --- Prometheus ----------------------------------------------------------------------------------------


async def test_history_reads_back_the_real_trace(prometheus: PrometheusServer) -> None:
    end = math.floor(prometheus.now / STEP_S) * STEP_S
    async with aiohttp.ClientSession() as http:
        client = PrometheusClient(prometheus.url, http)
        h = await client.history(
            [
                ("load", 'fisher_load{container="container1"}'),
                ("cpu", 'fisher_cpu_cores{container="container1"}'),
            ],
            end,
            STEP_S,
            LOOKBACK,
            stale_after_s=1800,
        )
    k = int(np.flatnonzero(prometheus.times == end)[0])
    np.testing.assert_array_equal(h.times, prometheus.times[k - LOOKBACK + 1 : k + 1])
    np.testing.assert_allclose(h.values[:, 0], prometheus.load[k - LOOKBACK + 1 : k + 1], rtol=1e-12)
    np.testing.assert_allclose(h.values[:, 1], prometheus.cpu[k - LOOKBACK + 1 : k + 1], rtol=1e-12)
    assert h.filled == 0
    assert h.latest() == {"load": prometheus.load[k], "cpu": prometheus.cpu[k]}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ('fisher_never_exported{container="container1"}', "NoData"),
        ('fisher_load_nan{container="container1"}', "NoData"),
        # Every sample negative (as a delta across counter resets would be): no usable sample.
        ('-fisher_load{container="container1"}', "NoData"),
        ('fisher_load_stale{container="container1"}', "StaleData"),
        ('{__name__=~"fisher_load|fisher_cpu_cores"}', "AmbiguousQuery"),
        ("sum(fisher_load", "QueryError"),
    ],
)
async def test_history_faults(prometheus: PrometheusServer, query: str, reason: str) -> None:
    end = math.floor(prometheus.now / STEP_S) * STEP_S
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsError) as info:
            await PrometheusClient(prometheus.url, http).history(
                [("load", query)], end, STEP_S, LOOKBACK, stale_after_s=1800
            )
    assert info.value.reason == reason
    assert info.value.indicator == "load"


async def test_history_unreachable() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsError) as info:
            await PrometheusClient("http://127.0.0.1:9", http, timeout_s=2).history(
                [("load", "up")], 1e9, 60, 10, stale_after_s=180
            )
    assert info.value.reason == "PrometheusUnreachable"


# --- leader election ------------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_leader_election_one_holder_takeover_and_release(cluster: Cluster) -> None:
    clock = Clock(1_800_000_000.0)
    async with KubeClient() as kube_a, KubeClient() as kube_b:
        a = LeaderElector(kube_a, "ops", "lease", "a", lease_s=15, renew_deadline_s=10, clock=clock)
        b = LeaderElector(kube_b, "ops", "lease", "b", lease_s=15, renew_deadline_s=10, clock=clock)
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False
        assert (a.is_leader, b.is_leader) == (True, False)
        clock.t += 5
        assert await a.try_acquire_or_renew() is True  # renewal
        assert await b.try_acquire_or_renew() is False
        # a stops renewing: it stops acting after the renew deadline, before b may take over ...
        clock.t += 11
        assert a.is_leader is False
        assert await b.try_acquire_or_renew() is False  # 11 s < 15 s lease: still a's
        # ... and b takes over once the lease has expired.
        clock.t += 5
        assert await b.try_acquire_or_renew() is True
        lease = cluster.objects["coordination.k8s.io/v1/leases", "ops", "lease"]
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        assert await a.try_acquire_or_renew() is False
        # A clean shutdown hands over at once.
        await b.release()
        assert lease_holder(cluster) == ""
        assert await a.try_acquire_or_renew() is True
        assert (
            cluster.objects["coordination.k8s.io/v1/leases", "ops", "lease"]["spec"]["leaseTransitions"] == 2
        )


async def test_leader_election_ignores_the_holders_wall_clock(cluster: Cluster) -> None:
    """Wall clocks 8 s and 1 h apart: the takeover still waits a lease duration of the contender's own
    monotonic time after the last change it saw, and the holder stops acting before that."""
    mono_a, mono_b = Clock(100.0), Clock(5_000.0)  # monotonic clocks have unrelated origins
    wall = 1_800_000_000.0
    async with KubeClient() as kube:
        a = LeaderElector(
            kube,
            "ops",
            "lease",
            "a",
            lease_s=15,
            renew_deadline_s=10,
            retry_s=2,
            clock=mono_a,
            wall_clock=lambda: wall + mono_a.t,
        )
        b = LeaderElector(
            kube,
            "ops",
            "lease",
            "b",
            lease_s=15,
            renew_deadline_s=10,
            retry_s=2,
            clock=mono_b,
            wall_clock=lambda: wall + mono_a.t + 8,
        )  # 8 s ahead of a's
        assert await a.try_acquire_or_renew() is True
        assert await b.try_acquire_or_renew() is False  # b: renewTime looks 8 s old; irrelevant
        for _ in range(5):  # a renews every 2 s; b never takes over
            mono_a.t += 2
            mono_b.t += 2
            assert await a.try_acquire_or_renew() is True
            assert await b.try_acquire_or_renew() is False
        b.wall_clock = lambda: wall + mono_a.t + 3600  # even an hour of skew
        # a stalls (no renewals): it stops acting after 10 s; b waits 15 s from the last change it saw.
        for step in range(1, 15):
            mono_a.t += 1
            mono_b.t += 1
            assert a.is_leader is (step < 10)
            assert await b.try_acquire_or_renew() is False
            assert not (a.is_leader and b.is_leader)
        mono_a.t += 1
        mono_b.t += 1
        assert await b.try_acquire_or_renew() is True
        assert not a.is_leader
        assert await a.try_acquire_or_renew() is False  # a sees b's lease: stays a follower
    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(kube, "ops", "lease", "c", lease_s=10, renew_deadline_s=10)


def lease_holder(cluster: Cluster) -> str:
    return str(cluster.objects["coordination.k8s.io/v1/leases", "ops", "lease"]["spec"]["holderIdentity"])


async def test_leader_election_loses_a_write_race(cluster: Cluster) -> None:
    """Two contenders read the same expired lease; the API server's resourceVersion check lets one win."""
    clock = Clock(1_800_000_000.0)
    async with KubeClient() as kube:
        first = LeaderElector(kube, "ops", "lease", "first", clock=clock)
        assert await first.try_acquire_or_renew() is True
        a = LeaderElector(kube, "ops", "lease", "a", clock=clock)
        b = LeaderElector(kube, "ops", "lease", "b", clock=clock)
        # A newcomer first sees the lease and waits a whole lease duration from then (client-go's rule).
        assert await a.try_acquire_or_renew() is False
        assert await b.try_acquire_or_renew() is False
        clock.t += 16  # first never renewed: expired by both contenders' own clocks
        won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    assert lease_holder(cluster) == ("a" if won[0] else "b")


# --- models ------------------------------------------------------------------------------------------------


async def test_model_cache_loads_local_directories_and_follows_uri_changes(
    model_dir: Path, tmp_path: Path, load_trace: Any
) -> None:
    cache = ModelCache(tmp_path / "cache", policy=TMP_POLICY)
    first = await cache.get(str(model_dir))
    again = await cache.get(str(model_dir))
    assert first is again and cache.loads == 1
    assert first.forecaster.spec.indicators == ("load", "cpu_cores")
    check_indicators(first, ["load", "cpu_cores", "extra"], ["load"])
    with pytest.raises(ModelError, match="lacks") as info:
        check_indicators(first, ["load"], ["load"])
    assert info.value.reason == "ModelMismatch"
    with pytest.raises(ModelError, match="not forecast") as info:
        check_indicators(first, ["load", "cpu_cores"], ["cpu_cores"])
    # A new URI is a new model.
    other = tmp_path / "other"
    first.forecaster.save(other)
    assert (await cache.get(str(other))).uri == str(other) and cache.loads == 2
    for uri, reason in (
        (str(tmp_path / "missing"), "ModelNotFound"),
        (str(tmp_path / "cache"), "ModelCorrupt"),
    ):
        with pytest.raises(ModelError) as info:
            await cache.get(uri)
        assert info.value.reason == reason


async def test_model_cache_reads_the_mlflow_registry(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from harmony.model import mlflow_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    forecaster = Forecaster.load(model_dir)
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="forecaster",
            python_model=mlflow_model.__file__,
            artifacts={mlflow_model.FORECASTER_ARTIFACT: str(model_dir)},
            signature=mlflow_model.model_signature(forecaster),
            registered_model_name="fisher-load",
        )
    MlflowClient().set_registered_model_alias("fisher-load", "champion", "1")
    cache = ModelCache(tmp_path / "cache", policy=TMP_POLICY)
    for uri in ("models:/fisher-load/1", "models:/fisher-load@champion", "models:/fisher-load/latest"):
        m = await cache.get(uri)
        assert m.version == "1"
        assert m.forecaster.spec == forecaster.spec
    with pytest.raises(ModelError) as info:
        await cache.get("models:/no-such-model/1")
    assert info.value.reason == "ModelNotFound"


# --- batched sampling ---------------------------------------------------------------------------------------


async def test_batched_sampling_equals_one_batched_call(
    model_dir: Path, prometheus: PrometheusServer
) -> None:
    forecaster = Forecaster.load(model_dir)
    sampler = BatchSampler(num_samples=50, window_s=0.05)
    values = np.stack([prometheus.load, prometheus.cpu], axis=1)
    hists = [values[k : k + LOOKBACK] for k in (0, 50, 100)]
    times = [float(prometheus.times[k + LOOKBACK - 1]) for k in (0, 50, 100)]
    seeds = [11, 22, 33]
    got = await asyncio.gather(
        *(sampler.sample(forecaster, h, t, s) for h, t, s in zip(hists, times, seeds, strict=True))
    )
    sampler.close()
    assert sampler.batches == 1 and sampler.last_batch_size == 3
    direct = forecaster.sample(
        np.stack(hists).astype(np.float32),
        50,
        np.array([int(t * 1e9) for t in times], dtype=np.int64),
        seed=11 ^ 22 ^ 33,
    )
    for k in range(3):
        assert got[k].shape == (50, 6, 1)
        np.testing.assert_allclose(got[k], direct[k])


# --- decision state survives a restart ----------------------------------------------------------------------


async def test_decision_state_is_restored_from_status(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    """A new operator (restart, new leader) continues the calibration posterior written in the status."""
    from harmony_operator.metrics import OperatorMetrics
    from harmony_operator.reconcile import Reconciler, ReconcilerSettings
    from operator_harness import add_deployment, autoscaler_spec  # type: ignore[import-not-found]

    from harmony.decision import Decider

    add_deployment(cluster, "shop", "web", replicas=2)
    spec = autoscaler_spec(model={"uri": str(model_dir)})
    earlier = Decider(parse_spec(spec).decision_config())
    # Draws of 1 to 3 load units: the quantile sets 2 or 3 replicas as its level moves; the outcomes of the
    # counts the draws leave an exceedance near the level asked are learnt.
    y = np.linspace(1.0, 3.0, 100).reshape(100, 1, 1)
    for violated in (True, False, True, True, False):  # a forecast that was too low 3 times in 5
        d = earlier.decide(y, ["load"], 2, 0.0)
        earlier.observe({"load": 5.0 if violated else 0.5}, d.replicas)
    saved = earlier.state_dict()
    async with aiohttp.ClientSession() as http, KubeClient() as kube:
        rec = Reconciler(
            kube,
            PrometheusClient(prometheus.url, http),
            ModelCache(policy=TMP_POLICY),
            BatchSampler(100),
            OperatorMetrics(),
            ReconcilerSettings(stale_min_s=1800),
        )
        out = await rec.reconcile("shop", "web", spec, {"state": saved}, 1)
    cal = out.status["calibration"]
    expected = earlier.tracker.summary()
    learnt = earlier.tracker.n_updates
    assert learnt >= 4
    assert cal["alpha"] == pytest.approx(expected["alpha"], abs=1e-6)
    assert cal["beta"] == pytest.approx(expected["beta"], abs=1e-6)
    assert cal["workingQuantile"] == pytest.approx(expected["working_quantile"], abs=1e-6)
    assert cal["workingQuantile"] > 1 - 0.05  # three violations in five raised it above the target's p95
    assert out.status["state"]["tracker"]["n_updates"] == learnt


# --- the command line ------------------------------------------------------------------------------------------


def test_command_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from harmony_operator.__main__ import parse_args

    monkeypatch.delenv("HARMONY_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = parse_args(
        ["--prometheus-url", "http://prom:9090", "-n", "a", "-n", "b", "--lease-namespace", "ops"]
    )
    assert (args.namespace, args.lease_namespace, args.metrics_port, args.health_port) == (
        ["a", "b"],
        "ops",
        9090,
        8080,
    )
    assert (args.shards, args.shard) == (1, 0)
    monkeypatch.setenv("HARMONY_SHARDS", "3")
    monkeypatch.setenv("HARMONY_SHARD", "2")
    args = parse_args(["--prometheus-url", "http://prom:9090", "--lease-namespace", "ops"])
    assert (args.shards, args.shard) == (3, 2)
    monkeypatch.delenv("HARMONY_SHARDS")
    monkeypatch.delenv("HARMONY_SHARD")
    for argv, message in (
        ([], "--prometheus-url"),
        (["--prometheus-url", "http://p"], "--lease-namespace"),
        (["--prometheus-url", "http://p", "--no-leader-election", "--num-samples", "5"], "--num-samples"),
        (["--prometheus-url", "http://p", "-A", "-n", "x", "--no-leader-election"], "not allowed with"),
        (
            ["--prometheus-url", "http://p", "--lease-namespace", "o", "--shards", "2", "--shard", "2"],
            "--shard 2",
        ),
        (["--prometheus-url", "http://p", "--no-leader-election", "--shards", "2"], "needs leader election"),
        (["--prometheus-url", "http://p", "--lease-namespace", "o", "--shards", "two"], "invalid int value"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
