"""HPA-style rate rules (`behavior.scaleUp/scaleDown.policies` and `selectPolicy`), shared by the
`Stabilizer` (HARMONY's own decisions, in the backtest and the operator alike) and the HPA policy.

Rate rules: a rule "Pods v per p seconds" allows the count at the start of the period plus (or minus) v;
"Percent v per p seconds" allows ceil(start * (1 + v/100)) up and floor(start * (1 - v/100)) down, where the
start of the period is the current count less the changes made within the last p seconds. `selectPolicy`
Max takes the rule allowing the largest change, Min the smallest, Disabled forbids scaling that way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_PERIOD_S", "RateLimit", "RateRule"]

_RULE = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>%|pods?)\s*/\s*(?P<period>\d+(?:\.\d+)?)\s*s$")
MAX_PERIOD_S = 1800.0  # the API server's limit on periodSeconds


@dataclass(frozen=True)
class RateRule:
    """One HPA scaling policy: at most `value` pods (or percent) per `period_s` seconds."""

    kind: Literal["Pods", "Percent"]
    value: float
    period_s: float

    def __post_init__(self) -> None:
        if self.kind not in ("Pods", "Percent"):
            raise ValueError(f"rate rule kind must be Pods or Percent, got {self.kind!r}")
        if not self.value > 0 or (self.kind == "Pods" and self.value != int(self.value)):
            raise ValueError(f"rate rule value must be > 0 (a whole number of pods), got {self.value}")
        if not 0 < self.period_s <= MAX_PERIOD_S:
            raise ValueError(f"rate rule period must be in (0, {MAX_PERIOD_S:g}] s, got {self.period_s}")

    def text(self) -> str:
        unit = "%" if self.kind == "Percent" else ("pod" if self.value == 1 else "pods")
        return f"{self.value:g}{unit}/{self.period_s:g}s"


@dataclass(frozen=True)
class RateLimit:
    """The rate rules of one direction of `behavior` and how they combine (`selectPolicy`)."""

    rules: tuple[RateRule, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"

    def __post_init__(self) -> None:
        if self.select not in ("Max", "Min", "Disabled"):
            raise ValueError(f"selectPolicy must be Max, Min or Disabled, got {self.select!r}")
        if self.select != "Disabled" and not self.rules:
            raise ValueError("a direction that is not Disabled needs at least one rate rule")

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """'100%/15s,4pods/15s' (rules, selectPolicy Max), 'min:1pod/600s,10%/600s' (Min), 'disabled'."""
        raw = text.strip()
        if raw.lower() == "disabled":
            return cls((), "Disabled")
        select: Literal["Max", "Min"] = "Max"
        for prefix, sel in (("min:", "Min"), ("max:", "Max")):
            if raw.lower().startswith(prefix):
                raw, select = raw[len(prefix) :], sel  # type: ignore[assignment]
        rules = []
        for part in raw.split(","):
            m = _RULE.match(part.strip().lower())
            if m is None:
                raise ValueError(
                    f"rate rule {part.strip()!r}: expected VALUE%/PERIODs or VALUEpods/PERIODs "
                    "(e.g. 100%/15s, 4pods/15s, 1pod/600s), rules joined by ',' and optionally prefixed "
                    "by 'min:' (selectPolicy Min), or 'disabled'"
                )
            kind: Literal["Pods", "Percent"] = "Percent" if m["unit"] == "%" else "Pods"
            rules.append(RateRule(kind, float(m["value"]), float(m["period"])))
        return cls(tuple(rules), select)

    def text(self) -> str:
        if self.select == "Disabled":
            return "disabled"
        body = ",".join(r.text() for r in self.rules)
        return f"min:{body}" if self.select == "Min" else body

    @property
    def longest_period_s(self) -> float:
        return max((r.period_s for r in self.rules), default=0.0)

    def limit(self, current: int, added: Sequence[float], deleted: Sequence[float], up: bool) -> int:
        """The furthest count this direction allows from `current`, given the pods added and deleted in
        each rule's period (`added[k]`, `deleted[k]` for rule k)."""
        if self.select == "Disabled":
            return current
        proposals = []
        for rule, plus, minus in zip(self.rules, added, deleted, strict=True):
            start = current - plus + minus  # the count at the start of the rule's period
            if rule.kind == "Pods":
                proposals.append(start + rule.value if up else start - rule.value)
            elif up:
                proposals.append(math.ceil(start * (1.0 + rule.value / 100.0) - 1e-9))
            else:
                proposals.append(math.floor(start * (1.0 - rule.value / 100.0) + 1e-9))
        # Max: the rule allowing the largest change wins (the highest limit up, the lowest down).
        largest = (max if up else min) if self.select == "Max" else (min if up else max)
        return int(largest(proposals))
