"""The load: phones posting single readings, vendors posting batches, clinicians reading, all over HTTP.

One asyncio event loop drives every simulated client. Each phone, vendor and clinician has its
own aiohttp session and keep-alive connection, as real devices do. A single pool shared by 500
clients is the wrong model, and it was also a bottleneck: httpx's pool scans every pooled
connection for each request, so one shared pool of ~700 connections capped the generator near
35 requests/s. The generator shares the machine's two cores with the stack it measures, so its
own cost matters: aiohttp's C HTTP parser costs about half the CPU per request of httpx (0.26
of a core at ~100 requests/s with httpx). Bodies are serialised with orjson.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from django_otp.oath import totp

from glucoscope.loadtest.population import Clinician, Phone, Population, Vendor

SINGLE_POST = "POST /api/v1/readings (1 reading)"
BATCH_POST = "POST /api/v1/readings ({size:,} readings)"
CSRF_FIELD = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass(frozen=True, slots=True)
class Workload:
    seconds: float
    phone_interval: float = 5.0  # each phone posts one reading every this many seconds, ±20 % jitter
    vendor_interval: float = 10.0  # each vendor starts a batch every this many seconds (or at once if late)
    batch_size: int = 1_000
    think_time: float = 3.0  # clinicians pause 1–5 s (uniform around this) between pages
    web_pages: bool = True  # clinicians also load /care/ and /care/patients/{id}/ with a session


@dataclass(frozen=True, slots=True)
class Answer:
    """A response, read in full, with the headers the clients use."""

    status_code: int
    content: bytes
    location: str = ""
    set_cookies: tuple[str, ...] = ()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return orjson.loads(self.content)


@dataclass(slots=True)
class Sample:
    """A phone reading the server acknowledged, for the ingest-to-forecast lag."""

    patient_id: int
    measured_at: datetime
    acked_at: datetime


@dataclass(slots=True)
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    transport_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    signed_in: int = 0  # clinicians with a verified /care/ session

    def record(self, endpoint: str, seconds: float, status: int) -> None:
        self.latencies[endpoint].append(seconds)
        self.statuses[endpoint][status] += 1

    def count_ingest(self, response: Answer) -> int:
        """Adds a 2xx ingest answer's counts; returns how many readings it stored."""
        body = response.json()
        self.accepted += body["accepted"]
        self.duplicates += body["duplicates"]
        self.rejected += len(body["rejected"])
        return int(body["accepted"])

    @property
    def requests(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.statuses.values()) + sum(self.transport_errors.values())

    @property
    def server_errors(self) -> int:
        return sum(n for by_status in self.statuses.values() for status, n in by_status.items() if status >= 500)

    @property
    def errors(self) -> int:
        return sum(n for by_status in self.statuses.values() for status, n in by_status.items() if status >= 400) + sum(
            self.transport_errors.values())


class LoadGenerator:
    def __init__(self, base_url: str, population: Population, workload: Workload, *, seed: int = 1) -> None:
        self.base_url = base_url
        self.population = population
        self.workload = workload
        self.results = Results()
        self.sign_in_results = Results()  # before the clock: reported apart from the load
        self.random = random.Random(seed)
        self.deadline = 0.0

    async def _request(self, client: aiohttp.ClientSession, endpoint: str, method: str, url: str, *,
                       results: Results | None = None, **kwargs: Any) -> Answer | None:
        results = results or self.results
        sent = time.perf_counter()
        try:
            async with client.request(method, url, allow_redirects=False, **kwargs) as response:
                answer = Answer(response.status, await response.read(), response.headers.get("location", ""),
                                tuple(response.headers.getall("set-cookie", ())))
        except (aiohttp.ClientError, TimeoutError):
            results.transport_errors[endpoint] += 1
            return None
        results.record(endpoint, time.perf_counter() - sent, answer.status_code)
        return answer

    def _running(self) -> bool:
        return time.monotonic() < self.deadline

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    # --- phones --------------------------------------------------------------------

    async def _phone(self, client: aiohttp.ClientSession, phone: Phone) -> None:
        interval = self.workload.phone_interval
        headers = {"Authorization": f"Bearer {phone.token}", "Content-Type": "application/json"}
        sequence = self.random.randrange(200)
        await self._sleep(self.random.uniform(0, interval))  # spread the phones over the interval
        while self._running():
            next_at = time.monotonic() + interval * self.random.uniform(0.8, 1.2)
            measured_at = datetime.now(UTC)
            # Successive values differ, so no reading is a near-duplicate (< 60 s, same value) of the last.
            body = orjson.dumps({"timestamp": measured_at.isoformat(), "value": 70 + (sequence * 7) % 200,
                                 "unit": "mg/dL", "trend": "Flat"})
            sequence += 1
            response = await self._request(client, SINGLE_POST, "POST", "/api/v1/readings", data=body, headers=headers)
            if response is not None and response.is_success and self.results.count_ingest(response):
                self.results.samples.append(Sample(phone.patient_id, measured_at, datetime.now(UTC)))
            await self._sleep(next_at - time.monotonic())

    # --- vendors -------------------------------------------------------------------

    async def _vendor(self, client: aiohttp.ClientSession, vendor: Vendor, number: int) -> None:
        """Back-fills: each batch covers the vendor's patients evenly, 5 minutes apart, further back each time."""
        size = self.workload.batch_size
        endpoint = BATCH_POST.format(size=size)
        headers = {"Authorization": f"Api-Key {vendor.key}", "Content-Type": "application/json"}
        per_patient = max(1, size // len(vendor.serials))
        clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        await self._sleep(self.workload.vendor_interval * number / max(1, len(self.population.vendors)))
        while self._running():
            next_at = time.monotonic() + self.workload.vendor_interval
            items = []
            for step in range(per_patient):
                moment = (clock - timedelta(minutes=5 * step)).isoformat()
                for index, serial in enumerate(vendor.serials):
                    items.append({"device": serial, "timestamp": moment, "value": 80 + (step * 13 + index) % 220,
                                  "unit": "mg/dL", "trend": "Flat"})
            clock -= timedelta(minutes=5 * per_patient)
            response = await self._request(client, endpoint, "POST", "/api/v1/readings",
                                           data=orjson.dumps(items[:size]), headers=headers)
            if response is not None and response.is_success:
                self.results.count_ingest(response)
            await self._sleep(next_at - time.monotonic())

    # --- clinicians ----------------------------------------------------------------

    async def _sign_in(self, client: aiohttp.ClientSession, clinician: Clinician) -> dict[str, str]:
        """The /care/ sign-in as a browser does it: the password form, then the authenticator code
        when the pages ask for one. Cookies are carried by hand: production marks them Secure, and
        a cookie jar would not send those over loopback HTTP. Returns {} when sign-in failed."""
        cookies: dict[str, str] = {}
        answer = await self._submit_form(client, "/care/login/?next=/care/", "/care/login/", cookies,
                                          {"username": clinician.username, "password": clinician.password})
        if answer is None or answer.status_code != 302:
            return {}
        location = urlsplit(answer.location).path
        if location.startswith("/care/otp"):
            code = totp(clinician.totp_key)
            answer = await self._submit_form(client, f"{location}?next=/care/", "/care/otp/", cookies, {"code": f"{code:06d}"})
            if answer is None or answer.status_code != 302:
                return {}
            location = urlsplit(answer.location).path
        if location != "/care/":
            return {}
        # Signed in only if the dashboard itself answers, rather than sending the session back to a sign-in step.
        dashboard = await self._request(client, "GET /care/", "GET", "/care/", results=self.sign_in_results,
                                        headers={"Cookie": _cookie_header(cookies)})
        return cookies if dashboard is not None and dashboard.status_code == 200 else {}

    async def _submit_form(self, client: aiohttp.ClientSession, url: str, name: str, cookies: dict[str, str],
                           fields: dict[str, str]) -> Answer | None:
        """GET a form page for its CSRF token, then POST it (both recorded apart from the load)."""
        setup = self.sign_in_results
        page = await self._request(client, f"GET {name}", "GET", url, results=setup,
                                   headers={"Cookie": _cookie_header(cookies)})
        if page is None or page.status_code != 200:
            return None
        _keep_cookies(page, cookies)
        match = CSRF_FIELD.search(page.content)
        form = {**fields, "csrfmiddlewaretoken": match.group(1).decode() if match else ""}
        answer = await self._request(client, f"POST {name}", "POST", url, data=form, results=setup,
                                     headers={"Cookie": _cookie_header(cookies), "Referer": f"{self.base_url}{url}"})
        if answer is not None:
            _keep_cookies(answer, cookies)
        return answer

    async def _clinician(self, client: aiohttp.ClientSession, clinician: Clinician, cookies: dict[str, str]) -> None:
        api = {"Authorization": f"Bearer {clinician.token}"}
        think = self.workload.think_time
        await self._sleep(self.random.uniform(0, think))
        web = {"Cookie": _cookie_header(cookies)}
        while self._running():
            # The dashboard: the patient list from the API, and the care-team page.
            listing = await self._request(client, "GET /api/v1/patients", "GET", "/api/v1/patients", headers=api)
            if cookies:
                await self._request(client, "GET /care/", "GET", "/care/", headers=web)
            patients = listing.json().get("results", []) if listing is not None and listing.is_success else []
            await self._sleep(self.random.uniform(think / 3, think * 5 / 3))
            if not patients or not self._running():
                continue
            patient_id = self.random.choice(patients)["id"]
            since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
            base = f"/api/v1/patients/{patient_id}"
            # One patient page: what the app fetches for it, in parallel as a browser would.
            calls = [
                self._request(client, "GET /api/v1/patients/{id}/summary", "GET", f"{base}/summary", headers=api),
                self._request(client, "GET /api/v1/patients/{id}/readings", "GET", f"{base}/readings",
                              params={"start": since}, headers=api),
                self._request(client, "GET /api/v1/patients/{id}/forecast", "GET", f"{base}/forecast", headers=api),
                self._request(client, "GET /api/v1/patients/{id}/metrics", "GET", f"{base}/metrics", headers=api),
            ]
            if cookies:
                calls.append(self._request(client, "GET /care/patients/{id}/", "GET", f"/care/patients/{patient_id}/",
                                           headers=web))
            await asyncio.gather(*calls)
            await self._sleep(self.random.uniform(think / 3, think * 5 / 3))

    # --- run -----------------------------------------------------------------------

    async def run(self) -> Results:
        population = self.population
        timeout = aiohttp.ClientTimeout(total=60.0, connect=10.0)

        async with contextlib.AsyncExitStack() as clients:
            async def own_client(connections: int) -> aiohttp.ClientSession:
                # Cookies are carried by hand (see _sign_in), so the session keeps none.
                client = aiohttp.ClientSession(
                    base_url=self.base_url, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                    connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=25.0),
                )
                return await clients.enter_async_context(client)

            phones = [await own_client(1) for _ in population.phones]
            vendors = [await own_client(1) for _ in population.vendors]
            # A clinician's patient page fetches up to five resources in parallel, as a browser does.
            clinicians = [await own_client(6) for _ in population.clinicians]
            # Clinicians sign in to /care/ before the clock starts: a password hash costs ~0.3 s of
            # CPU, once per session, and is not what the steady state measures.
            sessions = await asyncio.gather(*[
                self._sign_in(client, clinician) if self.workload.web_pages else _no_session()
                for client, clinician in zip(clinicians, population.clinicians, strict=True)
            ])
            self.sign_in_results.signed_in = sum(1 for cookies in sessions if cookies)
            self.results.started = time.perf_counter()
            self.deadline = time.monotonic() + self.workload.seconds
            tasks = [self._phone(client, phone) for client, phone in zip(phones, population.phones, strict=True)]
            tasks += [self._vendor(client, vendor, number)
                      for number, (client, vendor) in enumerate(zip(vendors, population.vendors, strict=True))]
            tasks += [self._clinician(client, clinician, cookies)
                      for client, clinician, cookies in zip(clinicians, population.clinicians, sessions, strict=True)]
            try:
                await asyncio.gather(*tasks)
            finally:
                self.results.finished = time.perf_counter()
        return self.results


async def _no_session() -> dict[str, str]:
    return {}


def _keep_cookies(response: Answer, cookies: dict[str, str]) -> None:
    for header in response.set_cookies:
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            cookies[name] = morsel.value


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())
