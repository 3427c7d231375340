"""The Kubernetes API calls the operator makes itself, through `kubernetes_asyncio` (a maintained client).

kopf watches the custom resources and posts events; the calls here are the rest: read and patch the
target's /scale subresource, patch the resource's /status, the Lease of leader election and API discovery.
Credentials come from `kubernetes_asyncio.config`, which reads every kubeconfig form (embedded or file CA
and client certificates, tokens and token files, basic auth, exec plugins, OIDC, several files in
$KUBECONFIG) and the in-cluster service account (with its rotating token); `connection_info` hands the same
credentials to kopf's watcher, so both talk to the API server as the same identity.

Errors map to `ApiError` subclasses by HTTP status so the reconciler can tell a missing target (404) from a
write conflict (409) from a server error (5xx). A write may be fenced: `KubeClient.guard` is asked right
before each fenced request goes out, and a False answer raises `NotLeader` without sending anything.
`retrying` adds capped exponential back-off with jitter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, load_kube_config

__all__ = [
    "ApiError",
    "Conflict",
    "Credentials",
    "KubeClient",
    "NotFound",
    "NotLeader",
    "Scale",
    "ScaleTarget",
    "ServerError",
    "Unreachable",
    "connection_info",
    "load_credentials",
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


class NotLeader(ApiError):
    """A fenced write refused before it was sent: this instance no longer (surely) holds the lease."""

    def __init__(self, what: str) -> None:
        super().__init__(0, f"not the leader any more: {what} not sent")


def _message(body: Any) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body).strip()[:300]
    return str(body.get("message", "")) if isinstance(body, Mapping) else ""


def _error(status: int, body: Any, what: str) -> ApiError:
    text = f"{what}: {_message(body)}".rstrip(": ")
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


@dataclass(frozen=True)
class ScaleTarget:
    """Where a workload's /scale subresource lives: `{prefix}/namespaces/{ns}/{plural}/{name}/scale`."""

    api_version: str
    kind: str
    plural: str

    @property
    def prefix(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def scale_path(self, namespace: str, name: str) -> str:
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}/{name}/scale"


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


# --- credentials -----------------------------------------------------------------------------------------


@dataclass
class Credentials:
    """A loaded client configuration and, for a kubeconfig, the loader (it knows an exec token's expiry)."""

    configuration: Configuration
    loader: KubeConfigLoader | None = None


async def load_credentials(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    service_account_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """In-cluster service account first (as client-go's rest.InClusterConfig), then the kubeconfig.

    The kubeconfig is `kubeconfig`, else $KUBECONFIG (read now, not at import: a list of files is merged),
    else ~/.kube/config. Raises `Unreachable` naming both places when neither gives credentials.
    """
    env = dict(os.environ if environ is None else environ)
    sa_dir = Path(service_account_dir) if service_account_dir else None
    token_file = str(sa_dir / "token") if sa_dir else SERVICE_TOKEN_FILENAME
    ca_file = str(sa_dir / "ca.crt") if sa_dir else SERVICE_CERT_FILENAME
    if env.get(SERVICE_HOST_ENV_NAME) and Path(token_file).is_file():
        configuration = Configuration()
        try:
            InClusterConfigLoader(token_file, ca_file, environ=env).load_and_set(configuration)
        except ConfigException as exc:
            raise Unreachable(0, f"in-cluster credentials unusable: {exc}") from exc
        return Credentials(configuration)
    path = kubeconfig or env.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    configuration = Configuration()
    try:
        loader = await load_kube_config(
            config_file=path, context=context, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise Unreachable(
            0, f"no Kubernetes credentials: not in a cluster, and kubeconfig {path} unusable: {exc}"
        ) from exc
    return Credentials(configuration, loader)


async def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """The same credentials as a kopf `ConnectionInfo` (kopf's watcher logs in with these)."""
    cfg = credentials.configuration
    header = await cfg.get_api_key_with_prefix("BearerToken")
    scheme, token = [*header.split(" ", 1), ""][:2] if header else (None, None)
    expiration: dt.datetime | None = None
    loader = credentials.loader
    if loader is not None and getattr(loader, "exec_plugin_expiry", None) is not None:
        expiration = loader.exec_plugin_expiry
    elif credentials.loader is None:
        # The in-cluster token file rotates: ask again within a minute, as the client does.
        expiration = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    return kopf.ConnectionInfo(
        server=str(cfg.host),
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
        proxy_url=cfg.proxy or None,
        expiration=expiration,
    )


# --- the client ------------------------------------------------------------------------------------------

CredentialsProvider = Callable[[], Awaitable[Credentials]]


class KubeClient:
    """Kubernetes API calls over one `kubernetes_asyncio.ApiClient`; `close()` it (or use `async with`).

    `guard`, when set, is called right before every fenced write (scale and status patches); False
    refuses the write with `NotLeader`. Lease writes are never fenced (they are how leadership is won).
    """

    def __init__(
        self,
        credentials: CredentialsProvider = load_credentials,
        *,
        timeout_s: float = 15.0,
        user_agent: str = "harmony-operator",
        guard: Callable[[], bool] | None = None,
        max_connections: int = 32,
    ) -> None:
        self._credentials = credentials
        self._client: ApiClient | None = None
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._targets: dict[tuple[str, str], ScaleTarget] = {}
        self.user_agent = user_agent
        self.guard = guard
        self.max_connections = max_connections

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _connect(self, *, refresh: bool = False) -> ApiClient:
        async with self._lock:
            if refresh and self._client is not None:
                await self._client.close()
                self._client = None
            if self._client is None:
                creds = await self._credentials()
                # The library's default pool is 5 connections per core: too few when hundreds of daemons
                # reconcile at once (each waits for a connection instead of for the API server).
                creds.configuration.connection_pool_maxsize = self.max_connections
                client = ApiClient(configuration=creds.configuration)
                client.user_agent = self.user_agent
                self._client = client
            return self._client

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        what: str = "",
        fenced: bool = False,
    ) -> Any:
        what = what or f"{method} {path}"
        for attempt in (0, 1):
            client = await self._connect(refresh=attempt == 1)
            if fenced and self.guard is not None and not self.guard():
                raise NotLeader(what)
            try:
                return await client.call_api(
                    path,
                    method,
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map={200: "object", 201: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _request_timeout=self._timeout_s,
                )
            except ApiException as exc:
                if exc.status == 401 and attempt == 0:
                    continue  # a rotated token or an expired exec credential: log in again once
                raise _error(int(exc.status or 0), exc.body, what) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise Unreachable(0, f"Kubernetes API unreachable ({what}): {exc!s}") from exc
        raise ApiError(401, f"unauthorised: {what}")

    # discovery ---------------------------------------------------------------------------------------
    async def scale_target(self, api_version: str, kind: str) -> ScaleTarget:
        """The resource of `kind` in `api_version` with a /scale subresource, found by API discovery."""
        key = (api_version, kind)
        if key in self._targets:
            return self._targets[key]
        probe = ScaleTarget(api_version, kind, "")
        try:
            data = await self.request("GET", probe.prefix, what=f"API discovery of {api_version}")
        except NotFound:
            raise NotFound(404, f"the API server serves no kind {kind} in {api_version}") from None
        resources = (data or {}).get("resources") or []
        names = {r.get("name") for r in resources if isinstance(r, Mapping)}
        for r in resources:
            if isinstance(r, Mapping) and r.get("kind") == kind and "/" not in str(r.get("name", "")):
                plural = str(r["name"])
                if f"{plural}/scale" not in names:
                    raise NotFound(
                        404, f"{kind} ({api_version}) has no scale subresource: it cannot be scaled"
                    )
                target = ScaleTarget(api_version, kind, plural)
                self._targets[key] = target
                return target
        raise NotFound(404, f"the API server serves no kind {kind} in {api_version}")

    # scale subresource -------------------------------------------------------------------------------
    @staticmethod
    def scale_path(namespace: str, plural: str, name: str) -> str:
        return ScaleTarget("apps/v1", "", plural).scale_path(namespace, name)

    async def get_scale(
        self, namespace: str, plural: str, name: str, *, api_version: str = "apps/v1"
    ) -> Scale:
        path = ScaleTarget(api_version, "", plural).scale_path(namespace, name)
        data = await self.request("GET", path, what=f"{plural}/{name} in {namespace}")
        spec = (data or {}).get("spec") or {}
        status = (data or {}).get("status") or {}
        replicas = int(spec.get("replicas", 0) or 0)
        return Scale(replicas, int(status.get("replicas", replicas) or 0))

    async def patch_scale(
        self, namespace: str, plural: str, name: str, replicas: int, *, api_version: str = "apps/v1"
    ) -> None:
        await self.request(
            "PATCH",
            ScaleTarget(api_version, "", plural).scale_path(namespace, name),
            {"spec": {"replicas": int(replicas)}},
            content_type="application/merge-patch+json",
            what=f"scale {plural}/{name} in {namespace}",
            fenced=True,
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
            fenced=True,
        )

    async def list_objects(self, api_version: str, plural: str, namespace: str) -> list[dict[str, Any]]:
        prefix = ScaleTarget(api_version, "", plural).prefix
        data = await self.request(
            "GET", f"{prefix}/namespaces/{namespace}/{plural}", what=f"{plural} in {namespace}"
        )
        return [dict(i) for i in (data or {}).get("items") or [] if isinstance(i, Mapping)]

    # leases (leader election) ------------------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        data = await self.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            what=f"lease {name} in {namespace}",
        )
        return dict(data or {})

    async def list_leases(self, namespace: str) -> list[dict[str, Any]]:
        """Every Lease of the namespace: no label selector, so that a Lease written by an operator from before
        shards (unlabelled) is seen too (harmony_operator.sharding)."""
        data = await self.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            what=f"leases in {namespace}",
        )
        return [dict(i) for i in (data or {}).get("items") or [] if isinstance(i, Mapping)]

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = await self.request(
            "POST",
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            dict(body),
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
