"""What the commands print: third-party chatter silenced, and progress lines a log file can show.

`quiet_third_party()` is called once by the command line before any heavy import. It keeps warnings and
errors from every library, and drops only what a user cannot act on: Lightning's tips and accelerator
lines, MLflow's INFO lines and artifact progress bars, and deprecation warnings raised inside the
libraries themselves (harmony pins their versions; the user cannot fix their internals).

`Progress` prints `label: done/total (pct), elapsed, ETA` at most every `every_s` seconds, and once at
the end: plain lines, so that a run whose output goes to a file or a CI log shows where it is.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

# Seconds between two progress lines; HARMONY_PROGRESS_SECONDS changes it (0: a line at every step).
DEFAULT_EVERY_S = 10.0

# Loggers whose INFO lines are chatter for a command-line user (their warnings still show). Lightning sets
# its package logger to INFO when it is imported, so the modules that emit are named too: a child logger's
# own level is left alone by that import.
_CHATTY_LOGGERS = (
    "pytorch_lightning",
    "pytorch_lightning.utilities.rank_zero",
    "pytorch_lightning.accelerators",
    "pytorch_lightning.trainer",
    "lightning_fabric",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.accelerators",
    "lightning",
    "mlflow",
    "alembic",
)

# Deprecation warnings raised by one library about another's internals (matched on the message).
_LIBRARY_DEPRECATIONS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # pytorch_lightning's _pytree on torch >= 2.10
    r".*LeafSpec.*is deprecated.*",
)


def quiet_third_party() -> None:
    """Silence the chatter named in the module doc, for this process (and the processes it starts)."""
    # Read by MLflow when it is imported, and by Lightning's DDP children through the environment.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=pattern)
    libraries = r"(pytorch_lightning|lightning_fabric|lightning|mlflow)"
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=libraries)


def progress_every_s() -> float:
    """The interval between progress lines: $HARMONY_PROGRESS_SECONDS, else DEFAULT_EVERY_S."""
    raw = os.environ.get("HARMONY_PROGRESS_SECONDS")
    if raw is None or not raw.strip():
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"HARMONY_PROGRESS_SECONDS={raw!r}: expected a number of seconds >= 0") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"HARMONY_PROGRESS_SECONDS={raw!r}: expected a number of seconds >= 0")
    return value


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class Progress:
    """Counts steps of a known (or bounded) total and prints a line now and then with an ETA.

    `bounded=True` says the total is an upper bound (an early-stopped training, a search that may end
    early): the ETA is then printed as "at most".
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        log: Callable[[str], None] | None = None,
        every_s: float | None = None,
        unit: str = "",
        bounded: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = max(0, int(total))
        self.log = log or _stdout
        self.every_s = progress_every_s() if every_s is None else every_s
        self.unit = unit
        self.bounded = bounded
        self.clock = clock
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._finished = False

    def line(self, note: str = "", *, eta: bool = True) -> str:
        elapsed = self.clock() - self.start
        unit = f" {self.unit}" if self.unit else ""
        head = f"{self.label}: {self.done}/{self.total}{unit}"
        if self.total:
            head += f" ({100 * self.done / self.total:.0f}%)"
        head += f", {duration(elapsed)} elapsed"
        if eta and 0 < self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
            head += f", ETA {'at most ' if self.bounded else ''}{duration(left)}"
        return head + (f"; {note}" if note else "")

    def advance(self, steps: int = 1, note: str = "") -> None:
        self.done = min(self.total, self.done + steps) if self.total else self.done + steps
        now = self.clock()
        if self.done >= self.total and self.total:
            self.finish(note)
        elif now - self._last >= self.every_s:
            self._last = now
            self.log(self.line(note))

    def finish(self, note: str = "") -> None:
        """The closing line (once), e.g. when an early stop ends before the total."""
        if self._finished:
            return
        self._finished = True
        self.log(self.line(note, eta=False))
