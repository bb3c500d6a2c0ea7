"""Triage dashboard: figures, sort by need, filters, and a query count that does not grow with patients."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from glucoscope.web import selectors
from tests.analytics.helpers import add_readings
from tests.conftest import World
from tests.factories import PatientFactory, consent
from tests.web.conftest import add_forecast, add_glucotype, refresh_counts, session_client

pytestmark = pytest.mark.django_db


def team_of(world: World):  # type: ignore[no-untyped-def]
    return world.alice.consents.get(revoked_at__isnull=True).care_team


def test_rows_have_cited_figures_and_need_order(world: World) -> None:
    team = team_of(world)
    steady, hypo, silent = PatientFactory(), PatientFactory(), PatientFactory()
    for p in (steady, hypo, silent):
        consent(p, team)
    add_readings(steady, [120.0] * 100)
    add_readings(hypo, [60.0] * 10 + [120.0] * 90)  # TBR<70 = 10 % > 4 % goal
    add_readings(silent, [120.0] * 100, end=timezone.now() - timedelta(hours=3))
    add_readings(world.alice, [120.0] * 100)
    add_forecast(world.alice, below_70_30min=0.9)
    refresh_counts()
    rows = selectors.triage_rows(user=world.clinician)
    by_id = {r.patient_id: r for r in rows}
    assert [r.patient_id for r in rows][:3] == [world.alice.pk, hypo.pk, silent.pk]
    assert by_id[world.alice.pk].predicted_low and "predicted_low" in by_id[world.alice.pk].flags
    assert by_id[hypo.pk].tbr_70 == pytest.approx(10.0) and by_id[hypo.pk].tbr_above_target
    assert by_id[hypo.pk].gri == pytest.approx(2.4 * 10)  # Klonoff: 2.4 x %Low
    assert by_id[silent.pk].stale and not by_id[steady.pk].stale
    assert by_id[steady.pk].tir == 100.0 and by_id[steady.pk].gri == 0.0


def test_worsening_compares_with_the_previous_14_days(world: World) -> None:
    add_readings(world.alice, [120.0] * 50, end=timezone.now() - timedelta(days=20))
    add_readings(world.alice, [60.0] * 10 + [120.0] * 40)
    refresh_counts()
    row = selectors.triage_rows(user=world.clinician)[0]
    assert row.gri_previous == 0.0 and row.gri_change == pytest.approx(48.0) and row.worsening


def test_filters_and_sorts(world: World) -> None:
    team = team_of(world)
    other = PatientFactory()
    consent(other, team)
    add_readings(world.alice, [60.0] * 50)
    add_readings(other, [200.0] * 50)
    add_glucotype([world.alice, other], ["severe", "low"])
    refresh_counts()
    assert [r.patient_id for r in selectors.triage_rows(user=world.clinician, glucotype="low")] == [other.pk]
    assert [r.patient_id for r in selectors.triage_rows(user=world.clinician, risk="tbr_above_target")] == [world.alice.pk]
    assert [r.patient_id for r in selectors.triage_rows(user=world.clinician, sort="gri")] == [world.alice.pk, other.pk]
    names = [r.name.lower() for r in selectors.triage_rows(user=world.clinician, sort="name")]
    assert names == sorted(names)
    html = session_client(world.clinician).get("/care/", {"sort": "tbr", "glucotype": "severe"}).content.decode()
    assert f'data-patient="{world.alice.pk}"' in html and f'data-patient="{other.pk}"' not in html


def _dashboard_queries(world: World) -> int:
    client = session_client(world.clinician)
    with CaptureQueriesContext(connection) as ctx:
        assert client.get("/care/").status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_patients(world: World) -> None:
    team = team_of(world)
    add_readings(world.alice, [110.0] * 20)
    refresh_counts()
    few = _dashboard_queries(world)
    patients = [PatientFactory() for _ in range(60)]
    for i, p in enumerate(patients):
        consent(p, team)
        add_readings(p, [100.0 + i] * 20)
        if i % 3 == 0:
            add_forecast(p, below_70_30min=i / 100)
    add_glucotype(patients[:30], ["moderate"] * 30)
    refresh_counts()
    many = _dashboard_queries(world)
    assert many == few, f"{few} queries for 1 patient, {many} for 61"
    assert many <= 6  # session, user, the session's verified TOTP device, patients with subqueries, range counts
