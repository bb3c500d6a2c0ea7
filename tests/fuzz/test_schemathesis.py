"""Property-based fuzzing of every operation in the OpenAPI schema, as every role (schemathesis + Hypothesis).

Each operation × role is one test, run in-process against the WSGI app inside the test transaction, so the
`world` fixture's patients, care teams, notifications and reminders exist: path ids are drawn both at random
and from the real ones. Every operation in the schema is covered automatically, new endpoints included. Every
response must pass schemathesis' checks: no 5xx, a documented status code and content type, a body and headers
matching the schema, schema-violating input rejected with a 4xx, undocumented methods answered 405, a request
without the credential refused.

Roles: the patient (alice), her caregiver, a clinician of a care team she consented to, staff, a vendor API key
(`Authorization: Api-Key`), alice's Nightscout `api-secret`, and anonymous. The native API and the Nightscout API
are one schema (/api/schema/, Nightscout operations tagged `nightscout`).

Bounded for CI and reproducible (derandomized, no example database): FUZZ_MAX_EXAMPLES (10) per operation × role,
FUZZ_FOREIGN_EXAMPLES (3) for a credential the operation does not take, FUZZ_DEADLINE_MS (10 s) per request.
For a longer run: `make fuzz` (200 examples) or FUZZ_MAX_EXAMPLES=1000 make fuzz.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.generation.case import Case

from tests.fuzz.conftest import OBSERVED, FuzzWorld

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
# A credential the operation does not accept (a Bearer token on the Nightscout API, an api-secret on the
# native one) is refused before any parsing, so a few examples say all there is to say.
FOREIGN_EXAMPLES = max(1, min(MAX_EXAMPLES, int(os.environ.get("FUZZ_FOREIGN_EXAMPLES", "3"))))
DEADLINE_MS = int(os.environ.get("FUZZ_DEADLINE_MS", "10000"))
ROLES = ["patient", "caregiver", "clinician", "staff", "vendor", "nightscout", "anonymous"]
NATIVE_ROLES = {"patient", "caregiver", "clinician", "staff", "vendor", "anonymous"}
NIGHTSCOUT_ROLES = {"nightscout", "anonymous"}



def _load_schema() -> Any:
    """The same document /api/schema/ serves (test_served_schema_is_the_fuzzed_one checks that)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    config = schemathesis.Config.from_dict({
        # Credentials come from the role under test, not from generated security parameters.
        "generation": {"with-security-parameters": False, "allow-x00": False},
        # Every other default check runs. `positive_data_acceptance` expects any schema-valid request to
        # succeed, but a 400 is the right answer for rules OpenAPI cannot state: `end` before `start`, a range
        # over 90 days, a timestamp in the future, a care team or caregiver that does not exist.
        "checks": {"positive_data_acceptance": {"enabled": False}},
    })
    schema = schemathesis.openapi.from_dict(document, config=config)
    from django.core.wsgi import get_wsgi_application

    schema.app = get_wsgi_application()
    return schema


SCHEMA = _load_schema()
LABELS = sorted(result.ok().label for result in SCHEMA.get_all_operations())


def _path_parameter_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def _strategy(operation: Any, fuzz: FuzzWorld) -> st.SearchStrategy[Case]:
    """Explicit requests for objects that exist, then random input, invalid input, and generated input aimed at
    objects that exist. Hypothesis draws the first alternative first, so every run includes the plain request."""
    strategies = []
    names = _path_parameter_names(operation.path)
    real = {name: fuzz.ids[name] for name in names if fuzz.ids.get(name)}
    alice = fuzz.world.alice.pk
    complete = bool(real) and len(real) == len(names)
    if complete and not operation.body:
        combinations = [dict(zip(real, values, strict=True)) for values in itertools.product(*real.values())]
        strategies.append(st.sampled_from(combinations).map(lambda params: operation.Case(path_parameters=params)))
    strategies += [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    if complete:
        chosen = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in real.items()})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(chosen.flatmap(lambda params, mode=mode: operation.as_strategy(mode, path_parameters=params)))
    if operation.body:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE).map(lambda case: _aim_body_at(case, alice)))
    return st.one_of(strategies)


def _aim_body_at(case: Case, patient_id: int) -> Case:
    """Bodies that name a patient name a real one, so ingest paths get past the scope check."""
    items = case.body if isinstance(case.body, list) else [case.body]
    for item in items:
        if isinstance(item, dict) and "patient" in item:
            item["patient"] = patient_id
    return case


def _accepts(path: str, role: str) -> bool:
    return role in (NIGHTSCOUT_ROLES if path.startswith("/nightscout/") else NATIVE_ROLES)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("label", LABELS)
def test_operation_conforms_to_schema(label: str, role: str, fuzz_world: FuzzWorld) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    headers = fuzz_world.headers(role)
    statuses = OBSERVED.setdefault((label, role), Counter())
    statuses.clear()

    @settings(
        max_examples=MAX_EXAMPLES if _accepts(operation.path, role) else FOREIGN_EXAMPLES,
        deadline=DEADLINE_MS,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(case=_strategy(operation, fuzz_world))
    def exercise(case: Case) -> None:
        response = case.call_and_validate(headers=headers)
        statuses[response.status_code] += 1

    exercise()
    if role == "patient" and operation.method == "get" and "{patient_id}" in operation.path:
        # The patient reading their own record must get past the scope check at least once: proof that real
        # ids are generated, not only random ones that all answer 404.
        assert any(200 <= code < 300 for code in statuses), f"no 2xx among {dict(statuses)}"


def test_served_schema_is_the_fuzzed_one(client: Any) -> None:
    """The fuzzer reads the generated document; it must be what /api/schema/ serves to clients."""
    served = client.get("/api/schema/?format=json").json()
    assert sorted(served["paths"]) == sorted(SCHEMA.raw_schema["paths"])
    assert {path for path in served["paths"] if path.startswith("/nightscout/")}, "the Nightscout API is in the schema"


@pytest.mark.parametrize("page_size", ["0", "abc", "-1", "2.5", "²", "false"])
def test_unusable_page_size_is_a_400_naming_it(world: Any, page_size: str) -> None:
    """Found by the fuzzer: DRF silently ignored an unusable page_size and served the default page."""
    response = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/readings", {"page_size": page_size})
    assert response.status_code == 400, response.content
    assert "page_size" in response.json()
    # Above the maximum is still capped (tests/api/test_reading_back.py::test_page_size_is_capped).
    assert world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/readings", {"page_size": "5000"}).status_code == 200
