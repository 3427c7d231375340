"""Leader election on a coordination.k8s.io/v1 Lease: only the holder reconciles.

The protocol is the one client-go's leaderelection uses, so `kubectl get lease` reads it the usual way:
the holder renews `spec.renewTime` every `retry_s`; another instance takes the lease over only after
`lease_s` without a renewal, incrementing `leaseTransitions`; updates carry the read `resourceVersion`
so two contenders cannot both win (the API server answers 409 to the loser). A holder that cannot renew
for `renew_deadline_s` stops acting before its lease can expire, so two instances never act at once.
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
from collections.abc import Callable
from typing import Any

from harmony_operator.kube import ApiError, KubeClient, NotFound

__all__ = ["LeaderElector", "default_identity"]

log = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
        clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_s = lease_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.clock = clock
        self.on_change = on_change
        self._leader = False
        self._last_renew = 0.0

    @property
    def is_leader(self) -> bool:
        # Stop acting once the renewal is overdue, before another instance may legally take over.
        return self._leader and self.clock() - self._last_renew < self.renew_deadline_s

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

    def _body(self, now: float, lease: dict[str, Any] | None, transitions: int) -> dict[str, Any]:
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_s),
            "acquireTime": _micro(now),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            old = lease.get("spec") or {}
            if old.get("holderIdentity") == self.identity and old.get("acquireTime"):
                spec["acquireTime"] = old["acquireTime"]
            rv = (lease.get("metadata") or {}).get("resourceVersion")
            if rv:
                meta["resourceVersion"] = rv
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def try_acquire_or_renew(self) -> bool:
        """One round of the protocol; True while this instance holds the lease."""
        now = self.clock()
        try:
            try:
                lease: dict[str, Any] | None = await self.kube.get_lease(self.namespace, self.name)
            except NotFound:
                lease = None
            if lease is None:
                await self.kube.create_lease(self.namespace, self._body(now, None, 0))
            else:
                spec = lease.get("spec") or {}
                holder = spec.get("holderIdentity") or ""
                renewed = _parse(spec.get("renewTime")) or 0.0
                duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
                transitions = int(spec.get("leaseTransitions") or 0)
                if holder and holder != self.identity and now < renewed + duration:
                    self._set(False)
                    return False
                if holder != self.identity:
                    transitions += 1
                await self.kube.replace_lease(self.namespace, self.name, self._body(now, lease, transitions))
        except ApiError as exc:
            log.warning("leader lease %s/%s: %s", self.namespace, self.name, exc)
            if not self.is_leader:
                self._set(False)
            return self.is_leader
        self._last_renew = now
        self._set(True)
        return True

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            await self.try_acquire_or_renew()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=self.retry_s)
        await self.release()

    async def release(self) -> None:
        if not self._leader:
            return
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(
                    self.clock(), lease, int((lease.get("spec") or {}).get("leaseTransitions") or 0)
                )
                body["spec"]["holderIdentity"] = ""
                await self.kube.replace_lease(self.namespace, self.name, body)
        except ApiError as exc:
            log.warning("could not release the leader lease %s/%s: %s", self.namespace, self.name, exc)
        self._set(False)
