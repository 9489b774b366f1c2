"""Invoice numbers: gap-free per issuer and year, assigned at finalization ('INV-2026-000001').

A counter row per (issuer, year) is advanced in the finalizing transaction, for the whole batch at
once: the row lock serializes concurrent finalizations, and a rollback gives the numbers back, so the
sequence never has a gap (a PostgreSQL SEQUENCE would: its values are not transactional).
The year is that of the finalization (the issue date), in UTC.
"""

from __future__ import annotations

import sqlalchemy as sa

DEFAULT_ISSUER = "INV"
WIDTH = 6

_RESERVE = sa.text(
    """
    INSERT INTO billing.invoice_number_counters AS c (issuer, year, last_number)
    VALUES (:issuer, :year, :count)
    ON CONFLICT (issuer, year) DO UPDATE SET last_number = c.last_number + excluded.last_number
    RETURNING last_number - :count + 1
    """
)


def format_number(issuer: str, year: int, sequence: int) -> str:
    return f"{issuer}-{year}-{sequence:0{WIDTH}d}"


def reserve(conn: sa.Connection, issuer: str, year: int, count: int) -> int:
    """Reserve `count` consecutive numbers in the caller's transaction; returns the first one."""
    if count < 1:
        raise ValueError("reserve at least one number")
    return conn.execute(_RESERVE, {"issuer": issuer, "year": year, "count": count}).scalar_one()
