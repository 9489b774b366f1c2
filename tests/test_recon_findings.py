"""recon.findings: a finding keeps its identity across days, ages, clears when the data stops showing it,
moves open -> acknowledged -> resolved by hand (audited) and reopens when it comes back."""

from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa
from typer.testing import CliRunner

from billing_pipeline import findings
from billing_pipeline.payments.cli import recon_app

SOURCE = "payment_reconciliation"
A = ("unapplied_payment", "org_a", "pay_A", None, 5000, "USD")
B = ("amount_mismatch", "org_b", "inv_B", 1000, 400, "USD")
C = ("missing_internal", "org_c", "ch_C", None, 1234, "KWD")
D = ("missing_internal", "org_d", "ch_D", None, 700, "JPY")
E = ("missing_at_provider", "org_e", "ch_E", 300, None, "USD")


def _day(engine, day: date, rows) -> findings.Observed:
    """What a reconciliation does for one day: replace its rows, then the shared findings step."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM recon.discrepancies WHERE source = :s AND recon_date = :d"),
            {"s": SOURCE, "d": day},
        )
        for kind, org, ref, internal, provider, currency in rows:
            conn.execute(
                sa.text("""
                    INSERT INTO recon.discrepancies (recon_date, source, kind, provider, organisation_id, reference,
                        internal_amount_minor, provider_amount_minor, currency, detail)
                    VALUES (:d, :s, :kind, 'stripe', :org, :ref, :internal, :provider, :currency, :detail)
                """),
                {
                    "d": day,
                    "s": SOURCE,
                    "kind": kind,
                    "org": org,
                    "ref": ref,
                    "internal": internal,
                    "provider": provider,
                    "currency": currency,
                    "detail": f"{ref} on {day}",
                },
            )
        return findings.observe(conn, SOURCE, day, day + timedelta(days=1), actor="run:test")


def _by_ref(engine):
    with engine.connect() as conn:
        return {r["reference"]: r for r in findings.list_findings(conn)}


def _audit(engine, finding_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT action, from_state, to_state, actor, detail->>'note' FROM billing.audit_log"
                " WHERE entity_type = 'recon_finding' AND entity_id = :id ORDER BY audit_id"
            ),
            {"id": str(finding_id)},
        ).all()


def test_findings_keep_identity_age_clear_and_reopen(engine):
    today = findings.utc_today()
    days = [today - timedelta(days=12 - i) for i in range(12)]
    assert _day(engine, days[0], [A, B, C]) == findings.Observed(3, 0, 0)
    assert _day(engine, days[1], [A, B]) == findings.Observed(2, 0, 0)  # C belongs to day 0: still open
    assert _day(engine, days[0], [A, B]) == findings.Observed(2, 0, 1)  # day 0 again, without C: cleared
    for day in days[2:10]:
        _day(engine, day, [A] + ([E] if day == days[9] else []))
    assert _day(engine, days[1], [A]) == findings.Observed(1, 0, 1)  # B gone from day 1
    found = _by_ref(engine)
    assert len(found) == 4
    a, b, c = found["pay_A"], found["inv_B"], found["ch_C"]
    assert (a["status"], a["first_seen"], a["last_seen"], a["age_days"]) == ("open", days[0], days[9], 12)
    assert found["ch_E"]["age_days"] == 3
    assert (b["status"], b["cleared_on"], b["last_seen"], b["amount_minor"]) == (
        "cleared",
        days[1],
        days[0],
        600,
    )
    assert (c["status"], c["cleared_on"], c["age_days"]) == ("cleared", days[0], 0)
    assert _audit(engine, c["finding_id"]) == [
        ("cleared", "open", "cleared", "run:test", f"cleared by data on {days[0]}")
    ]
    assert _day(engine, days[9], [A, E]) == findings.Observed(2, 0, 0)  # the same day again: nothing moves
    assert _by_ref(engine)["pay_A"]["last_seen"] == days[9]

    runner = CliRunner()
    listed = runner.invoke(recon_app, ["list", "--open", "--older-than", "7d"])
    assert listed.exit_code == 0, listed.output
    assert "pay_A" in listed.output and "12d" in listed.output and "50.00 USD" in listed.output
    assert "inv_B" not in listed.output and "ch_E" not in listed.output and "1 finding(s)" in listed.output
    assert "2 finding(s)" in runner.invoke(recon_app, ["list", "--open"]).output
    assert "0 finding(s)" in runner.invoke(recon_app, ["list", "--older-than", "12d"]).output
    kinds = runner.invoke(recon_app, ["list", "--kind", "missing_internal"]).output
    assert "ch_C" in kinds and "pay_A" not in kinds and "1.234 KWD" in kinds

    fid = str(a["finding_id"])
    assert runner.invoke(recon_app, ["resolve", fid]).exit_code != 0  # a note is required
    ack = runner.invoke(recon_app, ["ack", fid, "--note", "looking", "--actor", "cli:finance"])
    assert ack.exit_code == 0, ack.output
    done = runner.invoke(
        recon_app, ["resolve", fid, "--note", "refunded to the customer", "--actor", "cli:finance"]
    )
    assert done.exit_code == 0, done.output
    again = runner.invoke(recon_app, ["ack", fid])
    assert again.exit_code == 1 and "resolved" in again.output
    cleared = runner.invoke(recon_app, ["resolve", str(b["finding_id"]), "--note", "x", "--wont-fix"])
    assert cleared.exit_code == 1 and "cleared" in cleared.output
    assert _audit(engine, fid) == [
        ("acknowledged", "open", "acknowledged", "cli:finance", "looking"),
        ("resolved", "acknowledged", "resolved", "cli:finance", "refunded to the customer"),
    ]
    assert (
        "0 finding(s)" in runner.invoke(recon_app, ["list", "--open", "--kind", "unapplied_payment"]).output
    )

    _day(engine, days[9], [A, E])  # re-running a day it was already seen on does not reopen it
    assert _by_ref(engine)["pay_A"]["status"] == "resolved"
    assert _day(engine, days[10], [A, C, D]) == findings.Observed(3, 2, 0)  # A and C come back
    found = _by_ref(engine)
    assert found["pay_A"]["status"] == "open" and found["ch_C"]["status"] == "open"
    assert found["ch_C"]["first_seen"] == days[0] and found["ch_C"]["cleared_on"] is None
    assert _audit(engine, fid)[-1] == (
        "reopened",
        "resolved",
        "open",
        "run:test",
        f"seen again on {days[10]}",
    )

    with engine.connect() as conn:
        meta = findings.metadata(conn, SOURCE, days[10], days[11], as_of=days[10])
    assert meta["open_findings"] == 4 and meta["new_findings"] == 1
    bands = {
        (r["kind"], r["band"], r["currency"]): (r["findings"], r["amount"])
        for r in meta["open_findings_by_age"]
    }
    assert bands == {
        ("unapplied_payment", "8-30", "USD"): (1, "50.00"),
        ("missing_internal", "8-30", "KWD"): (1, "1.234"),
        ("missing_internal", "0-1", "JPY"): (1, "700"),
        ("missing_at_provider", "0-1", "USD"): (1, "3.00"),
    }
    assert [(r["kind"], r["currency"], r["amount"]) for r in meta["new_findings_by_kind"]] == [
        ("missing_internal", "JPY", "700")
    ]
    assert "| missing_internal | 8-30 | KWD | 1 | 1.234 |" in meta["open_findings_table"]


def test_findings_of_one_source_leave_the_others_alone(engine):
    day = date(2026, 11, 1)
    _day(engine, day, [A])
    with engine.begin() as conn:
        observed = findings.observe(
            conn, "call_reconciliation", day + timedelta(days=1), day + timedelta(days=2)
        )
    assert observed == findings.Observed(0, 0, 0)
    assert _by_ref(engine)["pay_A"]["status"] == "open"


def test_captured_money_no_invoice_takes_is_an_unapplied_payment_finding(engine):
    """A charge the provider and our ledger agree on, webhook seen, that no finalized invoice takes:
    `unapplied_payment` (money we hold unexplained), not `missing_internal`; it becomes a finding."""
    from billing_pipeline.payments import reconciliation

    day = date(2026, 11, 9)
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            INSERT INTO billing.provider_syncs (provider, sync_date, window_start, window_end, counts, synced_by)
            VALUES ('stripe', :d, :d, CAST(:d AS date) + 1, '{}', 'run:test')"""),
            {"d": day},
        )
        conn.execute(
            sa.text("""
            INSERT INTO billing.provider_records (provider, object_type, object_id, amount_minor, currency, status,
                provider_status, created_at, raw)
            VALUES ('stripe', 'charge', 'ch_unapplied', 2500, 'USD', 'captured', 'succeeded', '2026-11-09T08:00Z', '{}')
        """)
        )
        conn.execute(
            sa.text("""
            INSERT INTO billing.payments (provider, object_type, object_id, organisation_id, amount_minor, currency,
                status, status_rank, provider_status, provider_created_at, first_seen_via, webhook_seen_at, raw)
            VALUES ('stripe', 'charge', 'ch_unapplied', 'org_x', 2500, 'USD', 'captured', 5, 'succeeded',
                    '2026-11-09T08:00Z', 'webhook', '2026-11-09T08:00:05Z', '{}')
        """)
        )
        reconciliation.reconcile_payments(conn, day, day + timedelta(days=1))
        kinds = conn.execute(
            sa.text("SELECT kind, reference, provider_amount_minor FROM recon.discrepancies")
        ).all()
    assert [tuple(k) for k in kinds] == [("unapplied_payment", "ch_unapplied", 2500)]
    with engine.connect() as conn:
        (finding,) = findings.list_findings(conn, only_open=True, kind="unapplied_payment")
    assert finding["reference"] == "ch_unapplied" and finding["amount_minor"] == 2500
