"""Progress of a backtest's replays: how many settings the knob search and the test replay have done, out of
an upper bound computed from the knob lists and the tuning section, with an ETA."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harmony.backtest.replay import Settings
from harmony.backtest.sweep import CRITERIA, Evaluator, Knobs, knob_space
from harmony.output import Progress


def search_budget(policy: str, settings: Settings) -> int:
    """The most settings `tune` can replay for `policy` on the validation part (both criteria)."""
    if policy == "oracle":
        return 1
    space = knob_space(policy, settings)
    tuning = settings.tuning
    primary = len(space.ordered())
    grid = len(space.secondary_grid())
    refine = len(CRITERIA) * tuning.refine
    if grid <= tuning.max_grid:
        return grid * primary + refine  # both criteria read the same grid (replays are cached)
    moves = sum(len(values) - 1 for values in space.secondary.values())
    return len(CRITERIA) * (1 + tuning.passes * moves) * primary + refine


def test_budget(policy: str, settings: Settings) -> int:
    """The most settings replayed on the test part for `policy`: the knobs chosen for each criterion, and
    each one's primary sweep."""
    if policy == "oracle":
        return 1
    return len(CRITERIA) * (1 + len(knob_space(policy, settings).ordered()))


def track(
    evaluator: Evaluator,
    part: str,
    policies: Sequence[str],
    settings: Settings,
    log: Callable[[str], None],
) -> Progress:
    """Attach a progress line to every setting `evaluator` replays (not to its cache hits)."""
    budget = search_budget if part == "validation" else test_budget
    total = sum(budget(p, settings) for p in policies)
    progress = Progress(f"{part}: settings replayed", total, log=log, bounded=True)

    def on_replay(knobs: Knobs) -> None:
        progress.advance(1, f"now {knobs.policy}")

    evaluator.on_replay = on_replay
    return progress
