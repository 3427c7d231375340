"""The optional per-namespace query guard: a tenant's PromQL may select only its own namespace's series.

With `--query-namespace-label LABEL` (chart value `tenancy.queryNamespaceLabel`, e.g. `namespace`), every
series selector in a HarmonyAutoscaler's indicator queries must carry the matcher `LABEL="<the resource's
namespace>"` - in each alternative of an `or` inside braces, in range and subquery selectors alike - or the
query is refused before it reaches Prometheus (`MetricsAvailable=False/QueryNotAllowed`). The query is
parsed by `promql-parser` (Prometheus' grammar, a maintained Rust parser), not matched by regular
expressions, so a selector cannot hide inside a function, an aggregation or a binary expression.
"""

from __future__ import annotations

from typing import Any

import promql_parser

__all__ = ["QueryNotAllowed", "check_query"]


class QueryNotAllowed(ValueError):
    pass


def check_query(query: str, label: str, namespace: str) -> None:
    """Raise `QueryNotAllowed` unless every series selector of `query` has `label="namespace"`."""
    try:
        expr = promql_parser.parse(query)
    except ValueError as exc:
        raise QueryNotAllowed(f"query {query!r} does not parse: {exc}") from None
    offending: list[str] = []

    def confined(matchers: Any) -> bool:
        return any(
            m.name == label and m.op == promql_parser.MatchOp.Equal and m.value == namespace for m in matchers
        )

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            groups = [list(g) for g in node.matchers.or_matchers] or [list(node.matchers.matchers)]
            if not all(confined(g) for g in groups):
                offending.append(str(node))
        return True

    promql_parser.walk(expr, visit)
    if offending:
        raise QueryNotAllowed(
            f'query {query!r}: every series selector needs {label}="{namespace}"; '
            f"these do not: {', '.join(offending)}"
        )
