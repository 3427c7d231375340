"""`python -m harmony_operator`: run the operator (see docs/operator.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

from harmony_operator import handlers
from harmony_operator.prometheus import PrometheusAuth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="harmony-operator",
        description="Scale workloads on forecast distributions (HarmonyAutoscaler).",
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
    p.add_argument(
        "--prometheus-bearer-token-file",
        metavar="PATH",
        help="a bearer token for Prometheus (re-read each query)",
    )
    p.add_argument(
        "--prometheus-username-file", metavar="PATH", help="basic auth for Prometheus: the username"
    )
    p.add_argument(
        "--prometheus-password-file", metavar="PATH", help="basic auth for Prometheus: the password"
    )
    p.add_argument("--prometheus-ca-file", metavar="PATH", help="CA bundle for an https Prometheus")
    p.add_argument(
        "--prometheus-url-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a resource's spec.prometheus.url may start with this (repeatable; default: none allowed)",
    )
    p.add_argument(
        "--query-namespace-label",
        metavar="LABEL",
        help='each selector in a resource\'s queries must have LABEL="<its namespace>" (default off)',
    )
    p.add_argument("--metrics-port", type=int, default=9090, help="port of /metrics (0 = off)")
    p.add_argument("--health-port", type=int, default=8080, help="port of /healthz (0 = off)")
    p.add_argument(
        "--bind-address",
        default="0.0.0.0",
        metavar="ADDR",
        help="address /metrics and /healthz listen on (default all; 127.0.0.1 keeps them local)",
    )
    p.add_argument("--lease-name", default="harmony-operator")
    p.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS", help="default 15")
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the leader stops acting this long after its last renewal (default 10)",
    )
    p.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS", help="default 2")
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the leader Lease [$POD_NAMESPACE]",
    )
    p.add_argument(
        "--no-leader-election", action="store_true", help="act without a Lease (only for a single instance)"
    )
    p.add_argument(
        "--shards",
        type=int,
        default=os.environ.get("HARMONY_SHARDS", "1"),  # a string default goes through type=int too
        metavar="N",
        help="resources are split over N shards by a hash of their uid, one Lease each [$HARMONY_SHARDS]",
    )
    p.add_argument(
        "--shard",
        type=int,
        default=os.environ.get("HARMONY_SHARD", "0"),
        metavar="I",
        help="this instance's home shard, 0..N-1; it also takes over shards left free [$HARMONY_SHARD]",
    )
    p.add_argument("--num-samples", type=int, default=100, help="forecast draws per decision")
    p.add_argument(
        "--min-staleness",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="a series whose newest sample is older than max(3 model steps, this) is stale",
    )
    p.add_argument(
        "--model-uri-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a spec.model.uri must start with one of these (repeatable; default models:/ and /models/)",
    )
    p.add_argument(
        "--model-max-bytes", type=int, default=512 * 1024**2, help="largest model accepted (default 512 MiB)"
    )
    p.add_argument("--model-load-timeout", type=float, default=120.0, metavar="SECONDS", help="default 120")
    p.add_argument(
        "--inference-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a forecast taking longer is abandoned for the fallback rule (default 30)",
    )
    p.add_argument("--log-format", choices=("plain", "json"), default="plain")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.prometheus_url:
        p.error("--prometheus-url (or $HARMONY_PROMETHEUS_URL) is required")
    if not args.no_leader_election and not args.lease_namespace:
        p.error("leader election needs --lease-namespace (or $POD_NAMESPACE); or pass --no-leader-election")
    if args.shards < 1 or not 0 <= args.shard < args.shards:
        p.error(
            f"need --shards >= 1 and 0 <= --shard < --shards, got --shard {args.shard} --shards {args.shards}"
        )
    if args.shards > 1 and args.no_leader_election:
        p.error("--shards above 1 needs leader election: each shard is a Lease")
    if args.num_samples < 10:
        p.error("--num-samples must be at least 10")
    if not 0 < args.retry_period < args.renew_deadline < args.lease_duration:
        p.error("need 0 < --retry-period < --renew-deadline < --lease-duration")
    if args.model_max_bytes <= 0 or args.model_load_timeout <= 0 or args.inference_timeout <= 0:
        p.error("--model-max-bytes, --model-load-timeout and --inference-timeout must be positive")
    if any(not prefix.strip() for prefix in args.model_uri_prefix):
        p.error("--model-uri-prefix must not be empty")
    args.model_uri_prefix = args.model_uri_prefix or ["models:/", "/models/"]
    try:
        args.prometheus_auth = PrometheusAuth(
            bearer_token_file=args.prometheus_bearer_token_file,
            username_file=args.prometheus_username_file,
            password_file=args.prometheus_password_file,
            ca_file=args.prometheus_ca_file,
        )
    except ValueError as exc:
        p.error(str(exc))
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
            shards=args.shards,
            shard=args.shard,
            num_samples=args.num_samples,
            model_cache_dir=os.environ.get("HARMONY_MODEL_CACHE_DIR") or None,
            min_staleness_s=args.min_staleness,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
            model_uri_prefixes=tuple(args.model_uri_prefix),
            model_max_bytes=args.model_max_bytes,
            model_load_timeout_s=args.model_load_timeout,
            inference_timeout_s=args.inference_timeout,
            bind_address=args.bind_address,
            prometheus_auth=args.prometheus_auth,
            prometheus_url_prefixes=tuple(args.prometheus_url_prefix),
            query_namespace_label=args.query_namespace_label or None,
        )
    )
    host = f"[{args.bind_address}]" if ":" in args.bind_address else args.bind_address
    liveness = f"http://{host}:{args.health_port}/healthz" if args.health_port else None
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
