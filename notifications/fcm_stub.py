"""A local stand-in for Google's OAuth token endpoint and the FCM v1 send API (GUIDE.md §10).

There is no FCM emulator, so tests and `make bench-notify` run the real firebase-admin code
path against this server on 127.0.0.1 with a generated service account. It is a development
tool only; production never imports it.

Tokens choose the answer, so one batch can mix results:
- `dead-…`      404 NOT_FOUND, errorCode UNREGISTERED (firebase-admin: UnregisteredError)
- `mismatch-…`  403 PERMISSION_DENIED, errorCode SENDER_ID_MISMATCH
- `invalid-…`   400 INVALID_ARGUMENT, "The registration token is not a valid FCM registration token"
- `quota-…`     429 RESOURCE_EXHAUSTED, errorCode QUOTA_EXCEEDED, for the first `quota_failures` sends of that token
- anything else 200 {"name": "projects/<id>/messages/<n>"}

Fault tests can hold sends: while `state.hold_sends` is set, each send waits for `state.release`
before it answers. A send whose client went away meanwhile (the worker was killed) is not
answered and is logged in `state.abandoned`, not `state.received`: FCM never confirmed it.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROJECT_ID = "glucoscope-stub"
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def _error(code: int, status: str, message: str, error_code: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if error_code:
        body["details"] = [{"@type": _FCM_ERROR_TYPE, "errorCode": error_code}]
    return {"error": body}


@dataclass
class StubState:
    quota_failures: int = 1
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    token_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_sends: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    abandoned: list[dict[str, Any]] = field(default_factory=list)

    def delivered_to(self, token: str) -> list[dict[str, Any]]:
        """Messages accepted (200) for a token."""
        with self.lock:
            return [m for m in self.received if m.get("token") == token]


class _Handler(BaseHTTPRequestHandler):
    server: _StubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read state, not logs
        return

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _client_gone(self) -> bool:
        """True when the sender closed its connection while its request was held (it was killed)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        state = self.server.state
        if self.path == "/token":
            with state.lock:
                state.token_requests += 1
            self._reply(200, {"access_token": "stub-access-token", "expires_in": 3600, "token_type": "Bearer"})
            return
        if not (self.path.startswith("/v1/projects/") and self.path.endswith("/messages:send")):
            self._reply(404, _error(404, "NOT_FOUND", f"no route {self.path}", None))
            return
        if self.headers.get("Authorization") != "Bearer stub-access-token":
            self._reply(401, _error(401, "UNAUTHENTICATED", "missing or wrong access token", None))
            return
        message = json.loads(raw or b"{}").get("message", {})
        token = str(message.get("token", ""))
        with state.lock:
            state.attempts[token] += 1
            attempt = state.attempts[token]
        if state.hold_sends.is_set():
            with state.lock:
                state.held += 1
            state.release.wait(timeout=60)
            if self._client_gone():
                with state.lock:
                    state.abandoned.append(message)
                self.close_connection = True
                return
        if token.startswith("dead-"):
            self._reply(404, _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"))
        elif token.startswith("mismatch-"):
            self._reply(403, _error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"))
        elif token.startswith("invalid-"):
            self._reply(400, _error(400, "INVALID_ARGUMENT",
                                    "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT"))
        elif token.startswith("quota-") and attempt <= state.quota_failures:
            self._reply(429, _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED"))
        else:
            with state.lock:
                state.received.append(message)
                number = len(state.received)
            project = self.path.split("/")[3]
            self._reply(200, {"name": f"projects/{project}/messages/{number}"})


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, state: StubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FcmStub:
    """Start with `with FcmStub() as stub:`; `stub.url` is the FCM_ENDPOINT, `stub.credentials_file` the service account."""

    def __init__(self, *, quota_failures: int = 1, directory: Path | None = None) -> None:
        self.state = StubState(quota_failures=quota_failures)
        self._server = _StubServer(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._tmp = None if directory else tempfile.TemporaryDirectory()
        self._directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.credentials_file = str(self._directory / "fake-service-account.json")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FcmStub:
        Path(self.credentials_file).write_text(json.dumps(fake_service_account(token_uri=f"{self.url}/token")))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()


def fake_service_account(*, token_uri: str, project_id: str = PROJECT_ID) -> dict[str, str]:
    """A service-account dict with a freshly generated RSA key: valid to google-auth, useless anywhere else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "stub-key-id",
        "private_key": pem,
        "client_email": f"stub@{project_id}.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": f"{token_uri.rsplit('/', 1)[0]}/auth",
        "token_uri": token_uri,
    }


def _serve(conn: Any) -> None:
    """Child process: run a stub and report where it is; stop when the parent says so."""
    with FcmStub() as stub:
        conn.send((stub.url, stub.credentials_file))
        conn.recv()


def bench(count: int, repeats: int = 3) -> float:
    """Notifications per second through FcmTransport.send (send_each in batches of 500) against the stub.

    The stub runs in its own process, so the figure is firebase-admin's client path, not the two
    sharing one interpreter lock.
    """
    import multiprocessing

    from notifications.fcm import FcmTransport, PushMessage

    best = 0.0
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    url, credentials_file = parent.recv()
    try:
        transport = FcmTransport(credentials_file=credentials_file, endpoint=url, timeout_seconds=10)
        messages = [
            PushMessage(token=f"bench-{i}", title="Glucose alert", body="Open GlucoScope for details.",
                        data={"notification_id": str(i), "kind": "low"}, collapse_id=f"gs-{i}", high_priority=True)
            for i in range(count)
        ]
        transport.send(messages[:10])  # warm up: OAuth token, connection pool
        for _ in range(repeats):
            started = time.perf_counter()
            outcomes = transport.send(messages)
            elapsed = time.perf_counter() - started
            assert all(o.ok for o in outcomes), "the stub refused bench messages"
            best = max(best, count / elapsed)
    finally:
        parent.send("stop")
        server.join(timeout=10)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=int, default=5000, help="messages per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rate = bench(args.bench, args.repeats)
    print(f"FCM send_each against the local stub: {args.bench} notifications, best of {args.repeats}: {rate:,.0f} notifications/s")


if __name__ == "__main__":
    main()
