"""The SQL beside each domain's code (`<package>/sql/<name>.sql`), read once per process."""

from __future__ import annotations

from functools import cache
from importlib import resources

import sqlalchemy as sa


@cache
def read(package: str, name: str) -> str:
    """The text of <package>/sql/<name>; '.sql' is added when the name has no suffix."""
    filename = name if name.endswith(".sql") else f"{name}.sql"
    return resources.files(package).joinpath("sql", filename).read_text(encoding="utf-8")


@cache
def statement(package: str, name: str) -> sa.TextClause:
    """The same, as a SQLAlchemy text() with bound :parameters."""
    return sa.text(read(package, name))
