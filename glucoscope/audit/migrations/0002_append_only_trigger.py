"""PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the audit log (append-only for the application).

The Python model refuses them too, but raw SQL, a future bulk job or an injected statement would
not go through it. The only way past the trigger is a maintenance session that sets
`glucoscope.audit_maintenance = on` (a retention purge by the DBA after the retention period, or
the test runner's flush between tests); the application never sets it. In production the
application's database role should also lack TRIGGER and ownership on this table, so it cannot
drop the trigger (see docs/security.md).
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION audit_auditentry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('glucoscope.audit_maintenance', true), '') = 'on' THEN
        IF TG_OP = 'UPDATE' THEN
            RETURN NEW;
        END IF;
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'The audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
"""
TRIGGERS = """
CREATE TRIGGER audit_auditentry_no_update_delete BEFORE UPDATE OR DELETE ON audit_auditentry
    FOR EACH ROW EXECUTE FUNCTION audit_auditentry_append_only();
CREATE TRIGGER audit_auditentry_no_truncate BEFORE TRUNCATE ON audit_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION audit_auditentry_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS audit_auditentry_no_truncate ON audit_auditentry;
DROP TRIGGER IF EXISTS audit_auditentry_no_update_delete ON audit_auditentry;
DROP FUNCTION IF EXISTS audit_auditentry_append_only();
"""


def install(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)
        schema_editor.execute(TRIGGERS, params=None)


def uninstall(apps, schema_editor) -> None:  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(install, uninstall, elidable=False)]
