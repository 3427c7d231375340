"""harmony.output: progress lines with an ETA, the interval from the environment, durations."""

from __future__ import annotations

import pytest

from harmony.output import Progress, duration, progress_every_s


def test_progress_lines_every_interval_with_an_eta() -> None:
    now = [0.0]
    lines: list[str] = []
    p = Progress("replays", 10, log=lines.append, every_s=5.0, unit="settings", clock=lambda: now[0])
    for t in (1.0, 2.0, 6.0, 7.0):  # a line only once 5 s have passed since the last one
        now[0] = t
        p.advance(1, "now hpa")
    assert lines == ["replays: 3/10 settings (30%), 6s elapsed, ETA 14s; now hpa"]
    now[0] = 20.0
    p.advance(7)
    assert lines[-1] == "replays: 10/10 settings (100%), 20s elapsed"
    p.finish()  # the closing line is printed once
    assert len(lines) == 2


def test_a_bounded_total_says_at_most_and_an_early_finish_closes() -> None:
    now = [0.0]
    lines: list[str] = []
    p = Progress(
        "train", 40, log=lines.append, every_s=0.0, unit="epochs", bounded=True, clock=lambda: now[0]
    )
    now[0] = 30.0
    p.advance(1, "val_loss 0.8")
    assert lines == ["train: 1/40 epochs (2%), 30s elapsed, ETA at most 19m30s; val_loss 0.8"]
    now[0] = 90.0
    p.done = 3
    p.finish("stopped early")
    assert lines[-1] == "train: 3/40 epochs (8%), 1m30s elapsed; stopped early"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARMONY_PROGRESS_SECONDS", raising=False)
    assert progress_every_s() == 10.0
    monkeypatch.setenv("HARMONY_PROGRESS_SECONDS", "0")
    assert progress_every_s() == 0.0
    monkeypatch.setenv("HARMONY_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match=r"HARMONY_PROGRESS_SECONDS='soon': expected a number of seconds"):
        progress_every_s()


def test_duration() -> None:
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3720)] == ["0s", "59s", "1m01s", "59m59s", "1h02m"]
