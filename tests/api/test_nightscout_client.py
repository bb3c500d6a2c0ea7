"""The PyPI client python-nightscout, as a real HTTP client against a live test server."""

from __future__ import annotations

from datetime import timedelta

import nightscout
import pytest
from django.utils import timezone

from glucoscope.patients import services as patient_services
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import ReadingSource
from glucoscope.readings.treatments import nightscout_treatment_batch_ingest
from tests.factories import PatientFactory


@pytest.mark.django_db(transaction=True)
def test_python_nightscout_reads_entries_treatments_and_profiles(live_server, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SECURE_SSL_REDIRECT = False
    patient = PatientFactory()
    secret = patient_services.nightscout_credential_rotate(patient=patient).secret
    now = timezone.now().replace(microsecond=0)
    reading_batch_ingest(
        uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk),
        items=[{"timestamp": (now - timedelta(minutes=5 * i)).isoformat(), "value": 150 - 3 * i, "unit": "mg/dL",
                "trend": "SingleUp"} for i in range(6)],
    )
    nightscout_treatment_batch_ingest(patient_id=patient.pk, items=[
        {"eventType": "Meal Bolus", "created_at": now.isoformat(), "carbs": 30, "insulin": 2.0, "enteredBy": "test"},
    ])
    api = nightscout.Api(f"{live_server.url}/nightscout", api_secret=secret)

    sgvs = api.get_sgvs({"count": 4})
    assert [s.sgv for s in sgvs] == [150, 147, 144, 141]
    assert sgvs[0].direction == "SingleUp"
    assert sgvs[0].date == now
    assert sgvs[0]._json["delta"] == 3.0

    treatments = api.get_treatments({"count": 10})
    assert {(t.eventType, t.carbs, t.insulin) for t in treatments} == {
        ("Meal Bolus", 30.0, None), ("Meal Bolus", None, 2.0),
    }
    assert treatments[0].timestamp == now

    wrong = nightscout.Api(f"{live_server.url}/nightscout", api_secret="not-the-secret")
    with pytest.raises(AttributeError):  # the client cannot parse the 401 body as a list of entries
        [s.sgv for s in wrong.get_sgvs()]
