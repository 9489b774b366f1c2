"""Schema migrations: the numbered plain SQL files in `sql/`, each applied once, in order.

Each file runs in its own transaction together with the row that records it (name and SHA-256 of
its content), so a file is either applied and recorded or neither. A file whose content changed
after it was applied is refused before anything runs. A transaction-level advisory lock makes
concurrent upgrades (two processes starting at once) apply each file once.

Why not yoyo-migrations or pyway: yoyo records a migration in a separate transaction from its body
and keeps no checksum of the content; pyway builds its SQL by string interpolation on psycopg2,
also records outside the migration's transaction, and pulls in MySQL and DuckDB drivers. This
runner is the few lines those libraries would have saved, with the two guarantees they lack.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x62696C6C  # "bill": the advisory lock all upgrades share
MIN_SERVER_VERSION_NUM = 150000  # PostgreSQL 15; 15 to 18 are supported and tested (README)

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: str
    name: str
    state: str  # applied | pending | changed | missing-file
    applied_at: datetime | None


def discover(sql_dir: Path = SQL_DIR) -> list[MigrationFile]:
    files = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_words.sql")
        files.append(MigrationFile(match.group(1), path.name, path))
    versions = [f.version for f in files]
    dupes = sorted({v for v in versions if versions.count(v) > 1})
    if dupes:
        raise MigrationError(f"two migration files share the number(s) {', '.join(dupes)}")
    return files


def _applied(conn: sa.Connection) -> dict[str, sa.Row]:
    conn.exec_driver_sql(_LEDGER)
    rows = conn.execute(sa.text("SELECT version, name, checksum, applied_at FROM public.schema_migrations"))
    return {row.version: row for row in rows}


def status(engine: Engine, sql_dir: Path = SQL_DIR) -> list[MigrationStatus]:
    files = discover(sql_dir)
    with engine.begin() as conn:
        applied = _applied(conn)
    result = []
    for f in files:
        row = applied.pop(f.version, None)
        if row is None:
            result.append(MigrationStatus(f.version, f.name, "pending", None))
        elif row.checksum != f.checksum or row.name != f.name:
            result.append(MigrationStatus(f.version, f.name, "changed", row.applied_at))
        else:
            result.append(MigrationStatus(f.version, f.name, "applied", row.applied_at))
    for row in applied.values():
        result.append(MigrationStatus(row.version, row.name, "missing-file", row.applied_at))
    return sorted(result, key=lambda s: s.version)


def _refuse_changed(files: list[MigrationFile], applied: dict[str, sa.Row]) -> None:
    changed = [
        f"{f.name} (applied {applied[f.version].applied_at:%Y-%m-%d %H:%M} with checksum"
        f" {applied[f.version].checksum[:12]}, the file now has {f.checksum[:12]})"
        for f in files
        if f.version in applied and (applied[f.version].checksum != f.checksum or applied[f.version].name != f.name)
    ]
    if changed:
        raise MigrationError(
            "refusing to migrate: already applied migration file(s) changed: "
            + "; ".join(changed)
            + ". Put the change in a new numbered file instead."
        )


def refuse_old_server(version_num: int, version: str) -> None:
    if version_num < MIN_SERVER_VERSION_NUM:
        raise MigrationError(
            f"refusing to migrate: this server runs PostgreSQL {version}, and billing_pipeline needs"
            f" PostgreSQL 15 or later."
        )


def upgrade(engine: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every pending file; returns the names applied (empty when up to date)."""
    files = discover(sql_dir)
    with engine.begin() as conn:
        version_num, version = conn.execute(
            sa.text("SELECT current_setting('server_version_num')::int, current_setting('server_version')")
        ).one()
        refuse_old_server(version_num, version)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        _refuse_changed(files, _applied(conn))
    done = []
    for f in files:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            if f.version in _applied(conn):
                continue  # applied meanwhile by a concurrent upgrade
            try:
                # Straight to the driver with no parameters: psycopg sends the file as one simple
                # query (several statements, and '%' left alone), inside this transaction.
                conn.connection.cursor().execute(f.sql)
            except Exception as exc:
                raise MigrationError(f"{f.name} failed and was rolled back: {exc}") from exc
            conn.execute(
                sa.text("INSERT INTO public.schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                {"v": f.version, "n": f.name, "c": f.checksum},
            )
        done.append(f.name)
    return done
