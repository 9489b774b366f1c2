"""Markdown tables for asset metadata (what finance reads in the Dagster UI)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    # a '|' or a line break in a finding's detail would break the table
    return "" if value is None else str(value).replace("|", "/").replace("\n", " ")


def table(
    columns: Sequence[str], rows: Iterable[Sequence], *, empty: str | None = None, limit: int | None = None
) -> str:
    """A table of `rows` (one value per column); `empty` instead when there is none; at most `limit`
    rows, with a last line saying how many more there were."""
    rows = [list(r) for r in rows]
    if not rows and empty is not None:
        return empty
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows[:limit]]
    if limit is not None and len(rows) > limit:
        lines.append(f"| ... {len(rows) - limit} more |" + " |" * (len(columns) - 1))
    return "\n".join(lines)
