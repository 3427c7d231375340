"""`python -m harmony_operator`: run the operator (see docs/operator.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

from harmony_operator import handlers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="harmony-operator",
        description="Scale Deployments and StatefulSets on forecast distributions (HarmonyAutoscaler).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="serve only this namespace (repeatable)",
    )
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("HARMONY_PROMETHEUS_URL", ""),
        help="base URL of the Prometheus HTTP API [$HARMONY_PROMETHEUS_URL]",
    )
    p.add_argument("--metrics-port", type=int, default=9090, help="port of /metrics (0 = off)")
    p.add_argument("--health-port", type=int, default=8080, help="port of /healthz (0 = off)")
    p.add_argument("--lease-name", default="harmony-operator")
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the leader Lease [$POD_NAMESPACE]",
    )
    p.add_argument(
        "--no-leader-election", action="store_true", help="act without a Lease (only for a single instance)"
    )
    p.add_argument("--num-samples", type=int, default=100, help="forecast draws per decision")
    p.add_argument(
        "--min-staleness",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="a series whose newest sample is older than max(3 model steps, this) is stale",
    )
    p.add_argument("--log-format", choices=("plain", "json"), default="plain")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.prometheus_url:
        p.error("--prometheus-url (or $HARMONY_PROMETHEUS_URL) is required")
    if not args.no_leader_election and not args.lease_namespace:
        p.error("leader election needs --lease-namespace (or $POD_NAMESPACE); or pass --no-leader-election")
    if args.num_samples < 10:
        p.error("--num-samples must be at least 10")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    handlers.configure(
        handlers.OperatorOptions(
            prometheus_url=args.prometheus_url,
            metrics_port=args.metrics_port or None,
            lease_name=args.lease_name,
            lease_namespace=args.lease_namespace,
            leader_election=not args.no_leader_election,
            num_samples=args.num_samples,
            model_cache_dir=os.environ.get("HARMONY_MODEL_CACHE_DIR") or None,
            min_staleness_s=args.min_staleness,
        )
    )
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not args.namespace,
                namespaces=args.namespace,
                standalone=True,
                liveness_endpoint=liveness,
            )
        )
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
