"""The search that chooses each policy's knobs on the validation part (`tune`).

It replays, on the validation part only:

1. every secondary setting when there are at most `tuning.max_grid` of them, else a coordinate search: from
   the first listed values, each secondary knob in turn takes each of its values with the others fixed, the
   best is kept, for at most `tuning.passes` rounds; a secondary setting is judged by its primary sweep
   (every listed primary value), by the cheapest primary value that meets the criterion;
2. then `tuning.refine` bisection steps of the primary knob between the cheapest listed value that meets
   the criterion and the next looser one (linear in utilisation, margin and headroom, logarithmic in eps).

The criterion is either "total" (violated steps over all series at most the target rate) or "service"
(every series at most the target rate). Every replay is cached by setting (`Evaluator`), so the two criteria
share work, and the choice for each criterion is the cheapest of all the settings both searches replayed
that meets it; where none does, the one with the lowest rate (total or worst series), flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harmony.backtest.sweep import (
    CRITERIA,
    RATE_TOLERANCE,
    Criterion,
    Evaluator,
    Knobs,
    KnobSpace,
    knob_space,
)

__all__ = ["Tuned", "tune"]

_CRITERIA: tuple[Criterion, ...] = tuple(CRITERIA)


@dataclass(frozen=True)
class Tuned:
    """The setting chosen for one policy and criterion on the validation part, and what it did there."""

    policy: str
    criterion: str
    knobs: Knobs
    met: bool  # did some setting meet the criterion on the validation part?
    val: dict[str, Any]  # the chosen setting's validation summary
    replays: int  # settings the search replayed for this policy (both criteria share them)


def _rate(summary: Mapping[str, Any], criterion: Criterion) -> float:
    return float(summary["violation_rate" if criterion == "total" else "worst_violation_rate"])


def _meets(summary: Mapping[str, Any], criterion: Criterion, target: float) -> bool:
    rate = _rate(summary, criterion)
    return math.isfinite(rate) and rate <= target + RATE_TOLERANCE


def _better(a: Mapping[str, Any], b: Mapping[str, Any] | None, criterion: Criterion, target: float) -> bool:
    """Is summary `a` a better choice than `b`: meeting the criterion beats not; then the cheaper (when both
    meet it) or the safer (when neither does)."""
    if b is None:
        return True
    ma, mb = _meets(a, criterion, target), _meets(b, criterion, target)
    if ma != mb:
        return ma
    if ma:
        return float(a["cost"]) < float(b["cost"])
    ra, rb = _rate(a, criterion), _rate(b, criterion)
    return ra < rb or (ra == rb and float(a["cost"]) < float(b["cost"]))


def _best_primary(
    ev: Evaluator, space: KnobSpace, policy: str, secondary: tuple[tuple[str, Any], ...], criterion: Criterion
) -> tuple[Knobs, dict[str, Any]]:
    target = ev.settings.target_violation_rate
    best: tuple[Knobs, dict[str, Any]] | None = None
    for value in space.ordered():
        knobs = Knobs(policy, float(value), secondary)
        s = ev.summary_of(knobs)
        if best is None or _better(s, best[1], criterion, target):
            best = (knobs, s)
    assert best is not None
    return best


def _search_secondary(
    ev: Evaluator, space: KnobSpace, policy: str, criterion: Criterion, max_grid: int, passes: int
) -> tuple[Knobs, dict[str, Any]]:
    target = ev.settings.target_violation_rate
    grid = space.secondary_grid()
    if len(grid) <= max_grid:
        best: tuple[Knobs, dict[str, Any]] | None = None
        for secondary in grid:
            cand = _best_primary(ev, space, policy, secondary, criterion)
            if best is None or _better(cand[1], best[1], criterion, target):
                best = cand
        assert best is not None
        return best
    current = {k: v[0] for k, v in space.secondary.items()}
    best = _best_primary(ev, space, policy, tuple(current.items()), criterion)
    for _ in range(passes):
        changed = False
        for name, values in space.secondary.items():
            for value in values:
                if value == current[name]:
                    continue
                trial = {**current, name: value}
                cand = _best_primary(ev, space, policy, tuple(trial.items()), criterion)
                if _better(cand[1], best[1], criterion, target):
                    best, current, changed = cand, trial, True
        if not changed:
            break
    return best


def _refine(
    ev: Evaluator, space: KnobSpace, chosen: Knobs, summary: dict[str, Any], criterion: Criterion, steps: int
) -> tuple[Knobs, dict[str, Any]]:
    """Bisect the primary knob between the chosen value (meets the criterion) and the next looser listed
    value (does not), keeping the cheapest value that meets it."""
    target = ev.settings.target_violation_rate
    if steps <= 0 or not _meets(summary, criterion, target):
        return chosen, summary
    ordered = space.ordered()
    pos = ordered.index(chosen.primary) if chosen.primary in ordered else -1
    if pos < 0 or pos + 1 >= len(ordered):
        return chosen, summary
    safe, loose = chosen.primary, ordered[pos + 1]
    best = (chosen, summary)
    for _ in range(steps):
        mid = space.between(safe, loose)
        knobs = Knobs(chosen.policy, float(mid), chosen.secondary)
        s = ev.summary_of(knobs)
        if _meets(s, criterion, target):
            safe = mid
            if float(s["cost"]) < float(best[1]["cost"]):
                best = (knobs, s)
        else:
            loose = mid
    return best


def tune(
    ev: Evaluator,
    policy: str,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Tuned]:
    """Choose the knobs of `policy` on the part `ev` replays (the validation part), for both criteria."""
    space = knob_space(policy, ev.settings)
    tuning = ev.settings.tuning
    target = ev.settings.target_violation_rate
    before = len(ev.rows)
    for crit in _CRITERIA:
        if policy == "oracle":
            ev.summary_of(Knobs("oracle", math.nan))
        else:
            knobs, s = _search_secondary(ev, space, policy, crit, tuning.max_grid, tuning.passes)
            _refine(ev, space, knobs, s, crit, tuning.refine)
    # The choice reads every setting the two searches replayed (one criterion's bisection may find a
    # setting the other's search did not visit): all of them are validation replays.
    replayed = [ev.knobs[key] for key in ev.rows if key[0] == policy]
    out: dict[str, Tuned] = {}
    for crit in _CRITERIA:
        best: tuple[Knobs, dict[str, Any]] | None = None
        for knobs in replayed:
            s = ev.summary_of(knobs)
            if best is None or _better(s, best[1], crit, target):
                best = (knobs, s)
        assert best is not None
        out[crit] = Tuned(policy, crit, best[0], _meets(best[1], crit, target), best[1], len(replayed))
    if log is not None:
        log(
            f"tuned {policy} on the validation part: {len(ev.rows) - before} settings replayed; "
            + "; ".join(
                f"{c}: {t.knobs.text()}{'' if t.met else ' (target not met)'}" for c, t in out.items()
            )
        )
    return out
