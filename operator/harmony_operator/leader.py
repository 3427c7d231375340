"""Leader election on a coordination.k8s.io/v1 Lease with client-go's semantics: only the holder writes.

The Lease record is client-go's (`kubectl get lease` reads it the usual way), and so is the timing:

* A contender never compares its own wall clock with the holder's `renewTime` (another machine's clock):
  it notes, on its own monotonic clock, when it last *saw the record change*, and takes the lease over only
  after `leaseDurationSeconds` have passed since then without a change. Clock skew between machines
  therefore cannot make two holders.
* The holder counts from the start of its last successful renewal round, on its monotonic clock, and stops
  acting `renew_deadline_s` after it (`is_leader` turns False) - before any contender, which saw that renewal
  no earlier, may take over at `lease_s`. The difference leaves time for a write already on the wire.
* `is_leader` is asked right before every write (`KubeClient.guard`), not once per loop, so a reconcile that
  outlives its leadership writes nothing.
* Updates carry the read `resourceVersion`, so of two contenders the API server lets one win (409).

kubernetes_asyncio's own `leaderelection` is not used: it compares wall-clock times, has no leadership
predicate to fence writes with, and writes naive local time as UTC.
On a clean shutdown the holder releases the lease (empty holder) so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from harmony_operator.kube import ApiError, KubeClient, NotFound

__all__ = ["LeaderElector", "default_identity"]

log = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
    return tuple(spec.get(k) for k in keys)


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str = "harmony-operator",
        identity: str | None = None,
        *,
        lease_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        if not 0 < retry_s < renew_deadline_s < lease_s:
            raise ValueError(
                f"leader election needs retry ({retry_s}s) < renew deadline ({renew_deadline_s}s) "
                f"< lease duration ({lease_s}s)"
            )
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_s = lease_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.clock = clock  # monotonic: every duration is measured on it
        self.wall_clock = wall_clock  # only for the timestamps written into the Lease, for people to read
        self.on_change = on_change
        # Written into the Lease's metadata with every write (harmony_operator.sharding: the shard it is for
        # and the home shard of its holder).
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})
        self._leader = False
        self._renewed_at: float | None = None  # start of the last successful round, on `clock`
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        """True only while the last successful renewal started less than `renew_deadline_s` ago."""
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline_s

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            log.info(
                "leader lease %s/%s %s by %s",
                self.namespace,
                self.name,
                "acquired" if leader else "lost",
                self.identity,
            )
            self._leader = leader
            if self.on_change is not None:
                self.on_change(leader)

    def _body(self, lease: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        now = _micro(self.wall_clock())
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self.lease_s),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if lease is not None:
            old = lease.get("spec") or {}
            if old.get("holderIdentity") == self.identity and old.get("acquireTime"):
                spec["acquireTime"] = old["acquireTime"]
            rv = (lease.get("metadata") or {}).get("resourceVersion")
            if rv:
                meta["resourceVersion"] = rv
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def observe(self, lease: dict[str, Any] | None) -> None:
        """Note the lease as read elsewhere (a list): its expiry counts from when its record last changed."""
        record = _record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    async def try_acquire_or_renew(self) -> bool:
        """One round of the protocol; True while this instance holds the lease."""
        start = self.clock()
        try:
            try:
                lease: dict[str, Any] | None = await self.kube.get_lease(self.namespace, self.name)
            except NotFound:
                lease = None
            if lease is None:
                written = await self.kube.create_lease(self.namespace, self._body(None, 0))
            else:
                self.observe(lease)
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity") or ""
                duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
                transitions = int(spec.get("leaseTransitions") or 0)
                if holder and holder != self.identity and self.clock() < self._observed_at + duration:
                    self._renewed_at = None
                    self._set(False)
                    return False
                if holder != self.identity:
                    transitions += 1
                written = await self.kube.replace_lease(
                    self.namespace, self.name, self._body(lease, transitions)
                )
        except ApiError as exc:
            log.warning("leader lease %s/%s: %s", self.namespace, self.name, exc)
            self._set(self.is_leader)
            return self.is_leader
        self.observe(written or None)
        self._renewed_at = start
        self._set(True)
        return True

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            await self.try_acquire_or_renew()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=self.retry_s)
            self._set(self.is_leader)  # a renewal overdue shows as lost without waiting for the next round
        await self.release()

    async def release(self, clear_annotations: tuple[str, ...] = ()) -> None:
        """Stop acting, then hand the lease back (empty holder) so another contender takes it at once;
        `clear_annotations` are removed in the same write."""
        was_leader = self._leader or self.is_leader
        self._renewed_at = None
        if was_leader:
            try:
                lease = await self.kube.get_lease(self.namespace, self.name)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") == self.identity:
                    body = self._body(lease, int(spec.get("leaseTransitions") or 0))
                    body["spec"]["holderIdentity"] = ""
                    for key in clear_annotations:
                        body["metadata"].setdefault("annotations", {})[key] = None  # merge patch: delete
                    await self.kube.replace_lease(self.namespace, self.name, body)
            except ApiError as exc:
                log.warning("could not release the leader lease %s/%s: %s", self.namespace, self.name, exc)
        self._set(False)
