"""The catalog: valid files, every kind of invalid (all problems at once), idempotent apply, versions."""

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from billing_pipeline.catalog import CatalogError, apply_catalog, load_catalog, parse_catalog

SMALL = Path(__file__).parent / "data" / "catalog_small.yaml"


def small() -> dict:
    return yaml.safe_load(SMALL.read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(yaml.safe_dump(data), "test.yaml")
    assert str(info.value).startswith("test.yaml: ")
    return info.value.problems


def test_valid_file_parses_with_exact_decimals():
    cat = load_catalog(SMALL)
    assert [p.code for p in cat.plans] == ["basic", "yen"]
    tokens = cat.plans[0].charges[1]
    assert tokens.pricing_dict()["tiers"][1]["per_unit_amount"] == "0.0001"
    assert cat.plans[0].charges[0].unit_amount == Decimal("0.001")  # YAML float read as its text
    assert cat.organisations[0].tax_rate == Decimal("0.2")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["billable_metrics"][3].pop("field"), "billable_metrics[3](users): Value error, unique_count needs `field`"),
        (lambda d: d["billable_metrics"][0].update(aggregation="median"), "billable_metrics[0](api_calls).aggregation: Input should be"),
        (lambda d: d["plans"][0].update(currency="XYZ"), "plans[0](basic).currency: Value error, 'XYZ' is not a supported"),
        (lambda d: d["plans"][0]["charges"][0].update(model="bespoke"), "plans[0](basic).charges[0](api_calls): Input tag 'bespoke'"),
        (lambda d: d["plans"][0]["charges"][0].update(unit_amount=-1), "plans[0](basic).charges[0](api_calls).unit_amount: Input should be greater than or equal to 0"),
        (lambda d: d["plans"][0]["charges"][1]["tiers"][1].update(from_value=900), "plans[0](basic).charges[1](tokens): Value error, graduated charge, tier 2"),
        (lambda d: d["plans"][0]["charges"][0].update(metric="ghost"), "plans[0](basic).charges[0].metric: no billable metric 'ghost'"),
        (lambda d: d["organisations"][0].update(plan="gold"), "organisations[0](org_a).plan: no plan 'gold'"),
        (lambda d: d["organisations"][1].update(currency="USD"), "organisations[1](org_b).currency: USD differs from plan yen's currency JPY"),
        (lambda d: d["organisations"][0].pop("provider_customer_id"), "organisations[0](org_a).provider_customer_id: required when provider is stripe"),
        (lambda d: d["organisations"][0].update(tax_rate=1.5), "organisations[0](org_a).tax_rate: Input should be less than 1"),
        (lambda d: d["organisations"][0]["discounts"][0].update(valid_to="2025-01-01"), "organisations[0](org_a).discounts[0](welcome): Value error, valid_to is before valid_from"),
        (lambda d: d["organisations"].append(dict(d["organisations"][1])), "organisations: 'org_b' is defined more than once"),
        (lambda d: d["plans"][0].update(surprise=1), "plans[0](basic).surprise: Extra inputs are not permitted"),
    ],
)
def test_each_kind_of_invalid(mutate, expected):
    data = small()
    mutate(data)
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_not_the_first():
    data = small()
    data["plans"][0].update(currency="XYZ")
    data["plans"][0]["charges"][0].update(metric="ghost")
    data["organisations"][0].update(plan="gold")
    data["billable_metrics"][0].update(aggregation="median")
    assert len(problems(data)) == 4


def test_not_yaml_and_unreadable_file(tmp_path):
    with pytest.raises(CatalogError, match="not valid YAML"):
        parse_catalog("plans: [", "x.yaml")
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog(tmp_path / "missing.yaml")


def snapshot(engine) -> dict:
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT * FROM billing.{table} ORDER BY 1, 2")).all()
            for table in ("billable_metrics", "plans", "plan_charges", "organisations", "projects")
        }


def test_apply_is_idempotent(engine):
    cat = load_catalog(SMALL)
    first = apply_catalog(engine, cat, source="small.yaml", applied_by="test")
    assert first == {"metrics_changed": 4, "plan_versions_created": 2, "organisations_changed": 2, "projects_changed": 3,
                     "seller_changed": 0}
    before = snapshot(engine)
    again = apply_catalog(engine, load_catalog(SMALL), source="small.yaml", applied_by="test")
    assert again == dict.fromkeys(first, 0)
    assert snapshot(engine) == before  # not even updated_at moved
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM billing.catalog_applications")).scalar_one() == 1


def test_changed_plan_becomes_a_new_version_and_old_stays(engine):
    apply_catalog(engine, load_catalog(SMALL), source="v1", applied_by="test")
    data = small()
    data["plans"][0]["charges"][0]["unit_amount"] = "0.002"
    result = apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v2", applied_by="test")
    assert result["plan_versions_created"] == 1 and result["organisations_changed"] == 1
    with engine.connect() as conn:
        versions = conn.execute(
            sa.text(
                "SELECT p.version, c.properties ->> 'unit_amount' FROM billing.plans p"
                " JOIN billing.plan_charges c USING (plan_id)"
                " WHERE p.code = 'basic' AND c.metric_code = 'api_calls' ORDER BY p.version"
            )
        ).all()
        current = conn.execute(
            sa.text(
                "SELECT p.version FROM billing.organisations o JOIN billing.plans p USING (plan_id)"
                " WHERE o.organisation_id = 'org_a'"
            )
        ).scalar_one()
    assert versions == [(1, "0.001"), (2, "0.002")]
    assert current == 2


def test_organisation_changes_are_audited_and_a_currency_with_a_wallet_cannot_change(engine):
    apply_catalog(engine, load_catalog(SMALL), source="v1", applied_by="cli:alice")
    data = small()
    data["organisations"][0]["tax_rate"] = "0.1"
    apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v2", applied_by="cli:bob")
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT entity_id, action, actor, detail -> 'before' ->> 'tax_rate', detail -> 'after' ->> 'tax_rate'"
            " FROM billing.audit_log WHERE entity_type = 'organisation' ORDER BY audit_id")).all()
    assert rows == [
        ("org_a", "catalog_created", "cli:alice", None, "0.2"),
        ("org_b", "catalog_created", "cli:alice", None, "0.0"),
        ("org_a", "catalog_changed", "cli:bob", "0.2", "0.1"),
    ]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO billing.wallets (organisation_id, currency) VALUES ('org_b', 'JPY')"))
    data["plans"][1]["currency"] = "EUR"
    data["organisations"][1]["currency"] = "EUR"
    with pytest.raises(CatalogError, match="org_b: currency cannot change once it has invoices or a wallet"):
        apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v3", applied_by="cli:bob")


def test_a_wallet_can_be_told_to_pay_invoices_and_leaving_it_out_changes_nothing(engine):
    apply_catalog(engine, load_catalog(SMALL), source="v1", applied_by="test")
    with engine.connect() as conn:
        hashes = dict(conn.execute(sa.text("SELECT organisation_id, catalog_hash FROM billing.organisations")).all())
    data = small()
    data["organisations"][0].setdefault("wallet", {})["pays_invoices"] = True
    result = apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v2", applied_by="test")
    assert result["organisations_changed"] == 1
    with engine.connect() as conn:
        after = dict(conn.execute(sa.text(
            "SELECT organisation_id, wallet_pays_invoices FROM billing.organisations")).all())
        unchanged = conn.execute(sa.text(
            "SELECT catalog_hash FROM billing.organisations WHERE organisation_id = 'org_b'")).scalar_one()
    assert after == {"org_a": True, "org_b": False}
    assert unchanged == hashes["org_b"]  # an entry without the option keeps its hash


def test_seller_and_billing_details_are_applied_once_and_their_changes_audited(engine):
    data = small()
    data["seller"] = {"name": "Seller GmbH", "address": ["Torstrasse 1", "Berlin"], "tax_id": "DE1"}
    data["organisations"][0]["billing_details"] = {"legal_name": "Acme Inc.", "address": ["1 Main St"]}
    first = apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v1", applied_by="cli:ann")
    assert first["seller_changed"] == 1
    assert apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v1", applied_by="t") == dict.fromkeys(
        first, 0)  # fmt: skip
    without = small()  # no seller section: the stored seller stays; no billing details: stored as {}
    assert apply_catalog(engine, parse_catalog(yaml.safe_dump(without)), source="v2",
                         applied_by="t")["seller_changed"] == 0  # fmt: skip
    data["seller"]["tax_id"] = "DE2"
    assert apply_catalog(engine, parse_catalog(yaml.safe_dump(data)), source="v3", applied_by="cli:bob")[
        "seller_changed"] == 1  # fmt: skip
    with engine.connect() as conn:
        seller = conn.execute(sa.text("SELECT name, details FROM billing.seller")).one()
        details = dict(conn.execute(sa.text("SELECT organisation_id, billing_details FROM billing.organisations")).all())
        audited = conn.execute(sa.text(
            "SELECT action, actor, detail -> 'after' -> 'details' ->> 'tax_id' FROM billing.audit_log"
            " WHERE entity_type = 'seller' ORDER BY audit_id")).all()  # fmt: skip
    assert seller == ("Seller GmbH", {"address": ["Torstrasse 1", "Berlin"], "tax_id": "DE2"})
    org = data["organisations"][0]["id"]
    assert details[org] == {"legal_name": "Acme Inc.", "address": ["1 Main St"]}
    assert audited == [("catalog_created", "cli:ann", "DE1"), ("catalog_changed", "cli:bob", "DE2")]
    assert problems({**small(), "seller": {"address": ["x"]}}) == ["seller.name: Field required"]
