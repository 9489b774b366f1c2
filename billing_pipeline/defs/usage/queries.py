"""The SQL statements beside this package (sql/*.sql), as SQLAlchemy text() with bound parameters."""

from __future__ import annotations

import sqlalchemy as sa

from billing_pipeline import sql_files


def sql(name: str) -> sa.TextClause:
    return sql_files.statement("billing_pipeline.defs.usage", name)
