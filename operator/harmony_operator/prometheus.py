"""Indicator history from Prometheus' HTTP API (`/api/v1/query_range`), checked before anything uses it.

Every failure becomes a `MetricsError` with a `reason` the operator puts in the MetricsAvailable condition:

    PrometheusUnreachable   connection refused, timeout, or an HTTP 5xx from Prometheus
    PrometheusUnauthorized  HTTP 401/403: the credentials (`PrometheusAuth`) are missing or refused
    QueryError              Prometheus rejected the query (HTTP 400/422, status "error")
    AmbiguousQuery          the query returned more than one series (aggregate it, e.g. with sum())
    NoData                  the query returned no series, or no finite sample in the window
    StaleData               the newest finite sample is older than the staleness limit
    InsufficientData        too many of the lookback's steps are missing or NaN to trust the rest

Negative samples are treated as missing (no indicator is negative: a negative value is a delta across a
counter reset). Small gaps (NaN, negative, missing steps) within the lookback are filled by linear
interpolation over time, as the data layer does for the training traces, so the model sees the same kind
of input it was trained on.
"""

from __future__ import annotations

import asyncio
import base64
import math
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from numpy.typing import NDArray

from harmony_operator.redact import redact

__all__ = ["History", "MetricsError", "PrometheusAuth", "PrometheusClient"]


class MetricsError(RuntimeError):
    def __init__(self, reason: str, message: str, indicator: str | None = None) -> None:
        super().__init__(redact(message))
        self.reason = reason
        self.indicator = indicator


@dataclass(frozen=True)
class History:
    """Values `[steps, indicators]` on a regular grid of `times` (unix seconds), gaps already filled."""

    names: tuple[str, ...]
    times: NDArray[np.float64]
    values: NDArray[np.float64]
    filled: int  # how many cells were interpolated

    def latest(self) -> dict[str, float]:
        return {n: float(self.values[-1, k]) for k, n in enumerate(self.names)}


@dataclass(frozen=True)
class PrometheusAuth:
    """Credentials for Prometheus from mounted files (Kubernetes Secrets), read at every request so that a
    rotated Secret is picked up without a restart: a bearer token, or a username and a password; and a CA
    bundle for an https URL (used when the session is made, `ssl_context`)."""

    bearer_token_file: str | None = None
    username_file: str | None = None
    password_file: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.bearer_token_file and (self.username_file or self.password_file):
            raise ValueError("Prometheus auth: a bearer token or a username and password, not both")
        if bool(self.username_file) != bool(self.password_file):
            raise ValueError("Prometheus basic auth needs both a username file and a password file")

    @staticmethod
    def _read(path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()

    def headers(self) -> dict[str, str]:
        if self.bearer_token_file:
            return {"Authorization": f"Bearer {self._read(self.bearer_token_file)}"}
        if self.username_file and self.password_file:
            pair = f"{self._read(self.username_file)}:{self._read(self.password_file)}"
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        return {}

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None


class PrometheusClient:
    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = 10.0,
        auth: PrometheusAuth | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.auth = auth

    async def query_range(
        self, query: str, start: float, end: float, step: float, *, indicator: str | None = None
    ) -> list[tuple[float, float]]:
        """Samples (unix seconds, value) of the query's single series; NaN/Inf values are kept as NaN."""
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        url = f"{self.base_url}/api/v1/query_range"
        try:
            headers = self.auth.headers() if self.auth is not None else {}
        except OSError as exc:
            raise MetricsError(
                "PrometheusUnauthorized", f"Prometheus credentials unreadable: {exc}", indicator
            ) from exc
        try:
            async with self.session.get(url, params=params, timeout=self.timeout, headers=headers) as resp:
                status = resp.status
                try:
                    body: Any = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise MetricsError(
                "PrometheusUnreachable", f"Prometheus at {self.base_url} is unreachable: {exc!s}", indicator
            ) from exc
        if status in (401, 403):
            raise MetricsError(
                "PrometheusUnauthorized",
                f"Prometheus at {self.base_url} answered HTTP {status}: credentials missing or refused",
                indicator,
            )
        if status >= 500 and not (isinstance(body, dict) and body.get("errorType") == "execution"):
            raise MetricsError(
                "PrometheusUnreachable", f"Prometheus at {self.base_url} answered HTTP {status}", indicator
            )
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = (
                body.get("error") if isinstance(body, dict) else f"HTTP {status}, not a Prometheus answer"
            )
            raise MetricsError("QueryError", f"query {query!r} failed: {detail}", indicator)
        data = body.get("data") or {}
        result = data.get("result") or []
        if data.get("resultType") != "matrix":
            raise MetricsError(
                "QueryError",
                f"query {query!r} gave a {data.get('resultType')!r}, expected a range vector",
                indicator,
            )
        if not result:
            raise MetricsError("NoData", f"query {query!r} returned no series", indicator)
        if len(result) > 1:
            # Only the count: the series' label sets may belong to other tenants.
            raise MetricsError(
                "AmbiguousQuery",
                f"query {query!r} returned {len(result)} series; aggregate it to one (e.g. with sum())",
                indicator,
            )
        out: list[tuple[float, float]] = []
        for ts, raw in result[0].get("values", []):
            try:
                v = float(raw)
            except (TypeError, ValueError):
                v = math.nan
            # Indicators are rates, levels and utilisations, never negative: a negative sample is a delta
            # taken across a counter reset (e.g. `delta()` or `x - x offset 1m` on a counter); treat it as
            # missing, like NaN, so the gap is interpolated rather than read as negative demand.
            out.append((float(ts), v if math.isfinite(v) and v >= 0 else math.nan))
        return out

    async def history(
        self,
        indicators: Sequence[tuple[str, str]],
        end: float,
        step: float,
        steps: int,
        *,
        stale_after_s: float,
        max_missing_fraction: float = 0.2,
    ) -> History:
        """`steps` regular samples ending at `end` for each (name, query); gaps filled, staleness checked."""
        start = end - (steps - 1) * step
        grid = start + step * np.arange(steps, dtype=np.float64)
        answers = await asyncio.gather(
            *(self.query_range(q, start, end, step, indicator=n) for n, q in indicators)
        )
        values = np.full((steps, len(indicators)), np.nan)
        for k, ((name, query), samples) in enumerate(zip(indicators, answers, strict=True)):
            for ts, v in samples:
                j = round((ts - start) / step)
                if 0 <= j < steps:
                    values[j, k] = v
            finite = np.flatnonzero(np.isfinite(values[:, k]))
            if finite.size == 0:
                raise MetricsError(
                    "NoData", f"query {query!r} has no finite, non-negative sample in the window", name
                )
            newest = grid[finite[-1]]
            if end - newest > stale_after_s:
                raise MetricsError(
                    "StaleData",
                    f"newest sample of {name!r} is {end - newest:.0f}s old (limit {stale_after_s:.0f}s)",
                    name,
                )
            missing = steps - finite.size
            if missing > max_missing_fraction * steps:
                raise MetricsError(
                    "InsufficientData",
                    f"{name!r} misses {missing} of {steps} steps (limit {max_missing_fraction:.0%})",
                    name,
                )
        filled = int(np.isnan(values).sum())
        for k in range(values.shape[1]):
            col = values[:, k]
            ok = np.isfinite(col)
            if not ok.all():
                # np.interp holds the end values flat beyond the first/last finite sample.
                values[:, k] = np.interp(grid, grid[ok], col[ok])
        return History(tuple(n for n, _ in indicators), grid, values, filled)
