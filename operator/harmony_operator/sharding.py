"""Shards: N operator Deployments, each acting on a disjoint part of the HarmonyAutoscalers.

A resource belongs to shard `shard_of(uid, N)` (a stable hash of its uid, the same in every process and
every language: the first 8 bytes of its SHA-256, big-endian, modulo N). Each shard has its own Lease with
client-go's semantics (`harmony_operator.leader`); an instance acts on a resource only while it holds the
resource's shard Lease, and every write is fenced by that, right before it goes out.

Every instance has a *home* shard (its Deployment's) and contends for it every round. On top of that:

* **Take-over.** An instance that leads its home shard also adopts another shard's Lease once that Lease has
  been free (missing, released, or expired on this instance's own clock) for `adopt_after_s` more - time for
  the shard's own standby to take it first. A killed shard's resources are therefore acted on again within
  about `lease_s + adopt_after_s`.
* **Hand-back.** A home instance that finds its shard's Lease held by another shard's instance marks the
  Lease with a claim annotation; the adopter stops acting and releases it in one write (clearing the claim),
  and the home instance acquires it next round.
* **Changing N.** Leases carry their shard count as a label, so a list of the group's Leases shows a rollout
  from N to M shards in progress. An instance does not act on a resource while a *live* Lease of another count
  covers it (the resource hashes to that Lease's shard under that count). Both sides apply the rule, each to
  a list taken after its own Leases were acquired, so of two instances of different counts at most one acts on
  a resource; resources in the overlap wait until the old count's instances stop (they release their Leases
  on a clean shutdown; a killed one's Lease expires after its duration).

With N = 1 the Lease keeps its historic name (`--lease-name`), so an upgrade from an unsharded release is a
change of count like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harmony_operator import GROUP
from harmony_operator.kube import ApiError, KubeClient
from harmony_operator.leader import LeaderElector

__all__ = [
    "CLAIM_ANNOTATION",
    "GROUP_LABEL",
    "HOLDER_SHARD_ANNOTATION",
    "SHARDS_LABEL",
    "SHARD_LABEL",
    "ShardLeases",
    "lease_name",
    "shard_of",
]

log = logging.getLogger(__name__)

GROUP_LABEL = f"{GROUP}/lease-group"
SHARDS_LABEL = f"{GROUP}/shards"
SHARD_LABEL = f"{GROUP}/shard"
HOLDER_SHARD_ANNOTATION = f"{GROUP}/holder-home-shard"
CLAIM_ANNOTATION = f"{GROUP}/claimed-by"


def shard_of(uid: str, shards: int) -> int:
    """The shard of the resource with this uid among `shards`: stable across processes and versions."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") % shards


def lease_name(base: str, shard: int, shards: int) -> str:
    """`base` alone for one shard (the unsharded name), else `<base>-<shard>-of-<shards>`."""
    return base if shards == 1 else f"{base}-{shard}-of-{shards}"


@dataclass(frozen=True)
class _Seen:
    record: tuple[Any, ...] | None  # None: no such lease
    changed_at: float  # on this instance's monotonic clock
    duration_s: float


def _spec_record(lease: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return tuple(spec.get(k) for k in ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions"))


class ShardLeases:
    """This instance's Leases: which shards it acts for now, renewed every `retry_s` by `run`."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        base: str,
        identity: str,
        *,
        shards: int = 1,
        home: int = 0,
        lease_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_s: float = 2.0,
        adopt_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] | None = None,  # after a round that changed what it acts on
    ) -> None:
        if shards < 1 or not 0 <= home < shards:
            raise ValueError(f"need shards >= 1 and 0 <= home shard < shards, got shard {home} of {shards}")
        self.kube = kube
        self.namespace = namespace
        self.base = base
        self.identity = identity
        self.shards = shards
        self.home = home
        self.lease_s = lease_s
        self.retry_s = retry_s
        self.adopt_after_s = lease_s if adopt_after_s is None else adopt_after_s
        self.clock = clock
        self.on_change = on_change
        self.electors = [
            LeaderElector(
                kube,
                namespace,
                lease_name(base, j, shards),
                identity,
                lease_s=lease_s,
                renew_deadline_s=renew_deadline_s,
                retry_s=retry_s,
                clock=clock,
                labels={GROUP_LABEL: base, SHARDS_LABEL: str(shards), SHARD_LABEL: str(j)},
                annotations={HOLDER_SHARD_ANNOTATION: str(home)},
            )
            for j in range(shards)
        ]
        self._seen: dict[str, _Seen] = {}
        self._leases: dict[str, dict[str, Any]] = {}
        # Decided after each round's list: the shards this instance may act for, and the live Leases of
        # another shard count as (count, shard) pairs.
        self._acting: frozenset[int] = frozenset()
        self._blocked: tuple[tuple[int, int], ...] = ()
        self._state: tuple[frozenset[int], tuple[tuple[int, int], ...]] = (frozenset(), ())

    @property
    def home_elector(self) -> LeaderElector:
        return self.electors[self.home]

    @property
    def acting(self) -> frozenset[int]:
        """The shards acted for now (held, and confirmed by a list taken after they were acquired)."""
        return frozenset(j for j in self._acting if self.electors[j].is_leader)

    def owns(self, uid: str) -> bool:
        """Whether this instance may act on (and write for) the resource with this uid right now."""
        j = shard_of(uid, self.shards)
        if j not in self._acting or not self.electors[j].is_leader:
            return False
        return not any(shard_of(uid, count) == shard for count, shard in self._blocked)

    # what the list shows -------------------------------------------------------------------------------
    def _count_of(self, lease: dict[str, Any]) -> tuple[int, int] | None:
        """(shard count, shard) of a Lease of this group; None for a Lease of another group."""
        meta = lease.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("name") == self.base:
            return 1, 0  # the unsharded Lease, also as written before shards existed (no labels)
        if labels.get(GROUP_LABEL) != self.base:
            return None
        try:
            count, shard = int(labels[SHARDS_LABEL]), int(labels[SHARD_LABEL])
        except (KeyError, ValueError):
            return None
        return (count, shard) if 0 <= shard < count else None

    def _note(self, name: str, lease: dict[str, Any] | None) -> None:
        record = _spec_record(lease)
        seen = self._seen.get(name)
        spec = (lease or {}).get("spec") or {}
        duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
        if seen is None or seen.record != record:
            self._seen[name] = _Seen(record, self.clock(), duration)

    def _live(self, name: str) -> bool:
        """Held by someone and renewed within its duration, as this instance has watched it."""
        seen = self._seen.get(name)
        if seen is None or seen.record is None or not seen.record[0]:
            return False
        return self.clock() < seen.changed_at + seen.duration_s

    def _free_for(self, name: str) -> float:
        """How long the Lease has been free to take (missing, released or expired); 0 while it is live."""
        seen = self._seen.get(name)
        if seen is None:
            return 0.0
        since = seen.changed_at
        if seen.record is not None and seen.record[0]:
            since += seen.duration_s
        return max(0.0, self.clock() - since)

    async def _list(self) -> bool:
        try:
            items = await self.kube.list_leases(self.namespace)
        except ApiError as exc:
            log.warning("listing the leases in %s: %s", self.namespace, exc)
            return False
        leases: dict[str, dict[str, Any]] = {}
        for lease in items:
            if self._count_of(lease) is not None:
                leases[str((lease.get("metadata") or {}).get("name"))] = lease
        # A Lease of this count that does not exist is noted too: its shard is free since it was first missed.
        for name in set(self._seen) | set(leases) | {e.name for e in self.electors}:
            self._note(name, leases.get(name))
        self._leases = leases
        for e in self.electors:
            e.observe(self._leases.get(e.name))
        return True

    # one round ------------------------------------------------------------------------------------------
    async def round(self) -> frozenset[int]:
        """Renew, adopt, hand back and claim as the protocol says; then list and decide what to act for."""
        home = self.home_elector
        await home.try_acquire_or_renew()
        for j, e in enumerate(self.electors):
            if j == self.home:
                continue
            lease = self._leases.get(e.name) or {}
            claim = ((lease.get("metadata") or {}).get("annotations") or {}).get(CLAIM_ANNOTATION)
            if e.is_leader and claim and claim != self.identity:
                log.info("handing shard %d back to %s", j, claim)
                await e.release(clear_annotations=(CLAIM_ANNOTATION,))
            elif e.is_leader or (home.is_leader and self._free_for(e.name) >= self.adopt_after_s):
                if not e.is_leader:
                    log.info("taking over shard %d of %d (its lease has been free)", j, self.shards)
                await e.try_acquire_or_renew()
        if not await self._list():
            self._acting = frozenset()  # no list, no proof that no other shard count acts
        else:
            self._acting = frozenset(j for j, e in enumerate(self.electors) if e.is_leader)
            own = {e.name for e in self.electors}
            blocked = []
            for name, lease in self._leases.items():
                where = self._count_of(lease)
                if name not in own and where is not None and where[0] != self.shards and self._live(name):
                    blocked.append(where)
            if blocked and blocked != list(self._blocked):
                log.info("a rollout between shard counts is in progress: holding back on %s", blocked)
            self._blocked = tuple(blocked)
            await self._claim_home()
        state = (self._acting, self._blocked)
        if state != self._state:
            # What this instance may act on changed: the waiting daemons are woken (on_change), instead of
            # each polling its resource's ownership.
            self._state = state
            if self.on_change is not None:
                self.on_change(len(self._acting))
        return self.acting

    async def _claim_home(self) -> None:
        """Ask another shard's instance that holds this instance's home Lease to hand it back."""
        home = self.home_elector
        lease = self._leases.get(home.name)
        if home.is_leader or lease is None or not self._live(home.name):
            return
        meta = lease.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if annotations.get(HOLDER_SHARD_ANNOTATION) in (None, str(self.home)):
            return  # a standby of the same shard, or an older operator: the usual election decides
        if annotations.get(CLAIM_ANNOTATION):
            return
        patch = {"metadata": {"annotations": {CLAIM_ANNOTATION: self.identity}}}
        try:
            await self.kube.replace_lease(self.namespace, home.name, patch)
        except ApiError as exc:
            log.warning("claiming shard %d back: %s", self.home, exc)

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            try:
                await self.round()
            except Exception:  # the leases must outlive any one failure; each round starts afresh
                log.exception("lease round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=self.retry_s)
        await self.release()

    async def release(self) -> None:
        self._acting = frozenset()
        for e in self.electors:
            await e.release()
        if self.on_change is not None and self._state[0]:
            self._state = (frozenset(), self._blocked)
            self.on_change(0)
