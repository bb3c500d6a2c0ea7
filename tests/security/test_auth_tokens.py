"""Bearer tokens expire, refresh rotates, and revocation (logout, revoke-all, password change, deactivation) is immediate."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from api.authentication import GENERATION_CLAIM, GlucoScopeRefreshToken
from glucoscope.patients.models import User
from tests.conftest import World

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"


def sign_in(username: str, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    response = APIClient().post("/api/v1/auth/token", {"username": username, "password": password, **extra}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def bearer_client(access: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def refresh(token: str) -> tuple[int, dict[str, str]]:
    response = APIClient().post("/api/v1/auth/token/refresh", {"refresh": token}, format="json")
    return response.status_code, response.json()


def test_sign_in_gives_working_tokens_stamped_with_the_generation(world: World) -> None:
    tokens = sign_in("alice")
    assert bearer_client(tokens["access"]).get("/api/v1/me").status_code == 200
    assert AccessToken(tokens["access"])[GENERATION_CLAIM] == 0
    status, rotated = refresh(tokens["refresh"])
    assert status == 200 and rotated["refresh"] != tokens["refresh"]
    assert bearer_client(rotated["access"]).get("/api/v1/me").status_code == 200
    # Rotation blacklists the refresh token that was used.
    assert refresh(tokens["refresh"])[0] == 401


def test_expired_access_token_is_refused(world: World) -> None:
    token = GlucoScopeRefreshToken.for_user(world.alice.user).access_token
    token.set_iat(at_time=token.current_time - timedelta(minutes=20))
    token.set_exp(from_time=token.current_time - timedelta(minutes=20))  # expired five minutes ago
    response = bearer_client(str(token)).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_expired_refresh_token_is_refused(world: World) -> None:
    token = GlucoScopeRefreshToken.for_user(world.alice.user)
    token.set_exp(from_time=token.current_time - timedelta(days=15))
    assert refresh(str(token))[0] == 401


def test_logout_blacklists_the_refresh_token(world: World) -> None:
    tokens = sign_in("alice")
    client = bearer_client(tokens["access"])
    assert client.post("/api/v1/auth/logout", {"refresh": tokens["refresh"]}, format="json").status_code == 204
    assert refresh(tokens["refresh"])[0] == 401


def test_logout_refuses_someone_elses_or_a_missing_token(world: World) -> None:
    alice = bearer_client(sign_in("alice")["access"])
    bobs = sign_in("bob")["refresh"]
    response = alice.post("/api/v1/auth/logout", {"refresh": bobs}, format="json")
    assert response.status_code == 400 and "refresh" in response.json()
    assert refresh(bobs)[0] == 200  # bob's session is untouched
    response = alice.post("/api/v1/auth/logout", {}, format="json")
    assert response.status_code == 400 and "refresh" in response.json()
    assert alice.post("/api/v1/auth/logout", {"refresh": "not-a-jwt"}, format="json").status_code == 400


def test_revoke_all_kills_access_and_refresh_tokens_at_once(world: World) -> None:
    phone, laptop = sign_in("alice"), sign_in("alice")
    old_style = str(RefreshToken.for_user(world.alice.user).access_token)  # minted without the claim
    response = bearer_client(phone["access"]).post("/api/v1/auth/revoke-all")
    assert response.status_code == 200 and response.json()["revoked_refresh_tokens"] >= 2
    for access in (phone["access"], laptop["access"], old_style):
        response = bearer_client(access).get("/api/v1/me")
        assert response.status_code == 401 and response.json()["code"] == "token_revoked"
    assert refresh(phone["refresh"])[0] == 401
    assert refresh(laptop["refresh"])[0] == 401
    # Signing in again, even within the same second, works.
    fresh = sign_in("alice")
    assert bearer_client(fresh["access"]).get("/api/v1/me").status_code == 200
    # Other people are unaffected.
    assert world.client("other_patient").get("/api/v1/me").status_code == 200


def test_refresh_token_from_before_a_revocation_is_refused_even_if_never_recorded(world: World) -> None:
    # A refresh token missing from the outstanding list cannot be blacklisted; the generation still stops it.
    token = GlucoScopeRefreshToken()
    token["user_id"] = str(world.alice.user.pk)
    token[GENERATION_CLAIM] = 0
    user = User.objects.get(pk=world.alice.user.pk)
    user.revoke_tokens_in_memory()
    user.save()
    status, body = refresh(str(token))
    assert status == 401 and body["code"] == "token_revoked"


def test_password_change_revokes_every_token(world: World) -> None:
    tokens = sign_in("alice")
    user = User.objects.get(username="alice")
    user.set_password("a-brand-new-passphrase")
    user.save()
    assert bearer_client(tokens["access"]).get("/api/v1/me").status_code == 401
    assert refresh(tokens["refresh"])[0] == 401
    assert bearer_client(sign_in("alice", "a-brand-new-passphrase")["access"]).get("/api/v1/me").status_code == 200


def test_password_change_saved_with_update_fields_still_revokes(world: World) -> None:
    tokens = sign_in("alice")
    user = User.objects.get(username="alice")
    user.set_password("a-brand-new-passphrase")
    user.save(update_fields=["password"])
    assert bearer_client(tokens["access"]).get("/api/v1/me").status_code == 401


def test_deactivation_revokes_and_reactivation_does_not_revive(world: World) -> None:
    tokens = sign_in("alice")
    user = User.objects.get(username="alice")
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert bearer_client(tokens["access"]).get("/api/v1/me").status_code == 401
    user.is_active = True
    user.save()
    assert bearer_client(tokens["access"]).get("/api/v1/me").status_code == 401
    assert refresh(tokens["refresh"])[0] == 401


def test_refresh_for_a_deleted_account_is_401_not_500(world: World) -> None:
    tokens = sign_in("bob")
    User.objects.filter(username="bob").delete()
    status, body = refresh(tokens["refresh"])
    assert status == 401, body


def test_wrong_password_is_401_with_a_message(world: World) -> None:
    response = APIClient().post("/api/v1/auth/token", {"username": "alice", "password": "nope-nope-nope"}, format="json")
    assert response.status_code == 401 and response.json()["detail"]
    response = APIClient().post("/api/v1/auth/token", {"username": "alice"}, format="json")
    assert response.status_code == 400 and "password" in response.json()
