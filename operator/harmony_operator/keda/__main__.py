"""`harmony-scaler` (`python -m harmony_operator.keda`): the command line of the external scaler in
`harmony_operator.keda.scaler`: flags and their environment variables, logging, and serving until a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from harmony_operator.keda.scaler import ConfigError, ScalerServer, ScalerSettings
from harmony_operator.outcome import iso_time

__all__ = ["main", "parse_args"]

log = logging.getLogger("harmony_operator.keda.scaler")


def parse_args(argv: list[str] | None = None) -> ScalerSettings:
    env = os.environ.get  # string defaults go through `type`: a bad value in the environment fails as a flag
    p = argparse.ArgumentParser(
        prog="harmony-scaler",
        description="Serve harmony's decisions to KEDA as an external scaler "
        "(docs/operator.md, 'With KEDA').",
    )
    p.add_argument("--port", type=int, default=env("HARMONY_SCALER_PORT", "6000"), help="gRPC port [6000]")
    p.add_argument("--bind-address", default=env("HARMONY_SCALER_BIND_ADDRESS", "0.0.0.0"))
    p.add_argument("--tls-cert", type=Path, default=env("HARMONY_SCALER_TLS_CERT") or None, help="PEM chain")
    p.add_argument("--tls-key", type=Path, default=env("HARMONY_SCALER_TLS_KEY") or None, help="PEM key")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        default=env("HARMONY_SCALER_TLS_CLIENT_CA") or None,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--allow-cross-namespace",
        action="store_true",
        default=env("HARMONY_SCALER_ALLOW_CROSS_NAMESPACE", "").lower() in ("1", "true"),
        help="let a ScaledObject name a HarmonyAutoscaler in another namespace",
    )
    p.add_argument("--stale-after-intervals", type=float, default=env("HARMONY_SCALER_STALE_INTERVALS", "3"))
    p.add_argument("--stale-min", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--cache-ttl", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--stream-period", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--status-period", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--no-status", action="store_true", help="do not write status.keda / status.actuator")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    _configure_logging(args.log_format, args.verbose)
    try:
        return ScalerSettings(
            port=args.port,
            bind_address=args.bind_address,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            allow_cross_namespace=args.allow_cross_namespace,
            stale_after_intervals=args.stale_after_intervals,
            stale_min_s=args.stale_min,
            cache_ttl_s=args.cache_ttl,
            stream_period_s=args.stream_period,
            status_period_s=args.status_period,
            write_status=not args.no_status,
        )
    except ConfigError as exc:
        p.error(str(exc))
        raise  # unreachable: p.error exits


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _configure_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


async def _serve(settings: ScalerSettings) -> None:
    server = ScalerServer(settings)
    try:
        await server.start()
    except OSError as exc:
        await server.stop(grace_s=0)
        sys.exit(f"harmony-scaler: {exc}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
