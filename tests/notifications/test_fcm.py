"""The FCM transport on the real firebase-admin code path, against the local stub server (GUIDE.md §10)."""

from __future__ import annotations

import random

import firebase_admin
import pytest
from firebase_admin import messaging

from notifications import fcm
from notifications.fcm import NOT_CONFIGURED, FcmTransport, PushMessage, backoff_delay, classify
from notifications.fcm_stub import FcmStub


def push(token: str, n: int = 1) -> PushMessage:
    return PushMessage(token=token, title="Glucose alert", body="Open GlucoScope for details.",
                       data={"notification_id": str(n), "kind": "low"}, collapse_id=f"gs-{n}", high_priority=True)


def test_canary_firebase_admin_still_reads_the_send_url_from_the_private_class_constant() -> None:
    # If this fails, firebase-admin moved the URL: tests and FCM_ENDPOINT would silently hit Google. Re-pin or adapt fcm.py.
    assert firebase_admin.__version__ == "7.7.0", "requirements.txt pins firebase-admin==7.7.0"
    assert messaging._MessagingService.FCM_URL.endswith("/v1/projects/{0}/messages:send")
    assert callable(messaging._get_messaging_service)


def test_a_message_reaches_the_stub_through_firebase_admin(transport: FcmTransport, fcm_stub: FcmStub) -> None:
    [outcome] = transport.send([push("good-token-1")])
    assert outcome.ok and outcome.message_id.startswith("projects/glucoscope-stub/messages/")
    [received] = fcm_stub.state.delivered_to("good-token-1")
    assert received["notification"] == {"title": "Glucose alert", "body": "Open GlucoScope for details."}
    assert received["data"] == {"notification_id": "1", "kind": "low"}
    assert received["android"]["priority"] == "high" and received["apns"]["headers"]["apns-collapse-id"] == "gs-1"
    assert fcm_stub.state.token_requests == 1  # the generated service account got an OAuth token from the stub


def test_a_dead_token_is_a_permanent_failure_that_deactivates_it(transport: FcmTransport) -> None:
    unregistered, mismatch = transport.send([push("dead-abc"), push("mismatch-abc")])
    assert (unregistered.error_code, unregistered.permanent, unregistered.deactivate_token) == ("UNREGISTERED", True, True)
    assert (mismatch.error_code, mismatch.permanent, mismatch.deactivate_token) == ("SENDER_ID_MISMATCH", True, True)


def test_an_invalid_token_is_deactivated_only_because_fcm_says_the_token_is_invalid(transport: FcmTransport) -> None:
    [outcome] = transport.send([push("invalid-xyz")])
    assert outcome.error_code == "INVALID_ARGUMENT" and outcome.deactivate_token


def test_quota_exceeded_is_retried_with_backoff_and_then_succeeds(transport: FcmTransport, fcm_stub: FcmStub) -> None:
    [outcome] = transport.send([push("quota-1")])
    assert outcome.ok
    assert fcm_stub.state.attempts["quota-1"] == 2
    assert len(transport.sleeps) == 1 and 0 <= transport.sleeps[0] <= transport.backoff_base  # type: ignore[attr-defined]


def test_quota_exceeded_past_the_maximum_stays_transient(fcm_stub: FcmStub) -> None:
    fcm_stub.state.quota_failures = 10
    transport = FcmTransport(credentials_file=fcm_stub.credentials_file, endpoint=fcm_stub.url, max_attempts=3,
                             sleep=lambda s: None)
    [outcome] = transport.send([push("quota-2")])
    assert outcome.transient and outcome.error_code == "QUOTA_EXCEEDED"
    assert fcm_stub.state.attempts["quota-2"] == 3


def test_a_mixed_batch_gets_one_outcome_per_message_in_order(transport: FcmTransport, fcm_stub: FcmStub) -> None:
    tokens = ["ok-1", "dead-1", "quota-3", "ok-2", "mismatch-1"]
    outcomes = transport.send([push(t, i) for i, t in enumerate(tokens)])
    assert [o.ok for o in outcomes] == [True, False, True, True, False]
    assert [o.deactivate_token for o in outcomes] == [False, True, False, False, True]
    # Only the transient message was sent again.
    assert fcm_stub.state.attempts == {"ok-1": 1, "dead-1": 1, "quota-3": 2, "ok-2": 1, "mismatch-1": 1}


def test_more_than_500_messages_go_in_batches(transport: FcmTransport, fcm_stub: FcmStub, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = messaging.send_each
    monkeypatch.setattr(messaging, "send_each", lambda msgs, app=None: sizes.append(len(msgs)) or real(msgs, app=app))
    outcomes = transport.send([push(f"t-{i}", i) for i in range(501)])
    assert sizes == [500, 1] and all(o.ok for o in outcomes)


def test_without_credentials_nothing_is_sent_and_nothing_crashes() -> None:
    transport = FcmTransport(credentials_file="", endpoint="http://127.0.0.1:9")
    assert not transport.configured
    assert transport.send([push("a"), push("b")]) == [NOT_CONFIGURED, NOT_CONFIGURED]


def test_an_unreadable_credentials_file_fails_loudly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "sa.json"
    bad.write_text("{not json")
    transport = FcmTransport(credentials_file=str(bad), endpoint="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="is not a readable service-account JSON"):
        transport.send([push("a")])


def test_an_unreachable_endpoint_is_transient(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with FcmStub(directory=tmp_path) as stub:
        url = stub.url
    # The stub is gone: the OAuth call and the send both fail to connect.
    transport = FcmTransport(credentials_file=stub.credentials_file, endpoint=url, timeout_seconds=1, max_attempts=2,
                             sleep=lambda s: None)
    [outcome] = transport.send([push("ok-x")])
    assert outcome.transient


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, base=0.5, cap=8.0, rng=rng) for a in range(10) for _ in range(20)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(backoff_delay(0, base=0.5, cap=8.0, rng=rng) for _ in range(50)) <= 0.5


def test_unknown_errors_are_permanent_and_keep_the_token() -> None:
    outcome = classify(RuntimeError("boom"))
    assert outcome.permanent and not outcome.deactivate_token and outcome.error_code == "UNKNOWN"
    assert fcm.DEAD_TOKEN_CODES == {"UNREGISTERED", "SENDER_ID_MISMATCH"}
