"""The few Kubernetes API calls the operator makes itself, over aiohttp with kopf's credentials.

kopf watches the custom resources and posts events; the calls here are the rest: read and patch the target's
/scale subresource, patch the resource's /status, and the Lease of leader election. Errors map to
`ApiError` subclasses by HTTP status so the reconciler can tell a missing target (404) from a write
conflict (409) from a server error (5xx). `retrying` adds capped exponential back-off with jitter.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import kopf

__all__ = [
    "ApiError",
    "Conflict",
    "KubeClient",
    "NotFound",
    "Scale",
    "ServerError",
    "Unreachable",
    "retrying",
]

T = TypeVar("T")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class ServerError(ApiError):
    pass


class Unreachable(ApiError):
    pass


def _error(status: int, body: Any, what: str) -> ApiError:
    message = body.get("message", "") if isinstance(body, Mapping) else str(body or "")
    text = f"{what}: {message}".rstrip(": ")
    if status == 404:
        return NotFound(status, text)
    if status == 409:
        return Conflict(status, text)
    if status >= 500 or status == 429:
        return ServerError(status, text)
    return ApiError(status, text)


@dataclass(frozen=True)
class Scale:
    spec_replicas: int
    status_replicas: int


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    retry_on: tuple[type[BaseException], ...] = (ServerError, Unreachable, Conflict),
) -> T:
    """`call()` again after 0.2, 0.4, 0.8 s (x jitter) on transient errors; the last error propagates."""
    for k in range(attempts - 1):
        try:
            return await call()
        except retry_on:
            await asyncio.sleep(min(max_delay_s, base_delay_s * 2**k) * (0.5 + random.random()))
    return await call()


CredentialsProvider = Callable[[], kopf.ConnectionInfo | None]


def default_credentials() -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config (kopf's own readers)."""
    settings = kopf.OperatorSettings()
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)


class KubeClient:
    """A minimal async Kubernetes client; `close()` it (or use `async with`)."""

    def __init__(self, credentials: CredentialsProvider = default_credentials, *, timeout_s: float = 15.0):
        self._credentials = credentials
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect(self, *, refresh: bool = False) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        async with self._lock:
            if refresh or self._info is None:
                info = await asyncio.to_thread(self._credentials)
                if info is None:
                    raise Unreachable(0, "no Kubernetes credentials: neither in-cluster nor a kubeconfig")
                self._info = info
                if self._session is not None:
                    await self._session.close()
                    self._session = None
            assert self._info is not None
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self._ssl(self._info), limit=32),
                    timeout=self._timeout,
                )
            return self._session, self._info

    @staticmethod
    def _ssl(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
        if not info.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=info.ca_path)
        if info.ca_data:
            ctx.load_verify_locations(
                cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
            )
        if info.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if info.certificate_path and info.private_key_path:
            ctx.load_cert_chain(info.certificate_path, info.private_key_path)
        return ctx

    @staticmethod
    def _headers(info: kopf.ConnectionInfo, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "harmony-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str | None = None, what: str = ""
    ) -> Any:
        for attempt in (0, 1):
            session, info = await self._connect(refresh=attempt == 1)
            auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
            try:
                async with session.request(
                    method,
                    info.server.rstrip("/") + path,
                    json=body,
                    auth=auth,
                    headers=self._headers(info, content_type if body is not None else None),
                ) as resp:
                    try:
                        data = await resp.json(content_type=None)
                    except ValueError:
                        data = None
                    if resp.status == 401 and attempt == 0:
                        continue  # a rotated token: log in again once
                    if resp.status >= 400:
                        raise _error(resp.status, data, what or f"{method} {path}")
                    return data
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise Unreachable(0, f"Kubernetes API unreachable ({method} {path}): {exc!s}") from exc
        raise ApiError(401, f"unauthorised: {method} {path}")

    # scale subresource -------------------------------------------------------------------------------
    @staticmethod
    def scale_path(namespace: str, plural: str, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}/scale"

    async def get_scale(self, namespace: str, plural: str, name: str) -> Scale:
        data = await self.request(
            "GET", self.scale_path(namespace, plural, name), what=f"{plural}/{name} in {namespace}"
        )
        spec = (data or {}).get("spec") or {}
        status = (data or {}).get("status") or {}
        replicas = int(spec.get("replicas", 0) or 0)
        return Scale(replicas, int(status.get("replicas", replicas) or 0))

    async def patch_scale(self, namespace: str, plural: str, name: str, replicas: int) -> None:
        await self.request(
            "PATCH",
            self.scale_path(namespace, plural, name),
            {"spec": {"replicas": int(replicas)}},
            content_type="application/merge-patch+json",
            what=f"scale {plural}/{name} in {namespace}",
        )

    # custom resource status --------------------------------------------------------------------------
    async def patch_status(
        self, group: str, version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        await self.request(
            "PATCH",
            f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status",
            {"status": dict(status)},
            content_type="application/merge-patch+json",
            what=f"status of {plural}/{name} in {namespace}",
        )

    # leases (leader election) ------------------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        data = await self.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            what=f"lease {name} in {namespace}",
        )
        return dict(data or {})

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = await self.request(
            "POST",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            dict(body),
            content_type="application/json",
            what=f"lease in {namespace}",
        )
        return dict(data or {})

    async def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch that carries the read `metadata.resourceVersion`: the API server applies it only if
        the lease has not changed since (409 otherwise), the same guarantee as an update."""
        data = await self.request(
            "PATCH",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            dict(body),
            content_type="application/merge-patch+json",
            what=f"lease {name} in {namespace}",
        )
        return dict(data or {})
