"""Pre-aggregated reading counts per patient, UTC day and consensus glucose range, for the triage table.

Counting 14 + 14 days of 5-minute readings for 2,000 patients on every page load means scanning
16 M rows (over a minute on 2 cores, docs/benchmarks.md); summing 28 rows per patient from here
takes milliseconds. Refreshed by `forecasting.refresh_triage_counts` (recent days of patients with
new data, every 5 minutes) and in full nightly; see glucoscope/web/services.py.
"""

from __future__ import annotations

from django.db import models

from glucoscope.patients.models import Patient


class PatientDayCounts(models.Model):
    """CGM readings of one patient on one UTC day, by range (Battelino 2019; sensor Low/High as <54/>250)."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="day_counts")
    day = models.DateField(help_text="UTC calendar day.")
    n = models.PositiveIntegerField()
    very_low = models.PositiveIntegerField(help_text="<54 mg/dL or sensor Low")
    low = models.PositiveIntegerField(help_text="54-69 mg/dL")
    in_range = models.PositiveIntegerField(help_text="70-180 mg/dL")
    high = models.PositiveIntegerField(help_text="181-250 mg/dL")
    very_high = models.PositiveIntegerField(help_text=">250 mg/dL or sensor High")
    refreshed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["patient", "day"], name="day_counts_unique")]
