"""Where the backtest's per-series work runs: in this process, or on a Ray cluster.

The work of a part (validation or test) is split into groups of series (`backtest.series_per_group`; one
group by default). A group's forecasts (the forecaster's draws, their medians, the classical models' point
forecasts) are computed where the group lives and stay there; the search then asks every group to replay a
setting and gathers the score rows in the order of the series. The draws' seeds follow the group (group g
of a part draws with the part's seed offset + g x GROUP_SEED_STRIDE), never the executor, so the local and
the Ray executor give the same tables for the same grouping.

`LocalExecutor` runs the groups one after the other in this process. `RayExecutor` places them on
`workers` Ray actors (by default one per CPU of the cluster), each holding its groups' series and
forecasts, with the trace and the forecaster shipped once through the object store. The replay and scoring
code (`harmony.backtest.replay`, `replay_setting`) does not know which executor ran it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harmony.backtest.replay import (
    Draws,
    SeriesData,
    Settings,
    classical_forecasts,
    forecast_draws,
    median_draws,
)
from harmony.backtest.sections import CLASSICAL_POLICIES, DRAW_POLICIES
from harmony.backtest.sweep import Knobs, Replayed, replay_setting
from harmony.data.trace import Trace
from harmony.distributed import connect_ray
from harmony.model.base import Forecaster
from harmony.model.classical import ForecastStats

GROUP_SEED_STRIDE = 10_000_019  # above any group's count of sampled batches, so no two groups share a seed


@dataclass
class PartForecasts:
    """What computing a part's forecasts took: seconds per stage, the classical models' statistics, and the
    number of decisions drawn for."""

    seconds: dict[str, float] = field(default_factory=dict)
    classical: dict[str, ForecastStats] = field(default_factory=dict)
    decisions: int = 0

    def add(self, other: PartForecasts) -> None:
        for k, v in other.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, st in other.classical.items():
            self.classical.setdefault(k, ForecastStats()).add(st)
        self.decisions += other.decisions


class SeriesGroup:
    """One group of series of one part: its forecasts, computed once, and the replay of any setting."""

    def __init__(self, datas: Sequence[SeriesData], settings: Settings, seed_offset: int) -> None:
        self.datas = list(datas)
        self.settings = settings
        self.seed_offset = seed_offset
        self.draws: dict[str, dict[str, Draws]] = {}

    def forecast(
        self, forecaster: Forecaster | None, trace: Trace, enabled: Sequence[str], window: int
    ) -> PartForecasts:
        out = PartForecasts()
        if forecaster is not None and any(p in DRAW_POLICIES for p in enabled):
            t0 = time.perf_counter()
            model = forecast_draws(forecaster, trace, self.datas, self.settings, seed_offset=self.seed_offset)
            self.draws["model"] = model
            self.draws["median"] = {sid: median_draws(d) for sid, d in model.items()}
            out.seconds["draws"] = time.perf_counter() - t0
            out.decisions = sum(len(d.decisions) for d in self.datas)
        for name in sorted(CLASSICAL_POLICIES):
            if name not in enabled:
                continue
            t0 = time.perf_counter()
            sweep = getattr(self.settings.policies, name)
            self.draws[name], out.classical[name] = classical_forecasts(
                name, sweep, self.datas, self.settings, window
            )
            out.seconds[name + "_fit"] = time.perf_counter() - t0
        return out

    def replay(self, knobs: Knobs, keep_capacity: bool) -> Replayed:
        return replay_setting(knobs, self.datas, self.draws, self.settings, keep_capacity)


def seeded_groups(
    datas: Sequence[SeriesData], per_group: int | None, seed_offset: int
) -> list[tuple[list[SeriesData], int]]:
    """The groups of a part with the seed offset of each (the part's, + g x GROUP_SEED_STRIDE)."""
    return [(g, seed_offset + k * GROUP_SEED_STRIDE) for k, g in enumerate(group_series(datas, per_group))]


def group_series(datas: Sequence[SeriesData], per_group: int | None) -> list[list[SeriesData]]:
    """Consecutive groups of `per_group` series (one group of all when None)."""
    if per_group is None:
        return [list(datas)]
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    return [list(datas[i : i + per_group]) for i in range(0, len(datas), per_group)]


class Part(Protocol):
    """A part's groups, wherever they live: their forecasts are computed, and settings replayed on them."""

    forecasts: PartForecasts

    def replay(self, knobs: Knobs, keep_capacity: bool) -> Replayed: ...

    def draws(self) -> dict[str, dict[str, Draws]]: ...

    def close(self) -> None: ...


class Executor(Protocol):
    name: str

    def part(
        self,
        datas: Sequence[SeriesData],
        settings: Settings,
        forecaster: Forecaster | None,
        trace: Trace,
        enabled: Sequence[str],
        window: int,
        seed_offset: int,
    ) -> Part: ...


# --- in this process ----------------------------------------------------------------------------------------


class LocalPart:
    def __init__(self, groups: list[SeriesGroup], forecasts: PartForecasts) -> None:
        self.groups = groups
        self.forecasts = forecasts

    def replay(self, knobs: Knobs, keep_capacity: bool) -> Replayed:
        return [r for g in self.groups for r in g.replay(knobs, keep_capacity)]

    def draws(self) -> dict[str, dict[str, Draws]]:
        out: dict[str, dict[str, Draws]] = {}
        for g in self.groups:
            for source, by in g.draws.items():
                out.setdefault(source, {}).update(by)
        return out

    def close(self) -> None:
        self.groups = []


@dataclass
class LocalExecutor:
    """Every group in this process, one after the other."""

    series_per_group: int | None = None
    name: str = "local"

    def part(
        self,
        datas: Sequence[SeriesData],
        settings: Settings,
        forecaster: Forecaster | None,
        trace: Trace,
        enabled: Sequence[str],
        window: int,
        seed_offset: int,
    ) -> LocalPart:
        groups = [
            SeriesGroup(g, settings, o) for g, o in seeded_groups(datas, self.series_per_group, seed_offset)
        ]
        total = PartForecasts()
        for g in groups:
            total.add(g.forecast(forecaster, trace, enabled, window))
        return LocalPart(groups, total)


# --- on Ray -------------------------------------------------------------------------------------------------


class _Worker:
    """A Ray actor's state: several groups of one part (the groups of a worker run one after the other)."""

    def __init__(self, groups: list[tuple[list[SeriesData], int]], settings: Settings) -> None:
        self.groups = [SeriesGroup(datas, settings, offset) for datas, offset in groups]

    def forecast(
        self, forecaster: Forecaster | None, trace: Trace, enabled: Sequence[str], window: int
    ) -> list[PartForecasts]:
        return [g.forecast(forecaster, trace, enabled, window) for g in self.groups]

    def replay(self, knobs: Knobs, keep_capacity: bool) -> list[Replayed]:
        return [g.replay(knobs, keep_capacity) for g in self.groups]

    def draws(self) -> list[dict[str, dict[str, Draws]]]:
        return [g.draws for g in self.groups]


class RayPart:
    def __init__(self, actors: list[Any], order: list[tuple[int, int]], forecasts: PartForecasts) -> None:
        self.actors = actors
        self.order = order  # group k -> (actor, position among the actor's groups)
        self.forecasts = forecasts

    def _gather(self, per_actor: list[list[Any]]) -> list[Any]:
        return [per_actor[a][i] for a, i in self.order]

    def replay(self, knobs: Knobs, keep_capacity: bool) -> Replayed:
        import ray

        per_actor = ray.get([a.replay.remote(knobs, keep_capacity) for a in self.actors])
        return [r for group in self._gather(per_actor) for r in group]

    def draws(self) -> dict[str, dict[str, Draws]]:
        import ray

        out: dict[str, dict[str, Draws]] = {}
        for d in self._gather(ray.get([a.draws.remote() for a in self.actors])):
            for source, by in d.items():
                out.setdefault(source, {}).update(by)
        return out

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


@dataclass
class RayExecutor:
    """The groups on Ray actors: `address` None joins the cluster RAY_ADDRESS names, or starts a local one;
    "auto" joins the running local cluster; "ray://host:10001" a remote one. `workers` actors (default: one
    per CPU of the cluster), each owning a share of the groups."""

    series_per_group: int
    address: str | None = None
    workers: int | None = None
    name: str = "ray"
    # Objects already in the store (the trace and the forecaster), by identity: both parts read the same.
    _shipped: dict[int, Any] = field(default_factory=dict, init=False, repr=False)

    def _ref(self, ray: Any, obj: Any) -> Any:
        if id(obj) not in self._shipped:
            self._shipped[id(obj)] = (obj, ray.put(obj))  # the object kept alive, so its id stays its own
        return self._shipped[id(obj)][1]

    def part(
        self,
        datas: Sequence[SeriesData],
        settings: Settings,
        forecaster: Forecaster | None,
        trace: Trace,
        enabled: Sequence[str],
        window: int,
        seed_offset: int,
    ) -> RayPart:
        ray = connect_ray(self.address)
        groups = seeded_groups(datas, self.series_per_group, seed_offset)
        resources: dict[str, float] = ray.cluster_resources()
        n = self.workers or max(1, int(resources.get("CPU", 1)))
        n = min(n, len(groups))
        shares: list[list[tuple[list[SeriesData], int]]] = [[] for _ in range(n)]
        order: list[tuple[int, int]] = []
        for k, group in enumerate(groups):
            a = k % n
            order.append((a, len(shares[a])))
            shares[a].append(group)
        actor: Any = ray.remote(num_cpus=1)(_Worker)  # an actor class: its handles are untyped
        actors: list[Any] = [actor.remote(share, settings) for share in shares]
        # Shipped once: every actor reads the same objects from the store.
        trace_ref, model_ref = self._ref(ray, trace), self._ref(ray, forecaster)
        per_actor = ray.get([a.forecast.remote(model_ref, trace_ref, list(enabled), window) for a in actors])
        total = PartForecasts()
        for f in [per_actor[a][i] for a, i in order]:
            total.add(f)
        return RayPart(actors, order, total)


def make_executor(
    kind: str, *, series_per_group: int | None, address: str | None = None, workers: int | None = None
) -> Executor:
    if kind == "local":
        return LocalExecutor(series_per_group)
    if kind == "ray":
        if series_per_group is None:
            raise ValueError("the ray executor distributes groups of series: set series_per_group")
        return RayExecutor(series_per_group, address, workers)
    raise ValueError(f"unknown executor {kind!r}; expected local or ray")
