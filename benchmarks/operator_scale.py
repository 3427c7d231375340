"""How many HarmonyAutoscalers one operator process keeps at their interval: latency, throughput, memory.

    python -m benchmarks.operator_scale [--resources 500] [--model harmony|seasonal_naive] [--spread 60]
    python -m benchmarks.operator_scale --resources 5000 --shards 1,2,4     (split over shard processes)

Real components: a Prometheus server (Debian package) backfilled with the Fisher trace's ten containers
(load and CPU, re-timed to end now), an HTTP server answering the Kubernetes API calls of the loop (/scale
and /status; one Deployment per resource), and the
operator's own `Reconciler` with its batched sampler, i.e. everything a kopf daemon runs per interval
(Prometheus query_range for each indicator, the forecast, harmony.decision, GET /scale, PATCH /scale when the
decision changes, PATCH /status). kopf's watch stream is not in the loop: it costs nothing per interval.

Rounds, each over all resources:
  burst    every resource reconciles at the same instant (the worst case: all daemons aligned)
  spread   arrivals spread evenly over --spread seconds (what daemons started at different times do)
The burst round is also run with batching off (one forecaster call per resource) as the in-process
baseline. Targets (docs/operator.md): 500 resources within a 60 s interval on 2 cores, p99 decision latency
under 50 ms per resource, resident memory under 1 GiB.

With --shards, each count in the list is run in turn against the same Prometheus and API server: the
resources are split by harmony_operator.sharding.shard_of (a hash of each resource's uid, as the operator
splits them), one process per shard, all shards at once on the same machine, each running a spread round
and then a burst round over its own resources. Printed per shard: resources, loop (round) time, p50/p99 per
resource, CPU seconds per decision and peak resident memory; the first count in the list is the baseline
the others are compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.operator_watch import write_kubeconfig

STEP_S = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prometheus(
    root: Path, frames: dict[str, np.ndarray], now: float
) -> tuple[subprocess.Popen[bytes], str]:
    """Backfill `frames` (container -> [T, 2] load, cpu) ending a few steps after `now` and serve them."""
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and promtool):
        raise SystemExit("needs the Debian package `prometheus` (apt-get install prometheus)")
    last = math.floor(now / STEP_S) * STEP_S + 6 * STEP_S
    lines = []
    for k, metric in enumerate(("fisher_load", "fisher_cpu_cores")):
        lines.append(f"# TYPE {metric} gauge")
        for container, values in frames.items():
            times = last - STEP_S * np.arange(len(values))[::-1]
            lines += [
                f'{metric}{{container="{container}"}} {float(v)!r} {int(t)}'
                for v, t in zip(values[:, k], times, strict=True)
                if np.isfinite(v)
            ]
    lines.append("# EOF")
    (root / "data.om").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(root / "data.om"), str(root / "tsdb")],
        check=True,
        capture_output=True,
    )
    (root / "prometheus.yml").write_text("global: {}\nscrape_configs: []\n")
    port = _free_port()
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=3650d",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import requests

    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("prometheus did not start")


async def start_kubernetes_api() -> tuple[Any, str, dict[str, int]]:
    """The three Kubernetes API endpoints the loop calls, over real HTTP on loopback: GET and PATCH of a
    Deployment's /scale, PATCH of a resource's /status. (kmock's emulator, used by the tests, matches each
    request against every request it has served, which at this volume would measure kmock.)"""
    from aiohttp import web

    replicas: dict[str, int] = {}
    statuses: dict[str, Any] = {}

    async def get_scale(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in replicas:
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        n = replicas[name]
        return web.json_response(
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {"name": name},
                "spec": {"replicas": n},
                "status": {"replicas": n},
            }
        )

    async def patch_scale(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        replicas[name] = int((await request.json())["spec"]["replicas"])
        return await get_scale(request)

    async def patch_status(request: web.Request) -> web.Response:
        statuses[request.match_info["name"]] = (await request.json())["status"]
        return web.json_response({"status": statuses[request.match_info["name"]]})

    app = web.Application()
    base = "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"
    app.router.add_get(base, get_scale)
    app.router.add_patch(base, patch_scale)
    app.router.add_patch(
        "/apis/harmony.dev/v1alpha1/namespaces/{ns}/harmonyautoscalers/{name}/status", patch_status
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", replicas


def build_model(kind: str, out: Path) -> Path:
    import harmony.model.registry  # noqa: F401
    from harmony.data.windows import chronological_split
    from harmony.model.base import Forecaster, ForecastSpec
    from harmony.training.config import load_config
    from harmony.training.train import build_forecaster, load_data

    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs/fisher_containers.yaml",
        [
            "trainer.progress=false",
            "trainer.max_epochs=1",
            "model.targets=[load]",
            "model.hparams.max_train_windows=256",
            "model.hparams.max_val_windows=64",
        ],
    )
    _, trace, split, spec = load_data(cfg)
    spec = ForecastSpec.for_trace(
        trace,
        lookback=cfg.model.lookback,
        horizon=cfg.model.horizon,
        lead_time=0,
        targets=["load"],
        indicators=["load", "cpu_cores"],
    )
    if kind == "seasonal_naive":
        model = Forecaster.registered()["seasonal_naive"](spec)
    else:
        # One short epoch: the weights barely learn, but a forward pass costs what a trained one does.
        model = build_forecaster(cfg, spec)
    model.fit(trace, chronological_split(trace, (0.7, 0.1, 0.2)) if kind == "seasonal_naive" else split)
    model.save(out)
    return out


def resource_specs(n: int, containers: list[str], model_path: Path) -> dict[str, dict[str, Any]]:
    """n HarmonyAutoscaler specs, each on one Fisher container's load (and CPU, which the model reads)."""
    specs = {}
    for i in range(n):
        c = containers[i % len(containers)]
        specs[f"svc-{i:04d}"] = {
            "scaleTargetRef": {"name": f"svc-{i:04d}"},
            "maxReplicas": 100,
            "interval": "60s",
            "slo": {"maxViolationProbability": 0.01},
            "model": {"uri": str(model_path)},
            "behavior": {"scaleDownStabilization": "0s"},
            "indicators": [
                {"name": "load", "query": f'fisher_load{{container="{c}"}}', "capacityPerReplica": 1.0},
                {"name": "cpu_cores", "query": f'fisher_cpu_cores{{container="{c}"}}', "level": 2},
            ],
        }
    return specs


@dataclass
class Fixture:
    """What every round runs against: the trace's frames, the model, Prometheus, the API server."""

    tmp: Path
    frames: dict[str, np.ndarray]
    model_path: Path
    specs: dict[str, dict[str, Any]]
    prometheus: subprocess.Popen[bytes]
    prometheus_url: str
    api: Any
    kubeconfig: Path


async def start_fixture(args: argparse.Namespace) -> Fixture:
    from harmony.data.catalog import load

    tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    trace = load("fisher_containers")
    frames = {sid: trace[sid][["load", "cpu_cores"]].to_numpy()[-600:] for sid in trace.series_ids}
    t0 = time.perf_counter()
    model_path = build_model(args.model, tmp / "model")
    print(f"model {args.model}: ready in {time.perf_counter() - t0:.0f} s")
    specs = resource_specs(args.resources, list(frames), model_path)
    proc, prom_url = start_prometheus(tmp, frames, time.time())
    runner, k8s_url, replicas = await start_kubernetes_api()
    replicas.update(dict.fromkeys(specs, 1))
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", k8s_url)
    return Fixture(tmp, frames, model_path, specs, proc, prom_url, runner, kubeconfig)


async def one_round(
    kube: Any,
    prom: Any,
    models: Any,
    specs: dict[str, dict[str, Any]],
    *,
    samples: int,
    batch: int,
    spread_s: float,
) -> tuple[float, float, float, int, int]:
    """Reconcile and write the status of every resource once.

    Returns wall s, p50 ms, p99 ms, model calls, fallbacks.
    """
    from harmony_operator.batching import BatchSampler
    from harmony_operator.metrics import OperatorMetrics
    from harmony_operator.reconcile import Outcome, Reconciler, ReconcilerSettings

    sampler = BatchSampler(samples, max_batch=batch, window_s=0.005 if batch > 1 else 0.0)
    rec = Reconciler(
        kube,
        prom,
        models,
        sampler,
        OperatorMetrics(),
        ReconcilerSettings(stale_min_s=1800),
    )
    latencies: list[float] = []

    async def one(name: str, delay: float) -> Outcome:
        await asyncio.sleep(delay)
        t = time.perf_counter()
        out = await rec.reconcile("bench", name, specs[name], {}, 1)
        await kube.patch_status("harmony.dev", "v1alpha1", "harmonyautoscalers", "bench", name, out.status)
        latencies.append(time.perf_counter() - t)
        return out

    start = time.perf_counter()
    outs = await asyncio.gather(*(one(n, spread_s * i / len(specs)) for i, n in enumerate(specs)))
    wall = time.perf_counter() - start
    sampler.close()
    fallbacks = sum(o.decision is not None and o.decision.fallback for o in outs)
    lat = np.array(latencies) * 1000
    return wall, float(np.median(lat)), float(np.quantile(lat, 0.99)), sampler.batches, fallbacks


async def run(args: argparse.Namespace) -> None:
    import aiohttp
    from harmony_operator.kube import KubeClient
    from harmony_operator.models import ModelCache, ModelPolicy
    from harmony_operator.prometheus import PrometheusClient

    torch.set_num_threads(args.threads)
    fx = await start_fixture(args)
    tmp, proc, prom_url, runner = fx.tmp, fx.prometheus, fx.prometheus_url, fx.api
    specs = fx.specs
    os.environ["KUBECONFIG"] = str(fx.kubeconfig)
    rows = []
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http,
            KubeClient() as kube,
        ):
            prom = PrometheusClient(prom_url, http, timeout_s=30)
            # The benchmark's model is saved in its temporary directory: allow it (the default is /models/).
            models = ModelCache(tmp / "cache", policy=ModelPolicy((f"{tmp}/",)))
            for label, batch, spread in (
                ("burst, unbatched", 1, 0.0),
                ("burst", 512, 0.0),
                ("spread", 512, args.spread),
                ("burst", 512, 0.0),
            ):
                result = await one_round(
                    kube, prom, models, specs, samples=args.samples, batch=batch, spread_s=spread
                )
                rows.append((label, *result))
    finally:
        await runner.cleanup()
        proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\n{args.resources} resources, model {args.model}, {args.samples} draws, "
        f"{args.threads} torch thread(s), {os.cpu_count()} cores"
    )
    print(f"{'round':<18} {'wall s':>8} {'p50 ms':>8} {'p99 ms':>8} {'model calls':>12} {'fallbacks':>10}")
    for label, wall, p50, p99, calls, fb in rows:
        print(f"{label:<18} {wall:>8.2f} {p50:>8.1f} {p99:>8.1f} {calls:>12} {fb:>10}")
    print(
        f"\nbatched burst vs unbatched burst: {rows[0][1] / rows[3][1]:.1f}x faster; "
        f"peak resident memory {rss_gib:.2f} GiB (process, Prometheus excluded)"
    )
    print("targets: a round within the 60 s interval; spread p99 < 50 ms; memory < 1 GiB")


def resource_uid(name: str) -> str:
    """A stable stand-in for the API server's uid of the benchmark's resource `name`."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"harmony-bench/{name}"))


def _cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def shard_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One shard's process: its resources' rounds, against the parent's Prometheus and API server."""
    import aiohttp
    from harmony_operator.kube import KubeClient
    from harmony_operator.models import ModelCache, ModelPolicy
    from harmony_operator.prometheus import PrometheusClient
    from harmony_operator.sharding import shard_of

    torch.set_num_threads(job["threads"])
    tmp = Path(job["tmp"])
    model_path = Path(job["model"])
    all_specs = resource_specs(job["resources"], job["containers"], model_path)
    specs = {n: sp for n, sp in all_specs.items() if shard_of(resource_uid(n), job["shards"]) == job["shard"]}
    os.environ["KUBECONFIG"] = job["kubeconfig"]
    rows = []
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http,
        KubeClient() as kube,
    ):
        prom = PrometheusClient(job["prometheus"], http, timeout_s=60)
        models = ModelCache(tmp / f"cache-{job['shards']}-{job['shard']}", policy=ModelPolicy((f"{tmp}/",)))
        await models.get(str(model_path))  # loaded before the clock starts, as a running operator has it
        for label, spread in (("spread", job["spread"]), ("burst", 0.0)):
            cpu = _cpu_s()
            result = await one_round(
                kube, prom, models, specs, samples=job["samples"], batch=512, spread_s=spread
            )
            rows.append([label, *result, (_cpu_s() - cpu) / max(1, len(specs))])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"shard": job["shard"], "resources": len(specs), "rows": rows, "rss_gib": rss}


async def run_sharded(args: argparse.Namespace, counts: list[int]) -> None:
    fx = await start_fixture(args)
    tmp, proc, prom_url, runner, frames = fx.tmp, fx.prometheus, fx.prometheus_url, fx.api, fx.frames
    model_path = fx.model_path
    results: dict[int, list[dict[str, Any]]] = {}
    walls: dict[int, float] = {}
    try:
        for count in counts:
            jobs = [
                {
                    "shard": j,
                    "shards": count,
                    "resources": args.resources,
                    "containers": list(frames),
                    "model": str(model_path),
                    "tmp": str(tmp),
                    "kubeconfig": str(fx.kubeconfig),
                    "prometheus": prom_url,
                    "samples": args.samples,
                    "spread": args.spread,
                    "threads": args.threads,
                }
                for j in range(count)
            ]
            start = time.perf_counter()
            # The API server lives in this process's loop: the shards are awaited, never waited for.
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.operator_scale",
                    "--shard-job",
                    json.dumps(job),
                    stdout=asyncio.subprocess.PIPE,
                )
                for job in jobs
            ]
            outs = await asyncio.gather(*(w.communicate() for w in workers))
            walls[count] = time.perf_counter() - start
            for w in workers:
                if w.returncode != 0:
                    raise SystemExit(f"a shard process failed (exit {w.returncode})")
            results[count] = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]
    finally:
        await runner.cleanup()
        proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{args.resources} resources, model {args.model}, {args.samples} draws, "
        f"{args.threads} torch thread(s) per shard, {os.cpu_count()} cores shared by all shards"
    )
    header = (
        f"{'shards':>6} {'shard':>5} {'resources':>9} {'round':<7} {'loop s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'CPU ms/decision':>15} {'fallbacks':>9} {'RSS GiB':>8}"
    )
    print(header)
    for count, shards in results.items():
        for r in shards:
            for label, wall, p50, p99, _calls, fb, cpu in r["rows"]:
                print(
                    f"{count:>6} {r['shard']:>5} {r['resources']:>9} {label:<7} {wall:>7.1f} {p50:>8.1f} "
                    f"{p99:>8.1f} {cpu * 1000:>15.2f} {fb:>9} {r['rss_gib']:>8.2f}"
                )
    base = counts[0]

    def worst(count: int, label: str, k: int) -> float:
        return max(row[k] for r in results[count] for row in r["rows"] if row[0] == label)

    print(f"\nper count (worst shard), against {base} shard(s) in this same command:")
    print(
        f"{'shards':>6} {'burst loop s':>12} {'ratio':>6} {'spread p99 ms':>13} "
        f"{'max RSS GiB':>11} {'total s':>8}"
    )
    for count in counts:
        burst = worst(count, "burst", 1)
        rss = max(r["rss_gib"] for r in results[count])
        print(
            f"{count:>6} {burst:>12.1f} {burst / worst(base, 'burst', 1):>6.2f} "
            f"{worst(count, 'spread', 3):>13.1f} {rss:>11.2f} {walls[count]:>8.0f}"
        )


def main() -> None:
    from harmony.output import quiet_third_party

    quiet_third_party()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resources", type=int, default=500)
    p.add_argument("--model", choices=("harmony", "seasonal_naive"), default="harmony")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which the spread round arrives")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--shards", default="", help="comma-separated shard counts, e.g. 1,2,4: one process per shard"
    )
    p.add_argument("--shard-job", help=argparse.SUPPRESS)  # internal: one shard's process
    args = p.parse_args()
    if args.shard_job:
        print(json.dumps(asyncio.run(shard_worker(json.loads(args.shard_job)))))
    elif args.shards:
        try:
            counts = [int(c) for c in args.shards.split(",")]
        except ValueError:
            p.error(f"--shards: expected comma-separated integers, got {args.shards!r}")
        if any(c < 1 for c in counts):
            p.error("--shards: every count must be at least 1")
        asyncio.run(run_sharded(args, counts))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
