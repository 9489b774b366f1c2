"""Edge store to warehouse exactly once: bad rows, conflicts, late events, conservation, crash safety,
reconciliation and retention, on a real PostgreSQL and a real SQLite edge store."""

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from billing_pipeline import edge_store
from billing_pipeline.catalog import apply_catalog, load_catalog
from billing_pipeline.ingestion import edge_checks
from billing_pipeline.ingestion.mover import MOVER_LOCK, MOVER_RUN_LOCK, move_window

SMALL = Path(__file__).parent / "data" / "catalog_small.yaml"
T0 = datetime(2026, 10, 5, 10, tzinfo=timezone.utc)


@pytest.fixture()
def wh(engine):
    apply_catalog(engine, load_catalog(SMALL), source="small", applied_by="test")
    return engine


@pytest.fixture()
def edge(settings):
    conn = edge_store.connect(settings.edge_path)
    yield conn
    conn.close()


def event(event_id, *, org="org_a", project="prj_a1", metric="api_calls", quantity="1", occurred=T0,
          received=None, properties=None):
    occurred_text = occurred if isinstance(occurred, str) else occurred.isoformat()
    if received is None:
        received = (occurred if isinstance(occurred, datetime) else T0) + timedelta(seconds=1)
    received_text = received if isinstance(received, str) else edge_store.utc_text(received)
    return (event_id, org, project, metric, quantity, occurred_text, received_text, properties)


def rows_of(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def move(engine, edge, start=T0 - timedelta(days=30), end=T0 + timedelta(days=30), **kw):
    return move_window(engine, edge, start, end, **kw)


def conservation_violations(engine, edge) -> list[str]:
    """Every edge row is exactly once in events or quarantine (by event_id and fingerprint), and no
    row is marked processed unless it is there."""
    cur = edge.cursor()
    cur.row_factory = None
    staged = cur.execute(
        "SELECT " + ", ".join(edge_store.STAGED_COLUMNS) + ", processed_at FROM events"
    ).fetchall()
    from billing_pipeline.ingestion.mover import stage_edge_rows

    with engine.begin() as conn:
        stage_edge_rows(conn, staged, with_processed_at=True)
        found = conn.execute(
            sa.text(
                """
                SELECT s.event_id, s.processed_at,
                    coalesce(e.n, 0)
                  + (SELECT count(*) FROM billing.quarantined_events q
                     WHERE q.event_id IS NOT DISTINCT FROM s.event_id AND q.fingerprint = f.fp) AS copies
                FROM edge_stage s CROSS JOIN LATERAL (SELECT billing.edge_fingerprint(s.event_id,
                    s.organisation_id, s.project_id, s.metric, s.quantity, s.occurred_at, s.properties,
                    s.edge_rowid) AS fp) f
                -- counted in billing.events itself (not its registry), in one pass: events has no
                -- index on event_id
                LEFT JOIN (SELECT event_id, fingerprint, count(*) AS n FROM billing.events GROUP BY 1, 2) e
                    ON e.event_id = s.event_id AND e.fingerprint = f.fp
                """
            )
        ).all()
        duplicated_ids = conn.execute(
            sa.text("SELECT event_id FROM billing.events GROUP BY event_id HAVING count(*) > 1")
        ).scalars().all()
    problems = [f"{r.event_id}: {r.copies} copies" for r in found if r.copies > 1]
    problems += [f"{r.event_id}: processed but not in the warehouse" for r in found if r.processed_at and r.copies == 0]
    problems += [f"{e}: twice in events" for e in duplicated_ids]
    return problems


def waiting_locks(engine, relation: str | None = None) -> int:
    """How many lock requests of this database wait (on `relation`, or on advisory locks)."""
    target = "relation = CAST(:relation AS regclass)" if relation else "locktype = 'advisory'"
    return rows_of(engine, "SELECT count(*) FROM pg_locks WHERE NOT granted AND " + target
                   + " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                   relation=relation)[0][0]


def wait_for(condition, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_each_bad_row_has_its_reason_and_never_stops_the_batch(wh, edge):
    good = [event(f"ok-{i}", quantity=str(i + 1)) for i in range(6)]
    bad = {
        "missing_field": event("bad-missing", project=""),
        "bad_received_at": event("bad-recv", received="2026-10-05T10:00:01.5+05:30"),
        "bad_quantity": event("bad-qty", quantity="1e3"),
        "bad_occurred_at": event("bad-occ", occurred="2026-10-05 10:00"),
        "malformed_properties": event("bad-json", properties='{"user_id": '),
        "unknown_organisation": event("bad-org", org="org_ghost"),
        "unknown_metric": event("bad-metric", metric="teleports"),
        "negative_quantity": event("bad-neg", metric="tokens", quantity="-5"),
        "occurred_in_future": event("bad-future", occurred=T0 + timedelta(days=3), received=T0),
    }
    unwindowed = event("bad-garbage-time", received="yesterday-ish")
    rows = good[:3] + list(bad.values()) + good[3:] + [unwindowed]
    assert edge_store.insert_events(edge, rows) == len(rows)

    result = move(wh, edge, batch_size=4)  # bad rows share batches with good ones

    assert result.inserted == 6 and result.quarantined == len(bad) + 1
    reasons = dict(rows_of(wh, "SELECT event_id, reason FROM billing.quarantined_events"))
    assert reasons == {row[0]: reason for reason, row in bad.items()} | {"bad-garbage-time": "bad_received_at"}
    details = rows_of(wh, "SELECT detail, raw ->> 'quantity' FROM billing.quarantined_events WHERE event_id = 'bad-qty'")
    assert details == [("quantity is not a plain decimal (at most 26 integer and 12 fraction digits)", "1e3")]
    assert sorted(r[0] for r in rows_of(wh, "SELECT event_id FROM billing.events")) == sorted(g[0] for g in good)
    assert edge.execute("SELECT count(*) FROM events WHERE processed_at IS NULL").fetchone()[0] == 0
    assert conservation_violations(wh, edge) == []


def test_clean_rows_skip_the_checks_and_a_value_that_only_looks_right_sends_its_batch_there(wh, edge):
    """A clean batch goes in with one statement; bad rows alone are checked; a value with the right
    shape that does not parse (the clean insert fails on it) has its whole batch checked."""
    clean = [event(f"clean-{i}", received=T0 + timedelta(minutes=i)) for i in range(4)]
    edge_store.insert_events(edge, clean)
    assert (r := move(wh, edge)).inserted == 4 and r.checked == 0

    hour = T0 + timedelta(hours=1)
    mixed = [event(f"mixed-{i}", received=hour + timedelta(minutes=i)) for i in range(3)]
    mixed.append(event("mixed-bad", org="org_ghost", received=hour + timedelta(minutes=5)))
    edge_store.insert_events(edge, mixed)
    assert (r := move(wh, edge)).inserted == 3 and r.checked == 1 and r.reasons == {"unknown_organisation": 1}

    unparsable = {
        "bad_occurred_at": event("feb-30", occurred="2026-02-30T10:00:00Z", received=T0 + timedelta(hours=2)),
        "bad_quantity": event("too-big", quantity="1" * 27, received=T0 + timedelta(hours=3)),
        "malformed_properties": event("broken-json", properties='{"a": }', received=T0 + timedelta(hours=4)),
    }
    for i, (reason, row) in enumerate(unparsable.items()):
        received = T0 + timedelta(hours=2 + i)
        batch = [row] + [event(f"with-{row[0]}-{j}", received=received + timedelta(minutes=j)) for j in range(2)]
        edge_store.insert_events(edge, batch)
        r = move(wh, edge, received, received + timedelta(hours=1))
        assert (r.inserted, r.checked, r.reasons) == (2, 3, {reason: 1}), row[0]
    assert rows_of(wh, "SELECT count(*) FROM billing.events") == [(4 + 3 + 2 * len(unparsable),)]
    assert conservation_violations(wh, edge) == []


def test_rows_no_window_holds_are_swept_once_and_their_dates_create_no_partitions(wh, edge):
    """The rows no window can hold are read after the window's pages, never with them: a received_at
    inside the window as text but without a valid hour for SQLite (a 60th second) is read once, with
    the window. Junk dates among them create no months outside the window."""
    edge_store.insert_events(edge, [
        event("in-window"), event("second-60", received="2026-10-05T10:00:60Z"),
        event("junk-1999", received="1999-01-01 00:00:00Z"),
        event("junk-9000", received="9000-06-01 00:00:00Z"),
    ])
    r = move(wh, edge, T0, T0 + timedelta(hours=1))
    assert (r.read, r.inserted, r.quarantined, r.reasons) == (4, 2, 2, {"bad_received_at": 2})
    assert conservation_violations(wh, edge) == []
    partitions = {p for p, in rows_of(wh, "SELECT inhrelid::regclass::text FROM pg_inherits"
                                          " WHERE inhparent = 'billing.events'::regclass")}
    assert partitions == {"billing.events_default", "billing.events_2026_10"}


def test_replays_new_and_bad_rows_in_one_batch_are_each_counted_once(wh, edge):
    edge_store.insert_events(edge, [event(f"old-{i}") for i in range(5)])
    move(wh, edge)
    edge.execute("UPDATE events SET processed_at = NULL")  # the marks were lost after the commit
    edge_store.insert_events(edge, [event(f"new-{i}") for i in range(3)] + [event("new-bad", quantity="x")])
    r = move(wh, edge)
    # the replays make the clean insert fail on the registry's key: the 4 rows left are all checked
    assert (r.read, r.inserted, r.already_moved, r.quarantined, r.checked) == (9, 3, 5, 1, 4)
    assert rows_of(wh, "SELECT count(*) FROM billing.events") == [(8,)]
    assert conservation_violations(wh, edge) == []


def test_rerun_changes_nothing_and_replay_is_not_a_conflict(wh, edge):
    edge_store.insert_events(edge, [event(f"e{i}") for i in range(10)])
    move(wh, edge)
    before = rows_of(wh, "SELECT event_id, quantity, ingested_at FROM billing.events ORDER BY 1")
    edge.execute("UPDATE events SET processed_at = NULL")  # as if the marks were lost after the commit
    again = move(wh, edge)
    assert (again.read, again.inserted, again.already_moved, again.quarantined) == (10, 0, 10, 0)
    assert rows_of(wh, "SELECT event_id, quantity, ingested_at FROM billing.events ORDER BY 1") == before


def test_same_event_id_with_another_payload_is_quarantined_not_overwritten(wh, edge):
    edge_store.insert_events(edge, [event("dup", quantity="1")])
    move(wh, edge)
    # The edge purged the row, then a client sent the same event_id with a different payload.
    edge.execute("DELETE FROM events WHERE event_id = 'dup'")
    edge_store.insert_events(edge, [event("dup", quantity="999", received=T0 + timedelta(hours=2))])
    result = move(wh, edge)
    assert result.reasons == {"conflicting_duplicate": 1}
    assert rows_of(wh, "SELECT quantity FROM billing.events WHERE event_id = 'dup'") == [(1,)]
    quarantined = rows_of(wh, "SELECT reason, raw ->> 'quantity' FROM billing.quarantined_events")
    assert quarantined == [("conflicting_duplicate", "999")]

    # Again, now with an occurred_at in another month: another partition of billing.events.
    edge.execute("DELETE FROM events WHERE event_id = 'dup'")
    edge_store.insert_events(edge, [event("dup", quantity="1", occurred=T0 - timedelta(days=40),
                                          received=T0 + timedelta(hours=3))])
    assert move(wh, edge).reasons == {"conflicting_duplicate": 1}
    assert rows_of(wh, "SELECT quantity, occurred_at FROM billing.events WHERE event_id = 'dup'") == [(1, T0)]


def test_the_database_keeps_event_id_unique_across_partitions(wh, edge):
    """billing.event_ids follows billing.events through inserts, deletes and truncation, and refuses
    a second copy of an event_id whatever its month (its partition); an event is never updated."""
    edge_store.insert_events(edge, [event(f"u{i}") for i in range(5)])
    move(wh, edge)

    def registry_matches_events() -> bool:
        return rows_of(wh, "SELECT event_id, fingerprint, received_at FROM billing.event_ids ORDER BY 1") == rows_of(
            wh, "SELECT event_id, fingerprint, received_at FROM billing.events ORDER BY 1")

    assert len(rows_of(wh, "SELECT * FROM billing.event_ids")) == 5 and registry_matches_events()
    copy = ("INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity, occurred_at,"
            " received_at, fingerprint) SELECT event_id, organisation_id, project_id, metric, quantity,"
            " occurred_at - interval '40 days', received_at, fingerprint FROM billing.events WHERE event_id = 'u1'")
    with pytest.raises(sa.exc.IntegrityError, match="event_ids_pkey"), wh.begin() as conn:
        conn.execute(sa.text(copy))
    with pytest.raises(sa.exc.DBAPIError, match="UPDATE on billing.events is not allowed"), wh.begin() as conn:
        conn.execute(sa.text("UPDATE billing.events SET quantity = 2 WHERE event_id = 'u3'"))
    with wh.begin() as conn:
        conn.execute(sa.text("DELETE FROM billing.events WHERE event_id = 'u2'"))
    assert len(rows_of(wh, "SELECT * FROM billing.event_ids")) == 4 and registry_matches_events()
    with wh.begin() as conn:
        conn.execute(sa.text("TRUNCATE billing.events"))
    assert rows_of(wh, "SELECT count(*) FROM billing.event_ids") == [(0,)]


def test_late_event_lands_in_its_received_hour_and_is_never_missed(wh, edge):
    occurred = T0 - timedelta(days=3)
    edge_store.insert_events(edge, [event("late", occurred=occurred, received=T0 + timedelta(minutes=30))])
    # Moving the hours of the day it occurred finds nothing: it was received later.
    assert move(wh, edge, occurred.replace(hour=0), occurred.replace(hour=0) + timedelta(days=1)).read == 0
    assert move(wh, edge, T0, T0 + timedelta(hours=1)).inserted == 1
    (occurred_at, partition), = rows_of(wh, "SELECT occurred_at, tableoid::regclass::text FROM billing.events")
    assert occurred_at == occurred and partition == "billing.events_2026_10"


def test_a_new_month_gets_its_partition_and_an_ancient_event_stays_in_default(wh, edge):
    def partitions():
        return dict(rows_of(wh, "SELECT event_id, tableoid::regclass::text FROM billing.events"))

    edge_store.insert_events(edge, [event("sep", occurred=T0 - timedelta(days=20)), event("oct")])
    move(wh, edge)
    assert partitions() == {"sep": "billing.events_2026_09", "oct": "billing.events_2026_10"}
    # more than 400 days before its arrival: no partition for its month, it stays in DEFAULT
    edge_store.insert_events(edge, [event("ancient", occurred=T0 - timedelta(days=800),
                                          received=T0 + timedelta(hours=1))])
    assert move(wh, edge).inserted == 1
    assert partitions()["ancient"] == "billing.events_default"
    assert rows_of(wh, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'billing.events'::regclass") == [(3,)]


def test_a_months_partition_waits_for_an_insert_in_flight_into_default(wh):
    """Parallel batches: one has rows of a month without its partition in DEFAULT, not committed yet,
    while another creates the month. The creation waits for that commit and moves those rows too."""
    insert = ("INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity,"
              " occurred_at, received_at, fingerprint) VALUES ('in-flight', 'org_a', 'prj_a1', 'api_calls',"
              " 1, '2027-03-05T00:00:00Z', '2027-03-05T00:00:01Z', 'f')")

    def create_march() -> int:
        with wh.begin() as conn:
            return conn.execute(sa.text("SELECT billing.ensure_event_partitions('2027-03-01', '2027-03-01')")
                                ).scalar()

    with ThreadPoolExecutor(max_workers=1) as pool, wh.connect() as batch:
        batch.execute(sa.text(insert))
        creating = pool.submit(create_march)
        assert wait_for(lambda: waiting_locks(wh, "billing.events") == 1) and not creating.done()
        batch.commit()
        assert creating.result(timeout=30) == 1
    assert rows_of(wh, "SELECT event_id, tableoid::regclass::text FROM billing.events") == [
        ("in-flight", "billing.events_2027_03")]


def test_an_insert_that_started_before_its_month_was_created_still_lands_there(wh):
    """An insert routes its rows with the partitions there were when it started: the creation of a
    month waits for it to commit, then moves its row of the month out of DEFAULT."""
    slow_insert = """
        INSERT INTO billing.events (event_id, organisation_id, project_id, metric, quantity, occurred_at,
            received_at, fingerprint)
        SELECT 'slow-' || i, 'org_a', 'prj_a1', 'api_calls', 1, at, at, 'f'
        FROM (VALUES (1, timestamptz '2026-10-05T00:00:00Z'),
                     (2, timestamptz '2027-04-05T00:00:00Z')) v (i, at)
        WHERE i = 1 OR pg_sleep(1) IS NOT NULL  -- the second row comes a second later
    """

    def insert() -> None:
        with wh.begin() as conn:
            conn.execute(sa.text(slow_insert))

    sleeping = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                " AND datname = current_database()")
    with wh.begin() as conn:
        conn.execute(sa.text("SELECT billing.ensure_event_partitions('2026-10-01', '2026-10-01')"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        inserting = pool.submit(insert)
        assert wait_for(lambda: rows_of(wh, sleeping) == [(1,)])
        with wh.begin() as conn:
            created = conn.execute(
                sa.text("SELECT billing.ensure_event_partitions('2027-04-01', '2027-04-01')")).scalar()
        inserting.result(timeout=30)
    assert created == 1
    assert rows_of(wh, "SELECT event_id, tableoid::regclass::text FROM billing.events ORDER BY 1") == [
        ("slow-1", "billing.events_2026_10"), ("slow-2", "billing.events_2027_04")]


def test_parallel_batches_over_new_months_move_every_row_once(wh, edge):
    rng = random.Random(11)
    rows = [event(f"p{i}", quantity="x" if i % 17 == 0 else str(1 + i % 4),
                  occurred=T0 - timedelta(days=rng.randint(0, 150)), received=T0 + timedelta(seconds=i))
            for i in range(300)]
    edge_store.insert_events(edge, rows)
    result = move(wh, edge, batch_size=7, workers=3)
    assert (result.read, result.inserted, result.quarantined, result.batches) == (300, 282, 18, 43)
    assert conservation_violations(wh, edge) == []
    months = {(T0 - timedelta(days=d)).strftime("%Y_%m") for d in range(151)}
    assert {p for p, in rows_of(wh, "SELECT DISTINCT tableoid::regclass::text FROM billing.events")} == {
        f"billing.events_{m}" for m in months}


def test_a_run_holds_the_run_lock_from_start_to_end(wh, edge):
    """Runs follow each other: the run lock is held while every batch settles, and let go at the end."""
    edge_store.insert_events(edge, [event(f"l{i}", received=T0 + timedelta(seconds=i)) for i in range(30)])
    try_lock = "SELECT pg_try_advisory_xact_lock(hashtext(:k))"
    free = []

    def run_lock_is_free(_batch) -> None:
        with wh.begin() as conn:
            free.append(conn.execute(sa.text(try_lock), {"k": MOVER_RUN_LOCK}).scalar())

    assert move(wh, edge, batch_size=10, on_batch=run_lock_is_free).batches == 3
    assert free == [False, False, False]
    run_lock_is_free(None)
    assert free[-1] is True


def test_batches_wait_while_finalization_holds_the_mover_lock(wh, edge):
    """Finalization takes MOVER_LOCK exclusively (billing_pipeline/invoicing/finalize.py): no batch
    commits an event while it looks; they go on when it is done."""
    edge_store.insert_events(edge, [event(f"f{i}", received=T0 + timedelta(seconds=i)) for i in range(20)])
    path = edge_store.path_of(edge)

    def move_in_thread():
        with edge_store.opened(path) as conn:  # a SQLite connection stays in its thread
            return move(wh, conn, batch_size=5)

    with ThreadPoolExecutor(max_workers=1) as pool, wh.connect() as finalization:
        finalization.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": MOVER_LOCK})
        moving = pool.submit(move_in_thread)
        assert wait_for(lambda: waiting_locks(wh) == 2)  # both batches in flight wait
        assert rows_of(wh, "SELECT count(*) FROM billing.events") == [(0,)] and not moving.done()
        finalization.commit()
        assert moving.result(timeout=60).inserted == 20


def test_conservation_over_random_runs_and_reruns(wh, edge):
    rng = random.Random(20261121)
    hours = [T0 + timedelta(hours=h) for h in range(12)]
    n = 0
    for step in range(25):
        if rng.random() < 0.6:  # new arrivals, some bad, some repeated ids
            batch = []
            for _ in range(rng.randint(1, 40)):
                n += 1
                kind = rng.random()
                received = rng.choice(hours) + timedelta(minutes=rng.randint(0, 59))
                if kind < 0.1:
                    batch.append(event(f"c{n}", quantity="oops", received=received))
                elif kind < 0.2 and n > 5:
                    batch.append(event(f"c{rng.randint(1, n - 1)}", received=received))  # a retry
                else:
                    batch.append(event(f"c{n}", quantity=str(rng.randint(1, 9)), received=received,
                                       occurred=received - timedelta(hours=rng.randint(0, 72))))
            edge_store.insert_events(edge, batch)
        start = rng.choice(hours)
        move(wh, edge, start, start + timedelta(hours=rng.randint(1, 6)), batch_size=rng.randint(3, 50))
        assert conservation_violations(wh, edge) == [], f"after step {step}"
    move(wh, edge, hours[0], hours[-1] + timedelta(hours=1))
    pending = edge.execute("SELECT count(*) FROM events WHERE processed_at IS NULL").fetchone()[0]
    assert pending == 0 and conservation_violations(wh, edge) == []


MOVER_SCRIPT = r"""
from datetime import datetime, timezone
from billing_pipeline import edge_store
from billing_pipeline.settings import load_settings
from billing_pipeline.warehouse import get_engine
from billing_pipeline.ingestion.mover import move_window
settings = load_settings()
with edge_store.opened(settings.edge_path) as edge:
    move_window(get_engine(settings), edge, datetime(2026, 10, 1, tzinfo=timezone.utc),
                datetime(2026, 11, 1, tzinfo=timezone.utc), batch_size=1000)
"""


@pytest.mark.slow
def test_sigkill_mid_batch_loses_and_duplicates_nothing(wh, edge):
    rows = [event(f"k{i:05d}", quantity=str(i % 7 + 1), received=T0 + timedelta(seconds=i)) for i in range(30000)]
    rows += [event(f"kbad{i}", quantity="x") for i in range(50)]
    edge_store.insert_events(edge, rows)
    rng = random.Random(7)
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", MOVER_SCRIPT], env=os.environ.copy())
        if attempt < 3:
            # Wait until this process has committed a batch, then kill it somewhere in a later one
            # (staging, checking, inserting, or between the commit and the edge marks).
            done = rows_of(wh, "SELECT count(*) FROM billing.events")[0][0]
            while proc.poll() is None and rows_of(wh, "SELECT count(*) FROM billing.events")[0][0] == done:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert conservation_violations(wh, edge) == [], f"after kill {kills}"
        else:
            assert proc.wait(timeout=300) == 0
    assert kills >= 1  # at least one run died mid-way (a fast run may finish before a later kill)
    assert edge.execute("SELECT count(*) FROM events WHERE processed_at IS NULL").fetchone()[0] == 0
    assert rows_of(wh, "SELECT count(*), count(DISTINCT event_id) FROM billing.events") == [(30000, 30000)]
    assert rows_of(wh, "SELECT count(*) FROM billing.quarantined_events") == [(50,)]
    assert conservation_violations(wh, edge) == []


def test_reconciliation_is_clean_then_finds_exactly_the_missing(wh, edge):
    day = T0.date()
    edge_store.insert_events(edge, [event(f"r{i}", quantity="2") for i in range(20)] + [event("rbad", quantity="?")])
    move(wh, edge)
    now = T0 + timedelta(days=1)
    clean = edge_checks.reconcile_day(wh, edge, day, now=now)
    assert (clean.edge_rows, clean.missing, clean.pending, clean.mismatched_groups) == (21, 0, 0, [])

    with wh.begin() as conn:  # a loss: rows marked processed at the edge but gone from the warehouse
        conn.execute(sa.text("DELETE FROM billing.events WHERE event_id IN ('r3', 'r7')"))
    edge_store.insert_events(edge, [event("r-unmoved", received=T0 + timedelta(minutes=5))])  # never moved
    edge_store.insert_events(edge, [event("r-recent", received=now - timedelta(minutes=10), occurred=now)])
    found = edge_checks.reconcile_day(wh, edge, day, now=now)
    findings = rows_of(wh, "SELECT kind, reference, detail FROM recon.discrepancies ORDER BY reference")
    assert [(k, r) for k, r, _ in findings] == [("missing_event", "r-unmoved"), ("missing_event", "r3"), ("missing_event", "r7")]
    assert "marked processed at the edge" in findings[1][2] and "not moved" in findings[0][2]
    assert found.missing == 3
    group = found.mismatched_groups[0]
    # one group: 20 + rbad + r-unmoved at the edge; 18 events + rbad in quarantine in the warehouse
    assert (group["edge_count"], group["warehouse_count"]) == (22, 19)
    # the next day's row is pending within its window, not a finding of that day
    assert edge_checks.reconcile_day(wh, edge, now.date(), now=now).pending == 1
    # re-running replaces the day's rows, it does not add to them
    edge_checks.reconcile_day(wh, edge, day, now=now)
    assert rows_of(wh, "SELECT count(*) FROM recon.discrepancies") == [(3,)]


def test_retention_deletes_only_what_the_warehouse_has(wh, edge):
    edge_store.insert_events(edge, [event(f"p{i}") for i in range(10)] + [event("pbad", quantity="?")])
    move(wh, edge)
    edge_store.insert_events(edge, [event("unprocessed", received=T0 + timedelta(hours=3))])
    with wh.begin() as conn:
        conn.execute(sa.text("DELETE FROM billing.events WHERE event_id = 'p4'"))
    result = edge_checks.purge_processed(wh, edge, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert (result.candidates, result.deleted, result.refused, result.refused_sample) == (11, 10, 1, ["p4"])
    left = sorted(r[0] for r in edge.execute("SELECT event_id FROM events"))
    assert left == ["p4", "unprocessed"]
    # rows processed after the cutoff stay
    assert edge_checks.purge_processed(wh, edge, datetime(2000, 1, 1, tzinfo=timezone.utc)).candidates == 0


@pytest.mark.slow
def test_backfill_of_a_range_is_one_dagster_run(wh, edge, tmp_path):
    from billing_pipeline.definitions import defs

    edge_store.insert_events(
        edge, [event(f"d{i}", received=T0 + timedelta(hours=i % 48, minutes=i % 60)) for i in range(500)]
    )
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("warehouse_events")])
    tags = {ASSET_PARTITION_RANGE_START_TAG: "2026-10-05-10:00", ASSET_PARTITION_RANGE_END_TAG: "2026-10-07-09:00"}
    for _ in range(2):  # the second run changes nothing
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("warehouse_events")], tags=tags)
        assert result.success
    assert len(instance.get_run_records()) == 2
    materialization = result.asset_materializations_for_node("warehouse_events")[0]
    assert materialization.metadata["edge_rows_read"].value == 0
    assert rows_of(wh, "SELECT count(*) FROM billing.events") == [(500,)]
    mats = instance.fetch_materializations(dg.AssetKey("warehouse_events"), limit=1000).records
    assert len({m.partition_key for m in mats}) == 48  # every hour of the range, in one run each time


def test_a_clean_move_with_a_row_of_every_quarantine_reason_reconciles_without_a_mismatch(wh, edge):
    """Every quarantined row is counted where the edge counts it (its received hour, from the raw text
    when it does not parse), so a fully conserved day reports nothing. Each reason once, beside good rows."""
    day_before = T0 - timedelta(days=2)
    edge_store.insert_events(edge, [event("dup", quantity="1", occurred=day_before)])
    move(wh, edge)
    edge.execute("DELETE FROM events WHERE event_id = 'dup'")  # purged at the edge, then sent again
    bad = {
        "missing_field": event("bad-missing", project=""),
        "bad_received_at": event("bad-recv", received="2026-10-05T10:00:01.5+05:30"),
        "bad_quantity": event("bad-qty", quantity=""),
        "bad_occurred_at": event("bad-occ", occurred="2026-10-05 10:00"),
        "malformed_properties": event("bad-json", properties='{"user_id": '),
        "unknown_organisation": event("bad-org", org="org_ghost"),
        "unknown_metric": event("bad-metric", metric="teleports"),
        "negative_quantity": event("bad-neg", metric="tokens", quantity="-5"),
        "occurred_in_future": event("bad-future", occurred=T0 + timedelta(days=3), received=T0),
        "conflicting_duplicate": event("dup", quantity="999"),
    }
    good = [event(f"ok-{i}", quantity=str(i + 1)) for i in range(5)]
    edge_store.insert_events(edge, good + list(bad.values()))

    result = move(wh, edge, T0 - timedelta(hours=1), T0 + timedelta(hours=2))

    assert result.reasons == {reason: 1 for reason in bad}
    assert rows_of(wh, "SELECT count(*) FROM billing.quarantined_events WHERE received_at IS NULL") == [(1,)]
    day = edge_checks.reconcile_day(wh, edge, T0.date(), now=T0 + timedelta(days=1))
    assert (day.edge_rows, day.missing, day.mismatched_groups) == (len(good) + len(bad), 0, [])

    # An empty quantity fails the shape check, so its clean neighbours still go in unchecked.
    later = T0 + timedelta(hours=5)
    edge_store.insert_events(edge, [event(f"q-{i}", received=later + timedelta(minutes=i)) for i in range(3)]
                             + [event("q-empty", quantity="", received=later + timedelta(minutes=5))])
    r = move(wh, edge, later, later + timedelta(hours=1))
    assert (r.inserted, r.checked, r.reasons) == (3, 1, {"bad_quantity": 1})


def test_quarantined_rows_stored_without_their_received_at_are_repaired_by_the_migration(wh):
    from billing_pipeline.migrations import SQL_DIR

    with wh.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO billing.quarantined_events (event_id, reason, detail, raw, fingerprint)"
            " SELECT id, 'missing_field', 'x', jsonb_build_object('received_at', recv), id FROM (VALUES"
            " ('old-1', '2026-10-05T10:00:01Z'), ('old-2', '2026-10-05T25:00:00Z'), ('old-3', 'yesterday'))"
            " AS v (id, recv)"
        ))
        conn.connection.cursor().execute((SQL_DIR / "0012_quarantine_received_at.sql").read_text())
    repaired = dict(rows_of(wh, "SELECT event_id, received_at FROM billing.quarantined_events"))
    assert repaired == {"old-1": datetime(2026, 10, 5, 10, 0, 1, tzinfo=timezone.utc), "old-2": None, "old-3": None}
