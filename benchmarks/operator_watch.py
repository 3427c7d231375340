"""What one operator pod pays for every HarmonyAutoscaler in the cluster, whether its shard owns it or not.

    python -m benchmarks.operator_watch [--resources 0,5000]

Every pod watches every resource and kopf keeps one daemon per resource; a daemon whose resource belongs to
another shard waits without querying or writing (harmony_operator.sharding). This runs the real operator
(`python -m harmony_operator --shards 2 --shard 0`, kopf and all) against an HTTP Kubernetes API on loopback
that lists N HarmonyAutoscalers and shows the pod's shard Lease held by another pod that keeps renewing it, so
the pod owns nothing and every daemon stays idle. It waits until the pod's own /metrics report N daemons
(`harmony_operator_resources`), lets it settle for 10 s, then reads its resident memory and its CPU time
over the next 10 s. The first count
is the baseline: the difference per resource is the idle cost, which the sharded figures of
`benchmarks.operator_scale --shards` (the cost of the resources a shard owns) leave out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

GROUP, VERSION, PLURAL = "harmony.dev", "v1alpha1", "harmonyautoscalers"
SETTLE_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for a plain-HTTP test API server at `server`, with a token the server ignores."""
    path.write_text(
        f"apiVersion: v1\nkind: Config\nclusters: [{{name: b, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: b, user: {token: t}}]\n"
        "contexts: [{name: b, context: {cluster: b, user: b}}]\ncurrent-context: b\n"
    )
    return path


def _autoscaler(k: int) -> dict[str, Any]:
    name = f"svc-{k:05d}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HarmonyAutoscaler",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"harmony-watch/{name}")),
            "resourceVersion": "1",
            "generation": 1,
        },
        "spec": {
            "scaleTargetRef": {"name": name},
            "maxReplicas": 100,
            "interval": "60s",
            "model": {"uri": "/models/never-loaded"},
            "indicators": [{"name": "load", "query": f'load{{svc="{name}"}}', "capacityPerReplica": 1.0}],
        },
    }


async def start_api(objects: dict[str, dict[str, Any]]) -> tuple[Any, str]:
    """Discovery, list and watch of HarmonyAutoscalers, patches of them, a Lease another pod renews."""
    from aiohttp import web

    def resources(group_version: str, items: list[tuple[str, str, bool]]) -> dict[str, Any]:
        return {
            "kind": "APIResourceList",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": n,
                    "singularName": "" if "/" in n else k.lower(),
                    "kind": k,
                    "namespaced": namespaced,
                    "verbs": ["get", "list", "watch", "patch"],
                }
                for n, k, namespaced in items
            ],
        }

    def lease(name: str) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "ops", "resourceVersion": str(time.time_ns())},
            # renewTime changes at every read: the other pod renews all the time, this one never takes over.
            "spec": {"holderIdentity": "another-pod", "leaseDurationSeconds": 15, "renewTime": now},
        }

    async def api(_: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def core(_: web.Request) -> web.Response:
        return web.json_response(
            resources("v1", [("events", "Event", True), ("namespaces", "Namespace", False)])
        )

    async def apis(_: web.Request) -> web.Response:
        groups = []
        # kopf's own backbone: it waits for the CRD resource to exist before it starts its watchers.
        for g, v in ((GROUP, VERSION), ("coordination.k8s.io", "v1"), ("apiextensions.k8s.io", "v1")):
            gv = {"groupVersion": f"{g}/{v}", "version": v}
            groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
        return web.json_response({"kind": "APIGroupList", "groups": groups})

    async def group(_: web.Request) -> web.Response:
        return web.json_response(
            resources(
                f"{GROUP}/{VERSION}",
                [(PLURAL, "HarmonyAutoscaler", True), (f"{PLURAL}/status", "HarmonyAutoscaler", True)],
            )
        )

    async def coordination(_: web.Request) -> web.Response:
        return web.json_response(resources("coordination.k8s.io/v1", [("leases", "Lease", True)]))

    async def extensions(_: web.Request) -> web.Response:
        crds = [("customresourcedefinitions", "CustomResourceDefinition", False)]
        return web.json_response(resources("apiextensions.k8s.io/v1", crds))

    watchers: list[asyncio.Queue[dict[str, Any]]] = []
    version = [1]

    async def listing(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            # kopf acts on an object's first appearance once it has seen its own finalizer patch come back
            # as a watch event: every patch is streamed to the open watches.
            response = web.StreamResponse()
            await response.prepare(request)
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            watchers.append(queue)
            deadline = time.monotonic() + float(request.query.get("timeoutSeconds", "600"))
            try:
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=left)
                    except TimeoutError:
                        break
                    await response.write(json.dumps(event).encode() + b"\n")
            except ConnectionResetError:
                pass  # the operator closed its watch (it stops, or restarts the watch)
            finally:
                watchers.remove(queue)
            return response
        return web.json_response(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "HarmonyAutoscalerList",
                "metadata": {"resourceVersion": str(version[0])},
                "items": list(objects.values()),
            }
        )

    async def patch(request: web.Request) -> web.Response:
        obj = objects[request.match_info["name"]]
        before = json.dumps(obj, sort_keys=True)
        body = await request.json()
        if isinstance(body, dict):
            for key, value in (body.get("metadata") or {}).items():
                if isinstance(value, dict):
                    obj["metadata"].setdefault(key, {}).update(value)
                else:
                    obj["metadata"][key] = value
        if json.dumps(obj, sort_keys=True) != before:  # as the API server: no change, no new version or event
            version[0] += 1
            obj["metadata"]["resourceVersion"] = str(version[0])
            for queue in watchers:
                queue.put_nowait({"type": "MODIFIED", "object": obj})
        return web.json_response(obj)

    async def get_lease(request: web.Request) -> web.Response:
        return web.json_response(lease(request.match_info["name"]))

    async def list_leases(_: web.Request) -> web.Response:
        return web.json_response({"kind": "LeaseList", "metadata": {"resourceVersion": "1"}, "items": []})

    async def refused(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 409, "message": "held"}, status=409)

    app = web.Application()
    app.router.add_get("/api", api)
    app.router.add_get("/api/v1", core)
    app.router.add_get("/apis", apis)
    app.router.add_get(f"/apis/{GROUP}/{VERSION}", group)
    app.router.add_get("/apis/coordination.k8s.io/v1", coordination)
    app.router.add_get("/apis/apiextensions.k8s.io/v1", extensions)
    app.router.add_get(f"/apis/{GROUP}/{VERSION}/{PLURAL}", listing)
    app.router.add_patch(f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}/{{name}}", patch)
    app.router.add_get("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", get_lease)
    app.router.add_get("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", list_leases)
    app.router.add_post("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", refused)
    app.router.add_patch("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", refused)
    # Open watches end at once on clean-up (not after aiohttp's default 60 s of grace).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _daemons(metrics_url: str) -> float:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return -1.0
    for line in text.splitlines():
        if line.startswith("harmony_operator_resources "):
            return float(line.split()[1])
    return -1.0


async def measure(n: int, tmp: Path) -> dict[str, float]:
    objects = {o["metadata"]["name"]: o for o in (_autoscaler(k) for k in range(n))}
    runner, url = await start_api(objects)
    config = write_kubeconfig(tmp / f"kubeconfig-{n}", url)
    metrics_port = _free_port()
    log = tmp / f"operator-{n}.log"
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harmony_operator",
        "-A",
        "--prometheus-url=http://127.0.0.1:1",
        "--lease-namespace=ops",
        "--shards=2",
        "--shard=0",
        f"--metrics-port={metrics_port}",
        "--health-port=0",
        "--bind-address=127.0.0.1",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    start = time.perf_counter()
    try:
        while await _daemons(f"http://127.0.0.1:{metrics_port}/metrics") != n:
            if proc.returncode is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the operator exited ({proc.returncode}):\n{tail}")
            if time.perf_counter() - start > 600:
                raise SystemExit(f"{n} daemons did not start within 10 minutes")
            await asyncio.sleep(0.5)
        ready = time.perf_counter() - start
        await asyncio.sleep(SETTLE_S)  # kopf's own start-up work (finalizers, first handler calls) first
        cpu0 = _cpu_s(proc.pid)
        await asyncio.sleep(SETTLE_S)
        if proc.returncode is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the operator exited ({proc.returncode}):\n{tail}")
        return {
            "resources": n,
            "ready_s": ready,
            "rss_gib": _rss_gib(proc.pid),
            "idle_cpu": (_cpu_s(proc.pid) - cpu0) / SETTLE_S,
        }
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await runner.cleanup()


async def run(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as d:
        rows = [await measure(n, Path(d)) for n in counts]
    print(f"\none operator pod owning none of the resources ({os.cpu_count()} cores)")
    print(f"{'resources':>9} {'daemons up s':>12} {'RSS GiB':>8} {'idle CPU cores':>14}")
    for r in rows:
        print(f"{r['resources']:>9} {r['ready_s']:>12.1f} {r['rss_gib']:>8.3f} {r['idle_cpu']:>14.3f}")
    base = rows[0]
    for r in rows[1:]:
        per = (r["rss_gib"] - base["rss_gib"]) * 2**20 / max(1, r["resources"] - base["resources"])
        print(f"idle cost per resource ({base['resources']} -> {r['resources']}): {per:.1f} KiB")
    print(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resources", default="0,5000", help="comma-separated counts; the first is the baseline")
    args = p.parse_args()
    try:
        counts = [int(c) for c in args.resources.split(",")]
    except ValueError:
        p.error(f"--resources: expected comma-separated integers, got {args.resources!r}")
    asyncio.run(run(counts))


if __name__ == "__main__":
    main()
