"""The per-request user lookup behind Bearer authentication returns what the ORM would, in one query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from glucoscope.patients.models import Patient, User
from glucoscope.patients.selectors import user_get_with_patient
from tests.conftest import World

pytestmark = pytest.mark.django_db


def _field_values(instance: User | Patient) -> dict[str, object]:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


def test_a_patient_comes_with_their_profile_equal_to_the_orm_and_in_one_query(world: World) -> None:
    user = world.alice.user
    user.last_login = timezone.now()
    user.save(update_fields=["last_login"])
    with CaptureQueriesContext(connection) as queries:
        found = user_get_with_patient(user_id=str(user.pk))  # tokens carry the id as a string
        patient = found.patient
    assert len(queries) == 1
    expected = User.objects.select_related("patient").get(pk=user.pk)
    assert _field_values(found) == _field_values(expected)
    assert _field_values(patient) == _field_values(expected.patient)
    assert found.last_login is not None and timezone.is_aware(found.last_login)
    assert patient.user is found


def test_a_user_without_a_patient_profile_raises_on_access_without_another_query(world: World) -> None:
    clinician = world.clinician
    found = user_get_with_patient(user_id=clinician.pk)
    with CaptureQueriesContext(connection) as queries, pytest.raises(Patient.DoesNotExist):
        found.patient  # noqa: B018
    assert len(queries) == 0
    assert found.role == clinician.role and found.is_active is True


@pytest.mark.parametrize("user_id", [10**9, "not-a-number", None])
def test_an_unknown_or_malformed_id_is_does_not_exist(user_id: object) -> None:
    with pytest.raises(User.DoesNotExist):
        user_get_with_patient(user_id=user_id)
