"""Rotation without downtime: old and new vendor keys / Nightscout secrets both work during the grace period, only the new after."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from glucoscope.patients.models import NightscoutCredential, VendorApiKey
from tests.conftest import World, api_key_client, nightscout_client

pytestmark = pytest.mark.django_db


def vendor_can_post(key: str, world: World) -> int:
    moment = timezone.now() - timedelta(minutes=len(key) % 7 + 1)
    body = {"patient": world.alice.pk, "device": "ALICE-1", "timestamp": moment.isoformat(), "value": 111, "unit": "mg/dL"}
    return api_key_client(key).post("/api/v1/readings", body, format="json").status_code


def ns_status(secret: str) -> int:
    return nightscout_client(secret).get("/nightscout/api/v1/entries.json").status_code


def expire_grace(model: type[VendorApiKey] | type[NightscoutCredential], field: str, **filters: object) -> None:
    """Time travel: the grace period ended a second ago."""
    model.objects.filter(**filters).exclude(**{f"{field}__isnull": True}).update(
        **{field: timezone.now() - timedelta(seconds=1)}
    )


def test_rotate_vendor_key_keeps_both_keys_working_for_the_grace_period(world: World) -> None:
    out = StringIO()
    call_command("rotate_vendor_key", world.vendor.name, "--grace-hours", "24", stdout=out, stderr=StringIO())
    new_key = out.getvalue().strip().splitlines()[-1]
    assert new_key != world.vendor_key and "." in new_key
    assert vendor_can_post(world.vendor_key, world) == 200
    assert vendor_can_post(new_key, world) == 200
    old = VendorApiKey.objects.get(vendor=world.vendor, name="test")
    assert old.expiry_date is not None
    assert timedelta(hours=23, minutes=59) < old.expiry_date - timezone.now() <= timedelta(hours=24)
    # The plaintext is not stored anywhere.
    assert not VendorApiKey.objects.filter(hashed_key__contains=new_key.split(".")[1]).exists()
    expire_grace(VendorApiKey, "expiry_date", vendor=world.vendor, name="test")
    assert vendor_can_post(world.vendor_key, world) == 401
    assert vendor_can_post(new_key, world) == 200
    # The other vendor is untouched.
    assert not VendorApiKey.objects.exclude(vendor=world.vendor).exclude(expiry_date=None).exists()


def test_rotate_vendor_key_with_no_grace_stops_the_old_key_at_once(world: World) -> None:
    out = StringIO()
    call_command("rotate_vendor_key", str(world.vendor.pk), "--grace-hours", "0", stdout=out, stderr=StringIO())
    new_key = out.getvalue().strip().splitlines()[-1]
    assert vendor_can_post(world.vendor_key, world) == 401
    assert vendor_can_post(new_key, world) == 200


def test_rotate_vendor_key_refuses_bad_input(world: World) -> None:
    with pytest.raises(CommandError, match="No vendor"):
        call_command("rotate_vendor_key", "no-such-vendor", stdout=StringIO())
    with pytest.raises(CommandError, match="grace-hours"):
        call_command("rotate_vendor_key", world.vendor.name, "--grace-hours", "-1", stdout=StringIO())


def test_rotate_nightscout_secret_keeps_both_working_for_the_grace_period(world: World) -> None:
    out = StringIO()
    call_command("rotate_nightscout_secret", str(world.alice.pk), "--grace-hours", "24", stdout=out, stderr=StringIO())
    lines = dict(line.split("=", 1) for line in out.getvalue().splitlines() if "=" in line)
    new_secret, new_token = lines["API_SECRET"], lines["token"]
    assert ns_status(world.alice_ns_secret) == 200
    assert ns_status(new_secret) == 200
    assert nightscout_client_token(new_token) == 200
    # Both digests stored, neither the secret nor its SHA-1 (what uploaders send) in clear.
    sha1 = hashlib.sha1(new_secret.encode()).hexdigest()
    assert not NightscoutCredential.objects.filter(secret_digest=sha1).exists()
    assert NightscoutCredential.objects.filter(patient=world.alice).count() == 2
    expire_grace(NightscoutCredential, "expires_at", patient=world.alice)
    assert ns_status(world.alice_ns_secret) == 401
    assert ns_status(new_secret) == 200
    # Bob's uploader never noticed.
    assert ns_status(world.bob_ns_secret) == 200


def nightscout_client_token(token: str) -> int:
    from rest_framework.test import APIClient

    return APIClient().get(f"/nightscout/api/v1/entries.json?token={token}").status_code


def test_a_second_rotation_does_not_extend_an_older_grace_and_clears_expired_ones(world: World) -> None:
    call_command("rotate_nightscout_secret", str(world.alice.pk), "--grace-hours", "1", stdout=StringIO(), stderr=StringIO())
    first_expiry = NightscoutCredential.objects.get(patient=world.alice, expires_at__isnull=False).expires_at
    call_command("rotate_nightscout_secret", str(world.alice.pk), "--grace-hours", "48", stdout=StringIO(), stderr=StringIO())
    expiries = sorted(c.expires_at for c in NightscoutCredential.objects.filter(patient=world.alice, expires_at__isnull=False))
    assert expiries[0] == first_expiry  # the original secret still ends after 1 hour, not 48
    assert NightscoutCredential.objects.filter(patient=world.alice, expires_at__isnull=True).count() == 1
    expire_grace(NightscoutCredential, "expires_at", patient=world.alice)
    call_command("rotate_nightscout_secret", str(world.alice.pk), "--grace-hours", "0", stdout=StringIO(), stderr=StringIO())
    # Expired rows are deleted; the just-replaced one is kept (expired) until the next rotation.
    assert NightscoutCredential.objects.filter(patient=world.alice).count() == 2
    assert NightscoutCredential.objects.filter(patient=world.alice, expires_at__isnull=True).count() == 1


def test_rotate_nightscout_secret_refuses_an_unknown_patient(world: World) -> None:
    with pytest.raises(CommandError, match="No patient"):
        call_command("rotate_nightscout_secret", "999999", stdout=StringIO())
