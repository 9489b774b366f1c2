"""The SQL statements beside this package (sql/*.sql), as SQLAlchemy text() with bound parameters."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa

SQL_DIR = Path(__file__).resolve().parent / "sql"


@cache
def sql(name: str) -> sa.TextClause:
    return sa.text((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8"))
