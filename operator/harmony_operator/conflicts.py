"""Another autoscaler on the same target: HPAs, KEDA ScaledObjects and older HarmonyAutoscalers in Apply
mode. The namespace's lists are cached for a few seconds and shared by concurrent reconciles, so all daemons
waking at once make 3 lists per namespace, not 3 per resource.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from harmony_operator.kube import ApiError, KubeClient, NotFound
from harmony_operator.spec import AutoscalerSpec

__all__ = ["ConflictFinder"]

log = logging.getLogger(__name__)


class ConflictFinder:
    def __init__(self, kube: KubeClient, api: tuple[str, str, str], cache_s: float) -> None:
        self.kube = kube
        self.api = api  # the HarmonyAutoscaler's (group, version, plural)
        self.cache_s = cache_s
        self._autoscalers: dict[str, tuple[float, list[tuple[str, dict[str, Any]]]]] = {}
        self._listing: dict[str, asyncio.Lock] = {}

    _AUTOSCALER_KINDS = (
        ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
        ("keda.sh/v1alpha1", "scaledobjects", "ScaledObject"),
    )

    async def _listed(self, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        """(kind, object) of every autoscaler in `namespace`, reused for `conflict_cache_s`; concurrent
        reconciles in one namespace share one listing (no thundering herd when all daemons align)."""
        cached = self._autoscalers.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        lock = self._listing.setdefault(namespace, asyncio.Lock())
        async with lock:
            cached = self._autoscalers.get(namespace)
            if cached is not None and time.monotonic() - cached[0] < self.cache_s:
                return cached[1]
            found = await self._list_autoscalers(namespace)
            self._autoscalers[namespace] = (time.monotonic(), found)
            return found

    async def _list_autoscalers(self, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        group, version, plural = self.api
        found: list[tuple[str, dict[str, Any]]] = []
        for api_version, kind_plural, kind in (
            *self._AUTOSCALER_KINDS,
            (f"{group}/{version}", plural, "HarmonyAutoscaler"),
        ):
            try:
                items = await self.kube.list_objects(api_version, kind_plural, namespace)
            except NotFound:
                items = []  # that kind is not installed (e.g. no KEDA)
            found += [(kind, item) for item in items]
        return found

    async def find(self, namespace: str, name: str, spec: AutoscalerSpec) -> list[str]:
        """Other autoscalers of this resource's target: HPAs, ScaledObjects, and HarmonyAutoscalers in mode
        Apply, not paused, created before this one (of two on one target, the older keeps scaling). A failed
        check is no conflict."""
        try:
            listed = await self._listed(namespace)
        except ApiError as exc:
            log.warning("%s/%s: could not look for other autoscalers: %s", namespace, name, exc)
            return []

        def same_target(ref: Any) -> bool:
            if not isinstance(ref, Mapping):
                return False
            group = str(ref.get("apiVersion") or "apps/v1").split("/")[0]
            return (
                ref.get("name") == spec.target_name
                and (ref.get("kind") or "Deployment") == spec.target_kind
                and group == spec.target_api_version.split("/")[0]
            )

        def age(obj: Mapping[str, Any]) -> tuple[str, str]:
            meta = obj.get("metadata") or {}
            return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))

        own = next(
            (
                o
                for k, o in listed
                if k == "HarmonyAutoscaler" and (o.get("metadata") or {}).get("name") == name
            ),
            {"metadata": {"name": name, "creationTimestamp": "9999"}},
        )
        group = self.api[0]
        out = []
        for kind, obj in listed:
            other = str((obj.get("metadata") or {}).get("name") or "")
            if not same_target((obj.get("spec") or {}).get("scaleTargetRef")):
                continue
            if kind == "HarmonyAutoscaler" and (
                other == name
                or age(obj) > age(own)
                or (obj.get("spec") or {}).get("mode", "Apply") != "Apply"  # shadow mode never scales
                or str(((obj.get("metadata") or {}).get("annotations") or {}).get(f"{group}/paused")).lower()
                == "true"
            ):
                continue
            out.append(f"{kind} {other}")
        return sorted(out)
