"""FCM transport over firebase-admin messaging (pinned in requirements.txt, GUIDE.md §10).

Like healthchecks' transports, every failed message carries a `permanent` flag, so the caller
knows whether to retry or give up, and `deactivate_token` when the token is dead. This module
knows nothing of Django models: it takes messages and returns one outcome per message.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import firebase_admin
from firebase_admin import credentials, exceptions, messaging

logger = logging.getLogger(__name__)

# firebase-admin refuses more than 500 messages per send_each call.
BATCH_SIZE = 500
# The private class constant firebase-admin 7.x reads the send URL from (GUIDE.md §10). A canary
# test (tests/notifications/test_fcm.py) fails loudly if a new version moves it.
_URL_TEMPLATE = "{endpoint}/v1/projects/{{0}}/messages:send"

ERR_NOT_CONFIGURED = "not_configured"
ERR_CREDENTIALS = "FIREBASE_CREDENTIALS_FILE {path!r} is not a readable service-account JSON: {error}"

# Error codes (firebase-admin's `code`, or the FCM errorCode) that mean the token is dead.
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
# Worth retrying, with backoff: the message was not accepted, but may be later.
TRANSIENT_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
_url_lock = threading.Lock()
_INVALID_TOKEN_HINTS = ("registration token", "not a valid fcm registration token")


@dataclass(frozen=True, slots=True)
class PushMessage:
    token: str
    title: str
    body: str
    data: dict[str, str]
    # Android tag / APNs collapse id: a duplicate delivery replaces rather than adds a notification.
    collapse_id: str
    high_priority: bool = False


@dataclass(frozen=True, slots=True)
class SendOutcome:
    ok: bool
    message_id: str = ""
    error_code: str = ""
    error: str = ""
    permanent: bool = False
    deactivate_token: bool = False

    @property
    def transient(self) -> bool:
        return not self.ok and not self.permanent


NOT_CONFIGURED = SendOutcome(ok=False, error_code=ERR_NOT_CONFIGURED, error=ERR_NOT_CONFIGURED, permanent=True)


def _error_code(exc: BaseException) -> str:
    """The FCM errorCode where firebase-admin mapped one to a class, otherwise the canonical code."""
    if isinstance(exc, messaging.UnregisteredError):
        return "UNREGISTERED"
    if isinstance(exc, messaging.SenderIdMismatchError):
        return "SENDER_ID_MISMATCH"
    if isinstance(exc, messaging.QuotaExceededError):
        return "QUOTA_EXCEEDED"
    if isinstance(exc, messaging.ThirdPartyAuthError):
        return "THIRD_PARTY_AUTH_ERROR"
    if isinstance(exc, exceptions.FirebaseError):
        return str(exc.code)
    return "UNKNOWN"


def classify(exc: BaseException) -> SendOutcome:
    code = _error_code(exc)
    message = str(exc)[:200]
    if code in DEAD_TOKEN_CODES:
        return SendOutcome(ok=False, error_code=code, error=message, permanent=True, deactivate_token=True)
    if code == "INVALID_ARGUMENT":
        # GUIDE.md §10: INVALID_ARGUMENT is also a malformed message; drop the token only when FCM says it is the token.
        dead = any(hint in message.lower() for hint in _INVALID_TOKEN_HINTS)
        return SendOutcome(ok=False, error_code=code, error=message, permanent=True, deactivate_token=dead)
    if code in TRANSIENT_CODES:
        return SendOutcome(ok=False, error_code=code, error=message)
    return SendOutcome(ok=False, error_code=code, error=message, permanent=True)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog, 'Exponential backoff and jitter'): uniform in [0, min(cap, base·2^attempt)]."""
    return (rng or random).uniform(0, min(cap, base * (2**attempt)))


def _to_fcm(message: PushMessage) -> messaging.Message:
    priority = "high" if message.high_priority else "normal"
    with warnings.catch_warnings():
        # firebase-admin 7.7 deprecates `token` for `fid` (Firebase installation ids). Apps register
        # FCM registration tokens, which FCM v1 still accepts as `token`; switch when the apps send fids.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _message(message, priority)


def _message(message: PushMessage, priority: str) -> messaging.Message:
    return messaging.Message(
        token=message.token,
        notification=messaging.Notification(title=message.title, body=message.body),
        data=message.data,
        android=messaging.AndroidConfig(
            priority=priority, collapse_key=message.collapse_id,
            notification=messaging.AndroidNotification(tag=message.collapse_id),
        ),
        apns=messaging.APNSConfig(
            headers={"apns-collapse-id": message.collapse_id, "apns-priority": "10" if message.high_priority else "5"}
        ),
        webpush=messaging.WebpushConfig(headers={"Urgency": priority, "Topic": message.collapse_id[:32]}),
    )


@dataclass
class FcmTransport:
    """Sends PushMessages through one firebase-admin app; build it with `transport_from_settings()`."""

    credentials_file: str
    endpoint: str
    timeout_seconds: int = 10
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    _app: firebase_admin.App | None = field(default=None, init=False, repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.credentials_file)

    def _firebase_app(self) -> firebase_admin.App:
        if self._app is None:
            try:
                info = json.loads(Path(self.credentials_file).read_text())
                credential = credentials.Certificate(info)
            except (OSError, ValueError) as exc:
                raise ValueError(ERR_CREDENTIALS.format(path=self.credentials_file, error=exc)) from exc
            name = f"glucoscope-{self.endpoint}-{self.credentials_file}"
            try:
                self._app = firebase_admin.get_app(name)
            except ValueError:
                with _url_lock:
                    # The URL is read once, when the app's messaging service is built; build it now,
                    # while the class constant holds this transport's endpoint.
                    messaging._MessagingService.FCM_URL = _URL_TEMPLATE.format(endpoint=self.endpoint)
                    app = firebase_admin.initialize_app(
                        credential, options={"httpTimeout": self.timeout_seconds, "projectId": info.get("project_id")},
                        name=name,
                    )
                    messaging._get_messaging_service(app)
                self._app = app
        return self._app

    def send(self, messages: Sequence[PushMessage]) -> list[SendOutcome]:
        """One outcome per message, in order. Transient failures are retried here, with backoff, up to max_attempts."""
        if not self.configured:
            return [NOT_CONFIGURED] * len(messages)
        outcomes: list[SendOutcome] = [SendOutcome(ok=False, error_code="UNSENT", error="not attempted")] * len(messages)
        pending = list(range(len(messages)))
        for attempt in range(self.max_attempts):
            if attempt:
                self.sleep(backoff_delay(attempt - 1, base=self.backoff_base, cap=self.backoff_cap))
            for start in range(0, len(pending), BATCH_SIZE):
                chunk = pending[start : start + BATCH_SIZE]
                for index, outcome in zip(chunk, self._send_batch([messages[i] for i in chunk]), strict=True):
                    outcomes[index] = outcome
            pending = [i for i in pending if outcomes[i].transient]
            if not pending:
                break
            logger.warning("FCM: %d messages failed transiently (attempt %d of %d)", len(pending), attempt + 1, self.max_attempts)
        return outcomes

    def _send_batch(self, batch: Sequence[PushMessage]) -> list[SendOutcome]:
        app = self._firebase_app()  # a bad credentials file is a configuration error: raise, do not retry
        try:
            response = messaging.send_each([_to_fcm(m) for m in batch], app=app)
        except Exception as exc:  # firebase-admin wraps whole-batch failures (token endpoint down) in UnknownError
            # A whole-batch failure says nothing about the messages: retry them all.
            logger.warning("FCM batch failed: %s", exc)
            return [SendOutcome(ok=False, error_code="UNAVAILABLE", error=str(exc)[:200])] * len(batch)
        return [
            SendOutcome(ok=True, message_id=r.message_id or "") if r.success else classify(r.exception)
            for r in response.responses
        ]


_transport_lock = threading.Lock()
_transports: dict[tuple[str, str, int, int], FcmTransport] = {}


def transport_from_settings() -> FcmTransport:
    """One transport (and firebase-admin app, with its HTTP session) per process and configuration."""
    from django.conf import settings

    key = (settings.FIREBASE_CREDENTIALS_FILE, settings.FCM_ENDPOINT, settings.FCM_HTTP_TIMEOUT_SECONDS, settings.FCM_MAX_ATTEMPTS)
    with _transport_lock:
        if key not in _transports:
            _transports[key] = FcmTransport(
                credentials_file=key[0], endpoint=key[1], timeout_seconds=key[2], max_attempts=key[3]
            )
        return _transports[key]
