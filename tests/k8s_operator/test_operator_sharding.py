"""Shards (harmony_operator.sharding) against kmock's HTTPS Kubernetes API.

The protocol tests drive `ShardLeases` round by round on a shared fake monotonic clock and check, after every
single round of every instance, that no resource is owned by two instances; the process test runs two real
operator processes (`python -m harmony_operator --shards 2`) against the emulator and a real Prometheus, kills
one with SIGKILL and checks from the request log that every resource was written by exactly one process at a
time and that the killed shard's resources were taken over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from random import Random

import kmock
import pytest
from harmony_operator.kube import KubeClient
from harmony_operator.sharding import (
    CLAIM_ANNOTATION,
    GROUP_LABEL,
    HOLDER_SHARD_ANNOTATION,
    SHARD_LABEL,
    SHARDS_LABEL,
    ShardLeases,
    lease_name,
    shard_of,
)
from operator_harness import (  # type: ignore[import-not-found]
    Cluster,
    PrometheusServer,
    add_autoscaler,
    add_deployment,
    autoscaler_spec,
    wait_for,
)

LEASES = "coordination.k8s.io/v1/leases"
UIDS = [str(uuid.UUID(int=Random(k).getrandbits(128))) for k in range(60)]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_shard_of_is_a_stable_hash() -> None:
    # SHA-256("a") begins ca978112ca1bbdca (the FIPS 180-2 test vector's well-known digest).
    for n in (1, 2, 3, 4, 7, 1000):
        assert shard_of("a", n) == 0xCA978112CA1BBDCA % n
    assert lease_name("hz", 0, 1) == "hz"  # one shard keeps the unsharded name
    assert lease_name("hz", 2, 3) == "hz-2-of-3"
    # Balanced: 6,000 random uids over 3 shards land within 5% of a third each.
    uids = [str(uuid.UUID(int=Random(1).getrandbits(128) ^ k)) for k in range(6000)]
    counts = [sum(shard_of(u, 3) == j for u in uids) for j in range(3)]
    assert all(abs(c - 2000) < 100 for c in counts), counts
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("a", 0)


def owners(instances: Iterable[ShardLeases], uid: str) -> list[str]:
    return [s.identity for s in instances if s.owns(uid)]


async def rounds(live: list[ShardLeases], everyone: list[ShardLeases], clock: Clock, seconds: float) -> None:
    """Advance the clock a retry period at a time; every live instance does its round; after each single
    round no resource may have two owners (the killed instances still answer `owns` from their own state)."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t += 2.0
        for s in live:
            await s.round()
            for uid in UIDS:
                assert len(owners(everyone, uid)) <= 1, (uid, owners(everyone, uid))


def leases(cluster: Cluster, ns: str = "ops") -> dict[str, dict]:  # type: ignore[type-arg]
    return {name: obj for (res, n, name), obj in cluster.objects.items() if res == LEASES and n == ns}


async def test_two_shards_split_take_over_and_hand_back(cluster: Cluster) -> None:
    clock = Clock(1000.0)
    async with KubeClient() as kube:

        def shard(identity: str, home: int) -> ShardLeases:
            return ShardLeases(kube, "ops", "hz", identity, shards=2, home=home, clock=clock)

        a, b = shard("a", 0), shard("b", 1)
        everyone = [a, b]
        await rounds([a, b], everyone, clock, 4)
        assert (a.acting, b.acting) == ({0}, {1})
        for uid in UIDS:  # every resource has exactly the owner its hash names
            assert owners(everyone, uid) == [("a", "b")[shard_of(uid, 2)]]
        stored = leases(cluster)
        assert set(stored) == {"hz-0-of-2", "hz-1-of-2"}
        meta = stored["hz-1-of-2"]["metadata"]
        assert meta["labels"] == {GROUP_LABEL: "hz", SHARDS_LABEL: "2", SHARD_LABEL: "1"}
        assert meta["annotations"][HOLDER_SHARD_ANNOTATION] == "1"

        # a is killed (no more rounds, no release). It stops acting 10 s after its last renewal; b takes
        # shard 0 over once the lease has been expired for another lease duration (room for a's standby).
        await rounds([b], everyone, clock, 28)
        assert b.acting == {1}
        assert not a.acting
        await rounds([b], everyone, clock, 4)
        assert b.acting == {0, 1}
        assert all(owners(everyone, uid) == ["b"] for uid in UIDS)
        assert leases(cluster)["hz-0-of-2"]["spec"]["holderIdentity"] == "b"
        assert leases(cluster)["hz-0-of-2"]["metadata"]["annotations"][HOLDER_SHARD_ANNOTATION] == "1"

        # Shard 0 comes back (a new pod): it claims its lease, b hands it back, the split is restored.
        c = shard("c", 0)
        everyone.append(c)
        await rounds([c, b], everyone, clock, 2)
        assert leases(cluster)["hz-0-of-2"]["metadata"]["annotations"][CLAIM_ANNOTATION] == "c"
        await rounds([c, b], everyone, clock, 6)
        assert (c.acting, b.acting) == ({0}, {1})
        assert CLAIM_ANNOTATION not in leases(cluster)["hz-0-of-2"]["metadata"]["annotations"]
        for uid in UIDS:
            assert owners(everyone, uid) == [("c", "b")[shard_of(uid, 2)]]

        # A clean shutdown releases at once: b takes shard 1 over... from a standby of shard 1 first.
        d = shard("d", 1)
        everyone.append(d)
        await rounds([c, b, d], everyone, clock, 4)
        assert not d.acting  # a standby while b leads
        await b.release()
        await rounds([c, d], everyone, clock, 2)
        assert (c.acting, d.acting) == ({0}, {1})


async def test_a_shards_own_standby_takes_over_before_another_shard(cluster: Cluster) -> None:
    clock = Clock(50.0)
    async with KubeClient() as kube:
        a = ShardLeases(kube, "ops", "hz", "a", shards=2, home=0, clock=clock)
        a2 = ShardLeases(kube, "ops", "hz", "a2", shards=2, home=0, clock=clock)
        b = ShardLeases(kube, "ops", "hz", "b", shards=2, home=1, clock=clock)
        everyone = [a, a2, b]
        await rounds([a, a2, b], everyone, clock, 4)
        assert (a.acting, a2.acting, b.acting) == ({0}, set(), {1})
        await rounds([a2, b], everyone, clock, 20)  # a killed: its standby wins at the lease's expiry
        assert (a2.acting, b.acting) == ({0}, {1})
        await rounds([a2, b], everyone, clock, 40)
        assert (a2.acting, b.acting) == ({0}, {1})
        assert leases(cluster)["hz-0-of-2"]["spec"]["leaseTransitions"] == 1


async def test_changing_the_shard_count_never_gives_a_resource_two_owners(cluster: Cluster) -> None:
    clock = Clock(7.0)
    async with KubeClient() as kube:
        old = ShardLeases(kube, "ops", "hz", "old", shards=1, clock=clock)
        await rounds([old], [old], clock, 2)
        assert all(old.owns(uid) for uid in UIDS)
        assert "hz" in leases(cluster)  # the unsharded name: an upgrade from an unsharded release
        # A rollout to three shards starts: the new instances hold their leases but act on nothing the
        # live count-1 lease covers (all of it); the old one, seeing live count-3 leases, holds back too.
        new = [ShardLeases(kube, "ops", "hz", f"n{j}", shards=3, home=j, clock=clock) for j in range(3)]
        everyone = [old, *new]
        await rounds([old, *new], everyone, clock, 10)
        assert [n.acting for n in new] == [{0}, {1}, {2}]
        assert all(owners(everyone, uid) == [] for uid in UIDS)
        # The old pod stops (a clean shutdown releases its lease): the new count acts, each on its third.
        await old.release()
        await rounds(new, everyone, clock, 2)
        for uid in UIDS:
            assert owners(everyone, uid) == [f"n{shard_of(uid, 3)}"]

        # Back to two shards, and this time the old instances are killed without releasing: the new ones
        # wait until the old leases expire on their own clocks, and never overlap meanwhile.
        two = [ShardLeases(kube, "ops", "hz", f"t{j}", shards=2, home=j, clock=clock) for j in range(2)]
        everyone += two
        await rounds([*new, *two], everyone, clock, 6)
        assert all(owners(everyone, uid) == [] for uid in UIDS)
        await rounds(two, everyone, clock, 14)  # the count-3 leases have not expired yet (15 s)
        assert all(owners(everyone, uid) == [] for uid in UIDS)
        await rounds(two, everyone, clock, 4)
        for uid in UIDS:
            assert owners(everyone, uid) == [f"t{shard_of(uid, 2)}"]


def test_shard_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="shard 2 of 2"):
        ShardLeases(KubeClient(), "ops", "hz", "x", shards=2, home=2)


# --- two real operator processes -------------------------------------------------------------------------


def _operator(shard: int, prometheus_url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harmony_operator",
            "-A",
            f"--prometheus-url={prometheus_url}",
            "--lease-namespace=harmony-system",
            "--lease-name=hz",
            "--shards=2",
            f"--shard={shard}",
            "--lease-duration=3",
            "--renew-deadline=2",
            "--retry-period=0.5",
            "--metrics-port=0",
            "--health-port=0",
            "--num-samples=50",
            "--min-staleness=900",
            f"--model-uri-prefix={tempfile.gettempdir()}/",
        ],
        env={**env, "HOSTNAME": f"shard{shard}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _status_writes(cluster: Cluster) -> list[tuple[float, str, str]]:
    """(time order, writer's home, resource) of every status write, from the request log."""
    out = []
    for k, r in enumerate(cluster):
        if r.method == kmock.method.PATCH and r.url.path.endswith("/status"):
            agent = str(r.headers.get("User-Agent", "")).rsplit("/", 1)[-1]
            out.append((float(k), agent.split("_")[0], r.url.path.split("/")[-2]))
    return out


async def test_two_operator_processes_split_the_resources_and_take_over_a_killed_one(
    cluster: Cluster, prometheus: PrometheusServer, model_dir: Path
) -> None:
    names = [f"web{k}" for k in range(8)]
    for name in names:
        add_deployment(cluster, "shop", name, replicas=1)
        spec = autoscaler_spec(model={"uri": str(model_dir)})
        spec["scaleTargetRef"]["name"] = name
        add_autoscaler(cluster, "shop", name, spec)
    home = {
        name: shard_of(
            cluster.objects["harmony.dev/v1alpha1/harmonyautoscalers", "shop", name]["metadata"]["uid"], 2
        )
        for name in names
    }
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    procs = [_operator(j, prometheus.url, env) for j in range(2)]
    try:

        def written_by(expected: dict[str, set[str]]) -> bool:
            seen: dict[str, set[str]] = {n: set() for n in names}
            for _, who, name in _status_writes(cluster):
                seen[name].add(who)
            return all(expected[n] <= seen[n] for n in names)

        await wait_for(lambda: written_by({n: {f"shard{home[n]}"} for n in names}), timeout=90)
        # Both up: every resource written, each by its own shard's process only.
        for _, who, name in _status_writes(cluster):
            assert who == f"shard{home[name]}", (who, name)
        killed_at = len(list(cluster))
        procs[0].send_signal(signal.SIGKILL)
        await wait_for(lambda: procs[0].poll() is not None)
        t0 = time.monotonic()
        await wait_for(lambda: written_by({n: {"shard1"} for n in names}), timeout=60)
        took = time.monotonic() - t0
        # Taken over: shard 0's resources are written by shard 1 now, after its lease lay free (3 s lease,
        # 3 s more for a standby), and shard 0 wrote nothing after it was killed.
        assert took > 3.0
        for k, who, name in _status_writes(cluster):
            if k >= killed_at:
                assert who == "shard1", (who, name)
        lease = cluster.objects[LEASES, "harmony-system", "hz-0-of-2"]
        assert lease["spec"]["holderIdentity"].startswith("shard1_")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        # Waited for without blocking the loop that serves kmock: the processes' last calls go to it.
        try:
            await wait_for(lambda: all(p.poll() is not None for p in procs), timeout=30)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    # Shard 1 stopped cleanly: it released both leases.
    for name in ("hz-0-of-2", "hz-1-of-2"):
        assert cluster.objects[LEASES, "harmony-system", name]["spec"]["holderIdentity"] == ""
