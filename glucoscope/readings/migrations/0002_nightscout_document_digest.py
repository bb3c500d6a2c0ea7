import hashlib

import orjson
from django.db import migrations, models


def fill_digests(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Existing duplicates keep their first copy; later copies are removed so the unique constraint holds.
    NightscoutDocument = apps.get_model("readings", "NightscoutDocument")
    seen: set[tuple[int, str, str]] = set()
    for document in NightscoutDocument.objects.order_by("pk").iterator():
        digest = hashlib.sha256(orjson.dumps(document.document, option=orjson.OPT_SORT_KEYS)).hexdigest()
        key = (document.patient_id, document.collection, digest)
        if key in seen:
            document.delete()
            continue
        seen.add(key)
        NightscoutDocument.objects.filter(pk=document.pk).update(digest=digest)


class Migration(migrations.Migration):
    dependencies = [("readings", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="nightscoutdocument",
            name="digest",
            field=models.CharField(
                default="", help_text="sha256 of the document's canonical JSON, for idempotent re-posts.", max_length=64
            ),
            preserve_default=False,
        ),
        migrations.RunPython(fill_digests, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="nightscoutdocument",
            constraint=models.UniqueConstraint(fields=("patient", "collection", "digest"), name="nsdoc_unique_content"),
        ),
    ]
