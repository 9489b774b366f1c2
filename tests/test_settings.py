"""Every settings rule: defaults, production refusal listing every problem, secrets never shown."""

import pytest

from billing_pipeline.settings import SettingsError, load_settings

ALL_VARS = [
    "BILLING_ENV", "BILLING_HOME", "BILLING_DATABASE_URL", "BILLING_EDGE_PATH", "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE", "RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET",
    "RAZORPAY_WEBHOOK_SECRET", "RAZORPAY_API_BASE", "VAPI_API_KEY", "VAPI_WEBHOOK_SECRET", "VAPI_API_BASE",
    "BILLING_ALERT_WEBHOOK_URL", "BILLING_DB_POOL_SIZE", "STRIPE_WEBHOOK_SECRET_PREVIOUS",
]  # fmt: skip
GOOD_DB = "postgresql://billing:" + "p" * 40 + "@db.internal:5432/billing"
GOOD_STRIPE = {"STRIPE_API_KEY": "sk_live_" + "a" * 40, "STRIPE_WEBHOOK_SECRET": "whsec_" + "b" * 40}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def production(monkeypatch, **values):
    monkeypatch.setenv("BILLING_ENV", "production")
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def problems_of(monkeypatch, **values) -> list[str]:
    production(monkeypatch, **values)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return info.value.problems


def test_development_defaults(tmp_path):
    s = load_settings()
    assert s.env == "development"
    assert s.home_dir == (tmp_path / ".billing").resolve()
    assert s.edge_path == s.home_dir / "edge.sqlite3"
    assert s.pg_data_dir == s.home_dir / "pg"
    assert s.uses_embedded_database
    assert (s.db_pool_size, s.db_max_overflow, s.db_pool_pre_ping) == (5, 5, True)


def test_edge_path_and_pool_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BILLING_EDGE_PATH", str(tmp_path / "d1.sqlite3"))
    monkeypatch.setenv("BILLING_DB_POOL_SIZE", "12")
    s = load_settings()
    assert s.edge_path == tmp_path / "d1.sqlite3"
    assert s.db_pool_size == 12


def test_production_with_good_values_starts(monkeypatch):
    production(monkeypatch, BILLING_DATABASE_URL=GOOD_DB, **GOOD_STRIPE)
    assert load_settings().is_production


def test_production_lists_every_problem_at_once(monkeypatch):
    problems = problems_of(
        monkeypatch,
        STRIPE_API_KEY="sk_test_" + "x1" * 20,
        RAZORPAY_KEY_ID="rzp_live_" + "abcdefgh",  # built, so no live-looking key sits in the source
        RAZORPAY_KEY_SECRET="change-me",
        VAPI_API_KEY="short",
        VAPI_WEBHOOK_SECRET="your-vapi-secret-goes-here-0123456789",
    )
    text = "\n".join(problems)
    assert "BILLING_DATABASE_URL is required" in text
    assert "STRIPE_API_KEY is a test-mode key" in text
    assert "STRIPE_WEBHOOK_SECRET is required" in text
    assert "RAZORPAY_KEY_SECRET is a placeholder" in text
    assert "RAZORPAY_WEBHOOK_SECRET is required" in text
    assert "VAPI_API_KEY is too short (5 characters" in text
    assert "VAPI_WEBHOOK_SECRET is a placeholder" in text
    assert len(problems) == 7


@pytest.mark.parametrize(
    "value, expected",
    [
        ("change-me-" + "a" * 30, "placeholder"),
        ("xxx" + "a" * 40, "placeholder"),
        ("your-stripe-key-" + "a" * 30, "placeholder"),
        ("sk_test_" + "a" * 40, "test-mode"),
        ("sk_live_" + "a" * 10, "too short"),
    ],
)
def test_each_secret_rule(monkeypatch, value, expected):
    problems = problems_of(monkeypatch, BILLING_DATABASE_URL=GOOD_DB, **{**GOOD_STRIPE, "STRIPE_API_KEY": value})
    assert len(problems) == 1
    assert problems[0].startswith("STRIPE_API_KEY") and expected in problems[0]


def test_previous_stripe_secret_is_checked_when_set(monkeypatch):
    problems = problems_of(
        monkeypatch, BILLING_DATABASE_URL=GOOD_DB, STRIPE_WEBHOOK_SECRET_PREVIOUS="whsec_old", **GOOD_STRIPE
    )
    assert problems == ["STRIPE_WEBHOOK_SECRET_PREVIOUS is too short (9 characters; at least 32 required)"]


def test_database_password_rules(monkeypatch):
    problems = problems_of(
        monkeypatch, BILLING_DATABASE_URL="postgresql://billing:short@db/billing", **GOOD_STRIPE
    )
    assert problems == ["BILLING_DATABASE_URL password is too short (5 characters; at least 32 required)"]


def test_no_provider_is_a_problem(monkeypatch):
    assert problems_of(monkeypatch, BILLING_DATABASE_URL=GOOD_DB) == [
        "no payment provider is configured: set the STRIPE_*, RAZORPAY_* or VAPI_* variables"
    ]


def test_secrets_never_appear_in_errors_or_reprs(monkeypatch):
    secret = "sk_test_" + "S3CRET" * 6
    db_password = "hunter2hunter2"
    problems = problems_of(
        monkeypatch,
        BILLING_DATABASE_URL=f"postgresql://u:{db_password}@h/d",
        STRIPE_API_KEY=secret,
        STRIPE_WEBHOOK_SECRET="whsec_" + "W" * 8,
    )
    text = "\n".join(problems)
    assert secret not in text and "S3CRET" not in text and db_password not in text and "WWWW" not in text
    monkeypatch.setenv("BILLING_ENV", "development")
    settings = load_settings()
    shown = repr(settings) + str(settings) + repr(settings.model_dump())
    assert "S3CRET" not in shown and db_password not in shown


def test_malformed_value_is_named_not_shown(monkeypatch):
    monkeypatch.setenv("BILLING_DB_POOL_SIZE", "many")
    monkeypatch.setenv("BILLING_ENV", "staging")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "BILLING_DB_POOL_SIZE" in text and "BILLING_ENV" in text
    assert "many" not in text
