"""Migrations: fresh apply, re-run, a changed applied file refused, concurrent upgrades, status."""

import shutil
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from billing_pipeline import migrations


@pytest.fixture()
def empty_db(pg_server_url):
    """A brand-new empty database (not the migrated template)."""
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = "mig_" + __import__("uuid").uuid4().hex[:10]
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = sa.create_engine(make_url(pg_server_url).set(database=name))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture()
def sql_copy(tmp_path):
    target = tmp_path / "sql"
    shutil.copytree(migrations.SQL_DIR, target)
    return target


def test_fresh_then_rerun(empty_db):
    files = [f.name for f in migrations.discover()]
    assert migrations.upgrade(empty_db) == files
    assert migrations.upgrade(empty_db) == []
    states = {s.name: s.state for s in migrations.status(empty_db)}
    assert set(states.values()) == {"applied"} and list(states) == files
    with empty_db.connect() as conn:
        recorded = conn.execute(sa.text("SELECT count(*) FROM public.schema_migrations")).scalar_one()
    assert recorded == len(files)


def test_changed_applied_file_is_refused(empty_db, sql_copy):
    migrations.upgrade(empty_db, sql_copy)
    first = sorted(sql_copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    (sql_copy / "9999_new_table.sql").write_text("CREATE TABLE billing.should_not_exist (x int);")
    with pytest.raises(migrations.MigrationError) as info:
        migrations.upgrade(empty_db, sql_copy)
    assert first.name in str(info.value) and "new numbered file" in str(info.value)
    with empty_db.connect() as conn:  # nothing ran, not even the new file
        assert conn.execute(sa.text("SELECT to_regclass('billing.should_not_exist')")).scalar() is None
    assert {s.name: s.state for s in migrations.status(empty_db, sql_copy)}[first.name] == "changed"


def test_failing_file_rolls_back_entirely(empty_db, sql_copy):
    migrations.upgrade(empty_db, sql_copy)
    (sql_copy / "9998_broken.sql").write_text("CREATE TABLE billing.half_done (x int);\nSELECT no_such_function();")
    with pytest.raises(migrations.MigrationError, match="9998_broken.sql failed"):
        migrations.upgrade(empty_db, sql_copy)
    with empty_db.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('billing.half_done')")).scalar() is None
    assert {s.name: s.state for s in migrations.status(empty_db, sql_copy)}["9998_broken.sql"] == "pending"


def test_concurrent_upgrades_apply_each_file_once(empty_db):
    results, errors = [], []

    def run():
        try:
            results.append(migrations.upgrade(empty_db))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [name for names in results for name in names]
    assert sorted(applied) == [f.name for f in migrations.discover()]


def test_badly_named_file_is_refused(sql_copy):
    (sql_copy / "add_things.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="NNNN_words.sql"):
        migrations.discover(sql_copy)


def test_a_server_older_than_15_is_refused_with_one_sentence():
    from billing_pipeline.migrations import MigrationError, refuse_old_server

    refuse_old_server(150000, "15.0")
    refuse_old_server(180001, "18.1")
    with pytest.raises(MigrationError, match=r"^refusing to migrate: this server runs PostgreSQL 14.12, and"
                                             r" billing_pipeline needs PostgreSQL 15 or later\.$"):
        refuse_old_server(140012, "14.12")


def test_the_input_check_answers_alike_on_every_server(engine):
    with engine.connect() as conn:
        answers = conn.execute(sa.text(
            "SELECT billing.input_is_valid('2026-02-30T10:00:00Z', 'timestamptz'),"
            " billing.input_is_valid('2026-02-28T10:00:00Z', 'timestamptz'),"
            " billing.input_is_valid('1' || repeat('0', 27), 'numeric(38,12)'),"
            " billing.input_is_valid('12.5', 'numeric(38,12)'), billing.input_is_valid('{\"a\": }', 'jsonb')"
        )).one()
    assert tuple(answers) == (False, True, False, True, False)


def test_the_input_check_is_inlined_on_16_and_later(engine):
    with engine.connect() as conn:
        if int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) < 160000:
            pytest.skip("PostgreSQL 15 has no pg_input_is_valid: the wrapper is plpgsql there")
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN VERBOSE SELECT billing.input_is_valid(v, 'timestamptz') FROM (VALUES ('x')) t (v)"
        )).scalars())
    assert "pg_input_is_valid" in plan and "billing.input_is_valid" not in plan
