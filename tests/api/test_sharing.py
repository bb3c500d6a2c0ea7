"""A patient controls who sees their data: care-team consent and caregiver invitations, both revocable."""

from __future__ import annotations

import pytest

from glucoscope.patients.services import ERR_NO_SUCH_CARE_TEAM, ERR_NO_SUCH_CAREGIVER
from tests.conftest import World
from tests.factories import CareTeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def patient_ids_seen_by(world: World, role: str) -> set[int]:
    return {p["id"] for p in world.client(role).get("/api/v1/patients").json()["results"]}


def test_revoking_consent_hides_the_patient_from_the_care_team_at_once(world: World) -> None:
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    assert world.alice.pk in patient_ids_seen_by(world, "clinician")
    assert world.client("patient").delete(f"/api/v1/me/consents/{team_id}").status_code == 204
    assert world.alice.pk not in patient_ids_seen_by(world, "clinician")
    assert world.client("clinician").get(f"/api/v1/patients/{world.alice.pk}/readings").status_code == 404
    history = world.client("patient").get("/api/v1/me/consents").json()["results"]
    assert all(c["revoked_at"] for c in history)  # revoked consents stay as history
    assert world.client("patient").delete(f"/api/v1/me/consents/{team_id}").status_code == 404
    # Granting again restores access.
    assert world.client("patient").post("/api/v1/me/consents", {"care_team": team_id}, format="json").status_code == 201
    assert world.alice.pk in patient_ids_seen_by(world, "clinician")


def test_consent_to_a_new_team_gives_its_clinicians_access(world: World) -> None:
    from glucoscope.patients.services import care_team_add_clinician

    team = CareTeamFactory()
    care_team_add_clinician(care_team=team, clinician=world.other_clinician)
    assert world.alice.pk not in patient_ids_seen_by(world, "other_clinician")
    response = world.client("patient").post("/api/v1/me/consents", {"care_team": team.pk}, format="json")
    assert response.status_code == 201 and response.json()["care_team_name"] == team.name
    assert world.alice.pk in patient_ids_seen_by(world, "other_clinician")


@pytest.mark.parametrize("body, errors", [
    ({"care_team": 999_999}, {"care_team": [ERR_NO_SUCH_CARE_TEAM]}),
    ({"care_team": "1"}, {"care_team": ["A whole-number id is required."]}),
    ({}, {"care_team": ["A whole-number id is required."]}),
])
def test_bad_consent_requests_name_the_field(world: World, body: dict[str, object], errors: dict[str, list[str]]) -> None:
    response = world.client("patient").post("/api/v1/me/consents", body, format="json")
    assert response.status_code == 400 and response.json() == errors


def test_caregiver_invitation_and_revocation(world: World) -> None:
    new_caregiver = UserFactory(username="grandma", role="caregiver")
    from tests.conftest import bearer

    assert bearer(new_caregiver).get(f"/api/v1/patients/{world.alice.pk}/summary").status_code == 404
    response = world.client("patient").post("/api/v1/me/caregivers", {"username": "grandma"}, format="json")
    assert response.status_code == 201
    assert bearer(new_caregiver).get(f"/api/v1/patients/{world.alice.pk}/summary").status_code == 200
    assert world.client("patient").delete(f"/api/v1/me/caregivers/{new_caregiver.pk}").status_code == 204
    assert bearer(new_caregiver).get(f"/api/v1/patients/{world.alice.pk}/summary").status_code == 404
    assert {c["username"] for c in world.client("patient").get("/api/v1/me/caregivers").json()["results"]} == {"carol", "grandma"}


@pytest.mark.parametrize("username", ["nobody", "bob", "dr-dan"])
def test_only_caregiver_accounts_can_be_invited(world: World, username: str) -> None:
    response = world.client("patient").post("/api/v1/me/caregivers", {"username": username}, format="json")
    assert response.status_code == 400 and response.json() == {"username": [ERR_NO_SUCH_CAREGIVER]}


def test_a_caregiver_cannot_invite_others_or_change_consent(world: World) -> None:
    assert world.client("caregiver").post("/api/v1/me/caregivers", {"username": "carol"}, format="json").status_code == 403
    assert world.client("clinician").post("/api/v1/me/consents", {"care_team": 1}, format="json").status_code == 403
