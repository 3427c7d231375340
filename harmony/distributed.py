"""Joining a Ray cluster for the work harmony spreads over one (the backtest's groups of series, the
evaluation's series). Ray is an extra (`pip install 'harmony-autoscaler[ray]'`) imported only here and by
the code that asked for it."""

from __future__ import annotations

from typing import Any


def connect_ray(address: str | None) -> Any:
    """The `ray` module, connected: `address` None joins the cluster RAY_ADDRESS names or starts a local
    one; "auto" joins the running local cluster; "ray://host:10001" a remote one. An existing connection
    of this process is kept."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: pip install 'harmony-autoscaler[ray]'") from None
    if not ray.is_initialized():
        # The driver's own log lines are harmony's; the workers' go to Ray's log files.
        ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    return ray
