"""The warehouse's keys against Citus, distributing the large tables by `organisation_id`.

`docs/scaling.md` places every table of the live schema (distributed, reference or local) and lists
the keys Citus would reject under that placement. This test reads both from the document, derives the
rejected keys from the live schema of a freshly migrated database by Citus's rules, and fails when the
two differ: a new table nobody placed, a new key Citus would refuse, or a documented problem that a
migration has since fixed (then the document must lose that line).

Citus's rules used here (docs.citusdata.com, "Creating and Modifying Distributed Objects (DDL)"):
- a PRIMARY KEY, UNIQUE constraint or unique index of a distributed table must contain its
  distribution column;
- a foreign key between two distributed tables must include the distribution column on both sides,
  column for column (the tables being co-located);
- a distributed table may reference a reference table; a reference or local table may not reference
  a distributed table, and a distributed table may not reference a local one.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
DIST_COLUMN = "organisation_id"
PLACEMENTS = {"distributed", "reference", "local"}


def _section(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"docs/scaling.md has no '{name}' section"
    return match.group(1)


def documented_placement() -> dict[str, str]:
    rows = re.findall(r"^\|\s*`([a-z_]+\.[a-z_]+)`\s*\|\s*(\w+)\s*\|", _section(DOC.read_text(), "placement"), re.M)
    placement = dict(rows)
    assert len(placement) == len(rows), "a table is placed twice"
    assert set(placement.values()) <= PLACEMENTS, set(placement.values()) - PLACEMENTS
    return placement


def documented_rejects() -> set[str]:
    """The key names each list item starts with (`a`, `b`: why), its continuation lines joined."""
    items = re.split(r"^- ", _section(DOC.read_text(), "rejected-keys"), flags=re.M)[1:]
    names: set[str] = set()
    for item in items:
        head = " ".join(item.split()).split("`: ", 1)[0] + "`"
        names |= set(re.findall(r"`([a-z0-9_]+)`", head))
    return names


_TABLES = """
SELECT n.nspname || '.' || c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('billing', 'usage', 'recon') AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
# Primary keys, unique constraints and unique indexes, each with its columns (NULL for an expression).
_UNIQUES = """
SELECT n.nspname || '.' || t.relname AS tbl, i.relname AS name,
       (SELECT array_agg(a.attname) FROM pg_attribute a
         WHERE a.attrelid = t.oid AND a.attnum = ANY (x.indkey)) AS cols
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE x.indisunique AND n.nspname IN ('billing', 'usage', 'recon') AND NOT t.relispartition
"""
_FOREIGN_KEYS = """
SELECT n.nspname || '.' || t.relname AS tbl, con.conname AS name,
       rn.nspname || '.' || r.relname AS ref,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, pos)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.pos) AS cols,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, pos)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.pos) AS ref_cols
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class r ON r.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE con.contype = 'f' AND n.nspname IN ('billing', 'usage', 'recon') AND NOT t.relispartition
"""
_COLUMNS = """
SELECT n.nspname || '.' || c.relname FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attname = :col AND NOT a.attisdropped AND n.nspname IN ('billing', 'usage', 'recon')
"""


def citus_rejects(conn: sa.Connection, placement: dict[str, str]) -> dict[str, str]:
    """Every key (by name) that Citus would refuse under `placement`, with the reason."""
    rejects: dict[str, str] = {}
    with_column = set(conn.execute(sa.text(_COLUMNS), {"col": DIST_COLUMN}).scalars())
    live = set(conn.execute(sa.text(_TABLES)).scalars())
    for table, where in placement.items():
        if where == "distributed" and table in live and table not in with_column:
            rejects[f"{table.split('.')[1]}_no_{DIST_COLUMN}"] = f"{table} is distributed but has no {DIST_COLUMN}"
    for row in conn.execute(sa.text(_UNIQUES)).mappings():
        if placement.get(row["tbl"]) == "distributed" and DIST_COLUMN not in (row["cols"] or []):
            rejects[row["name"]] = f"unique key of {row['tbl']} without {DIST_COLUMN}"
    for row in conn.execute(sa.text(_FOREIGN_KEYS)).mappings():
        source, target = placement.get(row["tbl"]), placement.get(row["ref"])
        if source == "distributed" and target == "distributed":
            pairs = list(zip(row["cols"], row["ref_cols"]))
            if (DIST_COLUMN, DIST_COLUMN) not in pairs:
                rejects[row["name"]] = f"{row['tbl']} -> {row['ref']} without {DIST_COLUMN} on both sides"
        elif source == "distributed" and target == "local":
            rejects[row["name"]] = f"distributed {row['tbl']} references local {row['ref']}"
        elif source in ("reference", "local") and target == "distributed":
            rejects[row["name"]] = f"{source} {row['tbl']} references distributed {row['ref']}"
    return rejects


def test_every_table_of_the_live_schema_is_placed(engine):
    with engine.connect() as conn:
        live = set(conn.execute(sa.text(_TABLES)).scalars())
    placed = set(documented_placement())
    assert live - placed == set(), "tables docs/scaling.md does not place (add them to its placement table)"
    # dbt builds its tables at run time; everything else the document names must exist
    assert {t for t in placed - live if not t.startswith("usage.usage_")} == set(), "placed tables that no longer exist"


def test_the_keys_citus_would_reject_are_exactly_the_documented_ones(engine):
    with engine.connect() as conn:
        rejects = citus_rejects(conn, documented_placement())
    undocumented = {name: why for name, why in rejects.items() if name not in documented_rejects()}
    assert undocumented == {}, "keys Citus would reject that docs/scaling.md does not list"
    fixed = documented_rejects() - set(rejects)
    assert fixed == set(), "docs/scaling.md lists keys Citus would now accept: remove them"


def test_the_rules_catch_each_kind_of_problem(engine):
    """The checker itself: one table of each bad shape is reported, its good twin is not."""
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.exec_driver_sql(
            """
            CREATE TABLE billing.t_tenant (organisation_id text PRIMARY KEY);
            CREATE TABLE billing.t_ok (organisation_id text, id bigint, PRIMARY KEY (organisation_id, id),
                FOREIGN KEY (organisation_id) REFERENCES billing.t_tenant (organisation_id));
            CREATE TABLE billing.t_bad (organisation_id text, id bigint PRIMARY KEY, ref text UNIQUE,
                CONSTRAINT t_bad_fk FOREIGN KEY (id, organisation_id) REFERENCES billing.t_ok (id, organisation_id));
            CREATE TABLE billing.t_ref (code text PRIMARY KEY, organisation_id text,
                CONSTRAINT t_ref_fk FOREIGN KEY (organisation_id) REFERENCES billing.t_tenant (organisation_id));
            CREATE TABLE billing.t_nokey (id bigint);
            """
        )
        placement = {
            "billing.t_tenant": "distributed", "billing.t_ok": "distributed", "billing.t_bad": "distributed",
            "billing.t_ref": "reference", "billing.t_nokey": "distributed",
        }
        rejects = citus_rejects(conn, placement)
        transaction.rollback()  # nothing of this stays
    assert set(rejects) == {"t_bad_pkey", "t_bad_ref_key", "t_ref_fk", "t_nokey_no_organisation_id"}, rejects
