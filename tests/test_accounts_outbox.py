"""The notification outbox: reruns send nothing twice; HTTP, SMTP and log senders; retries, dead, requeue."""

from __future__ import annotations

import email
import socketserver
import threading
from datetime import timedelta

import pytest
from test_accounts_support import add_org, add_plan, outbox, utc

from billing_pipeline.accounts import outbox as box
from billing_pipeline.accounts.clock import FixedClock
from billing_pipeline.accounts.senders import HttpSender, LogSender, SmtpSender, sender_from_settings
from billing_pipeline.accounts.settings import load_accounts_settings
from billing_pipeline.settings import SettingsError

pytest_plugins = ["test_accounts_support"]  # fixture: json_receiver
NOW = utc(2026, 4, 1, 3)


@pytest.fixture(autouse=True)
def _no_sender_configured(monkeypatch):
    for name in ("BILLING_NOTIFY_WEBHOOK_URL", "BILLING_NOTIFY_SMTP_URL", "BILLING_NOTIFY_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)


def _queue(engine, keys, at=NOW):
    with engine.begin() as conn:
        if not conn.exec_driver_sql("SELECT 1 FROM billing.organisations").first():
            add_org(conn, "acme", add_plan(conn))
        return box.queue(
            conn,
            [
                box.Notification(k, "grace_started", "acme", f"subject {k}", f"body {k}", {"k": k})
                for k in keys
            ],
            at=at,
            actor="test",
        )


def test_queueing_and_sending_twice_sends_once(engine, json_receiver):
    assert _queue(engine, ["a", "b", "c"]) == 3
    assert _queue(engine, ["a", "b", "c"]) == 0  # the same facts announced again
    clock = FixedClock(NOW)
    sender = HttpSender(json_receiver.url)

    first = box.deliver_due(engine, sender, clock, batch_size=2)  # two chunks
    assert (first.sent, first.failed, first.via) == (3, 0, "http")
    assert box.deliver_due(engine, sender, clock).sent == 0
    assert [(h["idempotency-key"], b["subject"]) for h, b in json_receiver.posts] == [
        ("a", "subject a"),
        ("b", "subject b"),
        ("c", "subject c"),
    ]
    assert (
        json_receiver.posts[0][1]["payload"] == {"k": "a"}
        and json_receiver.posts[0][1]["organisation_id"] == "acme"
    )
    assert {(n["sent_via"], n["sent_at"], n["attempts"]) for n in outbox(engine)} == {("http", NOW, 1)}


def test_not_due_yet_is_not_sent(engine):
    _queue(engine, ["later"], at=NOW + timedelta(hours=1))
    assert box.deliver_due(engine, LogSender(), FixedClock(NOW)).sent == 0
    assert box.deliver_due(engine, LogSender(), FixedClock(NOW + timedelta(hours=1))).sent == 1
    assert outbox(engine)[0]["sent_via"] == "log"


def test_failures_back_off_then_die_and_can_be_requeued(engine, json_receiver):
    _queue(engine, ["ok", "bad"])
    json_receiver.fail_keys.add("bad")
    clock = FixedClock(NOW)
    sender = HttpSender(json_receiver.url)
    result = box.deliver_due(engine, sender, clock, max_attempts=3)
    assert (result.sent, result.failed, result.dead) == (1, 1, [])
    bad = [n for n in outbox(engine) if n["dedupe_key"] == "bad"][0]
    assert (bad["attempts"], bad["next_attempt_at"], bad["sent_at"]) == (1, NOW + timedelta(minutes=5), None)
    assert "500" in bad["last_error"]

    assert box.deliver_due(engine, sender, clock, max_attempts=3).failed == 0  # backing off: not due
    clock.advance(timedelta(minutes=5))
    assert box.deliver_due(engine, sender, clock, max_attempts=3).failed == 1
    clock.advance(timedelta(minutes=10))
    result = box.deliver_due(engine, sender, clock, max_attempts=3)
    assert [d["notification_id"] for d in result.dead] == [bad["notification_id"]]
    clock.advance(timedelta(days=1))
    assert box.deliver_due(engine, sender, clock, max_attempts=3).failed == 0  # dead: never tried again

    json_receiver.fail_keys.clear()
    assert box.requeue_dead(engine, now=clock.now(), actor="cli:test") == 1
    assert box.deliver_due(engine, sender, clock).sent == 1
    sent = {h["idempotency-key"] for h, _ in json_receiver.posts}
    assert (
        sent == {"ok", "bad"} and len(json_receiver.posts) == 5
    )  # ok once, bad three failures and one success


class _Smtp(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        envelope = {"to": []}
        while line := self.rfile.readline():
            command = line.decode().strip().upper()
            if command == "DATA":
                self.wfile.write(b"354 go on\r\n")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                self.server.messages.append((envelope, email.message_from_bytes(data)))
                envelope = {"to": []}
            elif command.startswith("RCPT TO:"):
                envelope["to"].append(line.decode().strip()[8:])
            elif command == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_smtp_sender_mails_each_notification_once(engine, smtp_server, monkeypatch):
    monkeypatch.setenv("BILLING_NOTIFY_SMTP_URL", f"smtp://127.0.0.1:{smtp_server.server_address[1]}")
    monkeypatch.setenv("BILLING_NOTIFY_EMAIL_FROM", "billing@example.org")
    monkeypatch.setenv("BILLING_NOTIFY_EMAIL_TO", "ops@example.org, crm@example.org")
    sender = sender_from_settings(load_accounts_settings())
    assert isinstance(sender, SmtpSender)
    _queue(engine, ["m1", "m2"])
    assert box.deliver_due(engine, sender, FixedClock(NOW)).sent == 2
    assert box.deliver_due(engine, sender, FixedClock(NOW)).sent == 0
    (env1, m1), (_, m2) = smtp_server.messages
    assert env1["to"] == ["<ops@example.org>", "<crm@example.org>"]
    assert (m1["Subject"], m1["X-Billing-Notification"], m1.get_payload().strip()) == (
        "[acme] subject m1",
        "m1",
        "body m1",
    )
    assert m1["Message-ID"] == sender.message(box.Notification("m1", "k", "acme", "s", "b"))["Message-ID"]
    assert m1["Message-ID"] != m2["Message-ID"] and m1["Message-ID"].endswith("@example.org>")


def test_settings_choose_one_sender(monkeypatch, json_receiver):
    assert isinstance(sender_from_settings(load_accounts_settings()), LogSender)
    monkeypatch.setenv("BILLING_NOTIFY_WEBHOOK_URL", json_receiver.url)
    assert isinstance(sender_from_settings(load_accounts_settings()), HttpSender)
    monkeypatch.setenv("BILLING_NOTIFY_SMTP_URL", "smtp://127.0.0.1:25")
    with pytest.raises(SettingsError, match="not both"):
        load_accounts_settings()
    monkeypatch.delenv("BILLING_NOTIFY_WEBHOOK_URL")
    with pytest.raises(SettingsError, match="BILLING_NOTIFY_EMAIL_TO"):
        load_accounts_settings()
    monkeypatch.setenv("BILLING_DUNNING_RETRY_DAYS", "3,1")
    with pytest.raises(SettingsError, match="increasing"):
        load_accounts_settings()
    with pytest.raises(ValueError, match="smtp://host:25"):
        SmtpSender("http://mail", "a@b", ["c@d"])
