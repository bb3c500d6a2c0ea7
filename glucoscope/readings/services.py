"""Writes: reading and treatment ingest, the processing outbox, and the patient summary.

Ingest is one transaction per batch: stage the rows, insert them with one set-based
statement that skips exact and near duplicates, and mark the patients in the outbox.
Work for the patients is enqueued only after the commit, and the outbox row makes that
durable: if the broker is down, the sweeper sends it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from glucoscope.readings.models import GlucoseReading, NightscoutDocument, PatientOutbox, PatientSummary, Treatment
from glucoscope.readings.validation import ReadingInput, TreatmentInput

logger = logging.getLogger(__name__)

# GUIDE.md §6: two uploaders on one sensor post the same value a few seconds apart.
NEAR_DUPLICATE_WINDOW = timedelta(seconds=60)
# Advisory-lock namespace, so our per-patient ingest locks never collide with other users of pg_advisory locks.
_INGEST_LOCK_CLASS = 7001
# After a failed publish, skip the broker for this long so a Redis outage does not add a
# connect timeout to every request; the outbox sweeper sends the work later.
_BROKER_BACKOFF_SECONDS = 5.0
_broker_unavailable_until = 0.0

_READING_TABLE = GlucoseReading._meta.db_table
_OUTBOX_TABLE = PatientOutbox._meta.db_table
_STAGE_COLUMNS = (
    "patient_id", "device_id", "measured_at", "value_mgdl", "sensor_flag", "direction", "trend_rate", "is_calibration",
)
# PostgreSQL computes the near-duplicate window itself; SQLite stores text timestamps, so the
# window bounds are staged precomputed in the same text format.
_STAGE_TYPES = ("int8", "int8", "timestamptz", "float8", "text", "text", "float8", "bool")
# Up to this many readings, PostgreSQL gets them inline as a VALUES list named like the staging
# table, instead of a COPY into it: one round trip fewer on a phone's single-reading POST, and
# no ON COMMIT DELETE ROWS truncation of the temp table at its commit.
_INLINE_STAGE_MAX_ROWS = 50
_INLINE_STAGE_ROW = "(" + ", ".join(f"%s::{type_name}" for type_name in _STAGE_TYPES) + ")"


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    patient_ids: frozenset[int]


def _drop_in_batch_near_duplicates(readings: Iterable[ReadingInput]) -> list[ReadingInput]:
    """The SQL duplicate check cannot see rows of its own statement, so the batch is cleaned first.

    A reading is a near duplicate of an earlier kept one with the same patient, value,
    flag and kind when they are less than 60 s apart.
    """
    kept: list[ReadingInput] = []
    last_kept_at: dict[tuple[int | None, float | None, str, bool], datetime] = {}
    for reading in sorted(readings, key=lambda r: (r.patient_id or 0, r.measured_at)):
        key = (reading.patient_id, reading.value_mgdl, reading.sensor_flag, reading.is_calibration)
        previous = last_kept_at.get(key)
        if previous is not None and reading.measured_at - previous < NEAR_DUPLICATE_WINDOW:
            continue
        last_kept_at[key] = reading.measured_at
        kept.append(reading)
    return kept


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


_PG_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS reading_stage ("
    "patient_id bigint, device_id bigint, measured_at timestamptz, value_mgdl double precision,"
    " sensor_flag text, direction text, trend_rate double precision, is_calibration boolean)"
    " ON COMMIT DELETE ROWS"
)


def prepare_connection(sender: object, connection: object, **kwargs: object) -> None:
    """Create the per-connection staging table once, when PostgreSQL connections open (not per batch)."""
    if getattr(connection, "vendor", None) == "postgresql":
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(_PG_STAGE_TABLE)


def _stage_values(r: ReadingInput) -> tuple[Any, ...]:
    """One reading's values in the order of _STAGE_COLUMNS."""
    return (r.patient_id, r.device_id, r.measured_at, r.value_mgdl, r.sensor_flag, r.direction, r.trend_rate,
            r.is_calibration)


def _stage_rows(cursor, readings: Sequence[ReadingInput]) -> None:  # type: ignore[no-untyped-def]
    columns = ", ".join(_STAGE_COLUMNS)
    if _is_postgres():
        # Binary COPY: psycopg's C dumpers format timestamps far faster than text COPY.
        with cursor.copy(f"COPY reading_stage ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STAGE_TYPES)
            write_row = copy.write_row
            for r in readings:
                write_row(_stage_values(r))
        return
    # SQLite (development default): same staging table, filled row by row.
    adapt = connection.ops.adapt_datetimefield_value
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS reading_stage (patient_id integer, device_id integer, measured_at text,"
        " value_mgdl real, sensor_flag text, direction text, trend_rate real, is_calibration bool,"
        " window_start text, window_end text)"
    )
    cursor.execute("DELETE FROM reading_stage")
    cursor.executemany(
        f"INSERT INTO reading_stage ({columns}, window_start, window_end) VALUES ({', '.join(['%s'] * (len(_STAGE_COLUMNS) + 2))})",
        [
            (
                r.patient_id, r.device_id, adapt(r.measured_at), r.value_mgdl, r.sensor_flag, r.direction,
                r.trend_rate, r.is_calibration,
                adapt(r.measured_at - NEAR_DUPLICATE_WINDOW), adapt(r.measured_at + NEAR_DUPLICATE_WINDOW),
            )
            for r in readings
        ],
    )


# One statement for the whole batch: exact duplicates fall to the unique index
# (ON CONFLICT DO NOTHING), near duplicates already stored to NOT EXISTS, which the
# (patient, measured_at, device) index answers with a short range scan per staged row.
# `LIMIT 1 OFFSET 0` keeps the subquery correlated: without it PostgreSQL turns NOT EXISTS
# into a hash anti-join that reads the whole readings table on every batch.
_INSERT_FROM_STAGE_TEMPLATE = f"""
INSERT INTO {_READING_TABLE}
    (patient_id, device_id, measured_at, value_mgdl, sensor_flag, direction, trend_rate,
     is_calibration, source, received_at)
SELECT s.patient_id, s.device_id, s.measured_at, s.value_mgdl, s.sensor_flag, s.direction,
       s.trend_rate, s.is_calibration, %s, %s
FROM reading_stage s
WHERE {{skip_probe}}NOT EXISTS (
    SELECT 1 FROM {_READING_TABLE} r
    WHERE r.patient_id = s.patient_id
      AND r.measured_at > {{window_start}} AND r.measured_at < {{window_end}}
      AND COALESCE(r.value_mgdl, -1) = COALESCE(s.value_mgdl, -1)
      AND r.sensor_flag = s.sensor_flag
      AND r.is_calibration = s.is_calibration
    LIMIT 1 OFFSET 0
)
ON CONFLICT DO NOTHING
RETURNING patient_id
"""
_PG_WINDOW = f"interval '{NEAR_DUPLICATE_WINDOW.total_seconds():g} seconds'"
# On PostgreSQL, `overlap` first finds, with one short index range scan per patient (kept
# correlated by the same LIMIT/OFFSET guard, or it becomes a whole-table hash join), the
# patients that have any stored reading within 60 s of the batch's time span. Only their rows
# need the per-row probe: a vendor streaming new readings skips it, a retry still gets it.
# The statement also aggregates the inserted rows per patient server-side (one row back per
# patient, not per reading). SQLite cannot put an INSERT in a CTE, so it returns every row.
# The PostgreSQL statement's CTEs after the staging rows' source: prefixed by "WITH " when they
# come from the temp table, or by an inline `reading_stage` VALUES CTE for small batches.
_PG_INSERT_FROM_STAGE_CTES = (
    f"""
overlap AS MATERIALIZED (
    SELECT b.patient_id
    FROM (SELECT patient_id, min(measured_at) AS lo, max(measured_at) AS hi FROM reading_stage GROUP BY patient_id) b
    WHERE EXISTS (
        SELECT 1 FROM {_READING_TABLE} r
        WHERE r.patient_id = b.patient_id AND r.measured_at > b.lo - {_PG_WINDOW} AND r.measured_at < b.hi + {_PG_WINDOW}
        LIMIT 1 OFFSET 0
    )
), inserted AS ("""
    + _INSERT_FROM_STAGE_TEMPLATE.format(
        skip_probe="s.patient_id NOT IN (SELECT patient_id FROM overlap) OR ",
        window_start=f"s.measured_at - {_PG_WINDOW}",
        window_end=f"s.measured_at + {_PG_WINDOW}",
    )
    + ") SELECT patient_id, count(*) FROM inserted GROUP BY patient_id"
)
_INSERT_FROM_STAGE = {
    "postgresql": "WITH " + _PG_INSERT_FROM_STAGE_CTES,
    "sqlite": _INSERT_FROM_STAGE_TEMPLATE.format(skip_probe="", window_start="s.window_start", window_end="s.window_end")
    .replace("RETURNING patient_id", "RETURNING patient_id, 1"),
}


def readings_ingest(*, readings: Sequence[ReadingInput], source: str) -> IngestResult:
    """Store a batch of readings once, whatever the retries and the number of uploaders.

    Every reading must already be bound to a patient the caller may write for (patient_id set).

    Returns how many were stored and how many were (exact or near) duplicates. The
    patients that got new readings are marked in the outbox in the same transaction and
    enqueued for processing after the commit.
    """
    if not readings:
        return IngestResult(0, 0, frozenset())
    unique = _drop_in_batch_near_duplicates(readings)
    received_at = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        if _is_postgres():
            # Serialise concurrent batches per patient, so two uploaders posting the same
            # sensor reading at the same instant cannot both pass the NOT EXISTS check.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, p) FROM unnest(%s::int[]) AS p ORDER BY p",
                [_INGEST_LOCK_CLASS, sorted({r.patient_id for r in unique if r.patient_id is not None})],
            )
        if _is_postgres() and len(unique) <= _INLINE_STAGE_MAX_ROWS:
            inline_stage = (f"WITH reading_stage ({', '.join(_STAGE_COLUMNS)}) AS "
                            f"(VALUES {', '.join([_INLINE_STAGE_ROW] * len(unique))}), ")
            cursor.execute(inline_stage + _PG_INSERT_FROM_STAGE_CTES,
                           [value for r in unique for value in _stage_values(r)] + [source, received_at])
        else:
            _stage_rows(cursor, unique)
            cursor.execute(_INSERT_FROM_STAGE[connection.vendor], [source, received_at])
        inserted_per_patient = cursor.fetchall()
        accepted = sum(count for _, count in inserted_per_patient)
        touched = frozenset(patient_id for patient_id, _ in inserted_per_patient)
        outbox_mark(patient_ids=touched, cursor=cursor)
    return IngestResult(accepted, len(readings) - accepted, touched)


# --- Outbox ------------------------------------------------------------------

# Marks each patient dirty and, in the same statement, claims the rows with no task in flight
# (enqueued_at IS NULL): the claim sets enqueued_at to this call's timestamp, which is how the
# RETURNING clause tells claimed rows from rows another task already holds. SET expressions read
# the row as it was before the update. Rows are locked in the order of VALUES, which the caller
# sorts by patient id, the order every outbox writer locks in.
_OUTBOX_MARK = f"""
INSERT INTO {_OUTBOX_TABLE} (patient_id, dirty_at, version, attempts, enqueued_at)
VALUES {{values}}
ON CONFLICT (patient_id) DO UPDATE
SET dirty_at = excluded.dirty_at,
    version = {_OUTBOX_TABLE}.version + 1,
    enqueued_at = COALESCE({_OUTBOX_TABLE}.enqueued_at, excluded.enqueued_at),
    taken_at = CASE WHEN {_OUTBOX_TABLE}.enqueued_at IS NULL THEN NULL ELSE {_OUTBOX_TABLE}.taken_at END,
    attempts = {_OUTBOX_TABLE}.attempts + CASE WHEN {_OUTBOX_TABLE}.enqueued_at IS NULL THEN 1 ELSE 0 END
RETURNING patient_id, enqueued_at = %s
"""


def _outbox_rows_in_lock_order(condition: str) -> str:
    """A WHERE clause for a multi-row UPDATE or DELETE of outbox rows that locks them in patient id order.

    Every writer of the outbox must lock rows in the same order, or two statements over
    overlapping patients can deadlock, and PostgreSQL then cancels one of them: an ingest would
    answer 503. The ingest's upsert and `outbox_take` lock in id order; a plain UPDATE or DELETE
    locks in whatever order its scan finds the rows, so it takes its locks in a sorted
    `FOR UPDATE` subquery first (which also re-checks `condition` against a row that changed
    while it waited). SQLite locks the whole database and needs none of this.
    """
    if not connection.features.has_select_for_update:
        return condition
    return f"patient_id IN (SELECT patient_id FROM {_OUTBOX_TABLE} WHERE {condition} ORDER BY patient_id FOR UPDATE)"


def _outbox_release(patient_ids: Sequence[int], *, also_untake: bool = False) -> None:
    """Clear the enqueued mark (and the taken mark) of these rows, so the sweeper or a new claim sends them."""
    if not patient_ids:
        return
    assignments = "enqueued_at = NULL" + (", taken_at = NULL" if also_untake else "")
    where = _outbox_rows_in_lock_order(f"patient_id IN ({', '.join(['%s'] * len(patient_ids))})")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_OUTBOX_TABLE} SET {assignments} WHERE {where}", list(patient_ids))


def outbox_mark(*, patient_ids: Iterable[int], cursor=None) -> None:  # type: ignore[no-untyped-def]
    """Mark patients as having new data, inside the caller's transaction, then enqueue on commit.

    The version counter, not a timestamp, tells a running task whether data arrived
    after it started: an ingest that commits late still bumps the version. Patients with
    no task in flight are claimed by the same statement (one round trip and one commit per
    ingest) and published once it commits.
    """
    ids = sorted(patient_ids)
    if not ids:
        return
    # Compared with the stored value in SQL, so it goes through the same adaptation as the write.
    claim_mark = connection.ops.adapt_datetimefield_value(timezone.now())
    claimed: list[int] = []
    with contextlib.ExitStack() as stack:
        if cursor is None:
            cursor = stack.enter_context(connection.cursor())
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            params: list[Any] = []
            for patient_id in chunk:
                params.extend([patient_id, claim_mark, claim_mark])
            params.append(claim_mark)
            cursor.execute(_OUTBOX_MARK.format(values=", ".join(["(%s, %s, 1, 1, %s)"] * len(chunk))), params)
            claimed.extend(patient_id for patient_id, is_claimed in cursor.fetchall() if is_claimed)
    if claimed:
        transaction.on_commit(partial(_publish, sorted(claimed)))


def _claim_for_enqueue(patient_ids: Sequence[int], *, stale_before: datetime | None) -> list[int]:
    """Set enqueued_at on rows not already in flight and return their ids (one conditional UPDATE)."""
    if not patient_ids:
        return []
    now = timezone.now()
    placeholders = ", ".join(["%s"] * len(patient_ids))
    condition = "enqueued_at IS NULL" if stale_before is None else "(enqueued_at IS NULL OR enqueued_at < %s)"
    params: list[Any] = [now, *patient_ids] + ([stale_before] if stale_before else [])
    where = _outbox_rows_in_lock_order(f"patient_id IN ({placeholders}) AND {condition}")
    with connection.cursor() as cursor:
        # A re-sent row is free to be taken again: the task that took it is presumed lost.
        cursor.execute(
            f"UPDATE {_OUTBOX_TABLE} SET enqueued_at = %s, taken_at = NULL, attempts = attempts + 1"
            f" WHERE {where} RETURNING patient_id",
            params,
        )
        return [row[0] for row in cursor.fetchall()]



# --- Wake-up flag ---------------------------------------------------------------
# A processing task takes, when it starts, every patient claimed since it was sent (outbox_take
# coalesces queued rows). So while one task is waiting in the queue, a newly claimed patient
# needs no task of its own: under a stream of single-reading posts this saves a publish (~0.9 ms
# of web CPU) and a worker round on nearly every request. This Redis key means "a processing
# task is queued and has not started yet": the publisher sets it (NX); the task deletes it
# before it takes rows. A claim committed before a failed SET NX is therefore committed before
# that task's take, so it is taken. The key expires, so a task lost with the broker costs at
# most OUTBOX_WAKE_FLAG_SECONDS of delay, and the sweeper never consults it.
_WAKE_FLAG_KEY = "glucoscope:outbox:task-queued"
_wake_clients: dict[str, redis.Redis] = {}


def _wake_flag_client() -> redis.Redis:
    url: str = settings.REDIS_URL
    client = _wake_clients.get(url)
    if client is None:
        client = _wake_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    return client


def _wake_flag_raise() -> bool:
    """True if no processing task was waiting, so the caller must send one (also when Redis cannot say)."""
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.REDIS_URL:
        return True
    try:
        return bool(_wake_flag_client().set(_WAKE_FLAG_KEY, 1, nx=True, ex=settings.OUTBOX_WAKE_FLAG_SECONDS))
    except Exception:  # redis-py raises several connection error types; sending anyway is always safe
        return True


def outbox_wake_flag_clear() -> None:
    """A processing task is starting: later claims must send a task of their own."""
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.REDIS_URL:
        return
    try:
        _wake_flag_client().delete(_WAKE_FLAG_KEY)
    except Exception:  # a stale flag only delays work until it expires or the sweeper runs
        logger.warning("Could not clear the outbox wake flag; it expires in %ss", settings.OUTBOX_WAKE_FLAG_SECONDS)


def _publish(patient_ids: Sequence[int], *, always: bool = False) -> None:
    """Send processing tasks for claimed patients; on a broker error, release the claims for the sweeper.

    Claims that fit in one task are not sent while another task is waiting to start (the wake
    flag above): that task takes them. `always` (the sweeper) sends regardless.
    """
    if not patient_ids:
        return
    if time.monotonic() < _broker_unavailable_until:
        _outbox_release(patient_ids)
        return
    per_task = settings.OUTBOX_PATIENTS_PER_TASK
    if not always and len(patient_ids) <= per_task and not _wake_flag_raise():
        return
    _send([list(patient_ids[start : start + per_task]) for start in range(0, len(patient_ids), per_task)])


def _send(chunks: list[list[int]]) -> None:
    """One processing task per chunk (an empty chunk: a task that only takes queued rows)."""
    global _broker_unavailable_until
    from glucoscope.readings.tasks import process_patients

    for number, chunk in enumerate(chunks):
        try:
            process_patients.apply_async(args=[chunk], retry=False)
        except Exception as exc:  # kombu/redis raise many connection error types
            if settings.CELERY_TASK_ALWAYS_EAGER:
                raise
            _broker_unavailable_until = time.monotonic() + _BROKER_BACKOFF_SECONDS
            unsent = [patient_id for unsent_chunk in chunks[number:] for patient_id in unsent_chunk]
            _outbox_release(unsent)
            outbox_wake_flag_clear()
            logger.warning("Broker unavailable (%s); %d patients left to the outbox sweeper", exc, len(unsent))
            return


def outbox_enqueue(*, patient_ids: Sequence[int]) -> None:
    """Enqueue processing for patients with no task in flight (the debounce)."""
    if time.monotonic() < _broker_unavailable_until:
        return  # the rows stay unclaimed; the sweeper sends them when the broker is back
    for start in range(0, len(patient_ids), 500):
        _publish(_claim_for_enqueue(patient_ids[start : start + 500], stale_before=None))


def outbox_sweep() -> int:
    """Re-send work that never ran: rows never enqueued (broker was down) or enqueued long ago."""
    now = timezone.now()
    stale_before = now - settings.OUTBOX_STALE_AFTER
    candidate_ids = list(
        PatientOutbox.objects.filter(enqueued_at__isnull=True).values_list("patient_id", flat=True)[:5000]
    ) + list(PatientOutbox.objects.filter(enqueued_at__lt=stale_before).values_list("patient_id", flat=True)[:5000])
    sent = 0
    for start in range(0, len(candidate_ids), 500):
        claimed = _claim_for_enqueue(candidate_ids[start : start + 500], stale_before=stale_before)
        _publish(claimed, always=True)
        sent += len(claimed)
    return sent


def outbox_take(*, patient_ids: Sequence[int]) -> list[int]:
    """Take the outbox rows a starting task will process, and return their patient ids.

    The task's own patients are taken unless another live task already holds them (a duplicate
    delivery, or a patient taken early as below). It also takes patients whose tasks are still
    waiting in the queue, up to OUTBOX_PATIENTS_PER_TASK in all: under a stream of one-reading posts
    this turns a hundred one-patient runs into one batched run, and the queued tasks then find
    their rows gone or taken and return at once. A patient with no row has nothing to process.

    It first clears the wake flag, so claims from now on send a task of their own, and if it
    takes a full batch it sends one more task for the queued rows it had no room for.
    """
    outbox_wake_flag_clear()
    now = timezone.now()
    abandoned_before = now - settings.OUTBOX_STALE_AFTER
    own_ids = list(patient_ids)
    can_lock = connection.features.has_select_for_update
    with transaction.atomic():
        # Our own rows: wait for an ingest that is committing on them (its claim failed because this
        # task was already sent, so nobody else would process its readings). Locked in id order,
        # the order in which ingest upserts them, so the two cannot deadlock.
        own = PatientOutbox.objects.filter(
            Q(taken_at__isnull=True) | Q(taken_at__lt=abandoned_before), patient_id__in=own_ids
        ).order_by("patient_id")
        if can_lock:
            own = own.select_for_update()
        taken = list(own.values_list("patient_id", flat=True))
        room = max(settings.OUTBOX_PATIENTS_PER_TASK - len(taken), 0)
        if room:
            # Other patients whose tasks are still queued: a locked one is skipped, not waited for,
            # because its own task will process it anyway.
            queued = PatientOutbox.objects.filter(enqueued_at__isnull=False, taken_at__isnull=True).exclude(
                patient_id__in=own_ids
            ).order_by("enqueued_at")
            if can_lock and connection.features.has_select_for_update_skip_locked:
                queued = queued.select_for_update(skip_locked=True)
            taken += list(queued.values_list("patient_id", flat=True)[:room])
        PatientOutbox.objects.filter(patient_id__in=taken).update(taken_at=now)
    if len(taken) >= settings.OUTBOX_PATIENTS_PER_TASK and not settings.CELERY_TASK_ALWAYS_EAGER and _wake_flag_raise():
        # Full: queued rows may remain whose claims sent no task because this one was waiting.
        # (Eager tasks never leave such rows: without a broker every claim runs at once.)
        _send([[]])
    return taken


def outbox_versions(*, patient_ids: Sequence[int]) -> dict[int, int]:
    return dict(PatientOutbox.objects.filter(patient_id__in=patient_ids).values_list("patient_id", "version"))


def outbox_complete(*, versions: dict[int, int]) -> None:
    """Remove each outbox row if nothing arrived since its version was read; run the others again."""
    if not versions:
        return
    # One statement for the whole batch (tasks carry up to OUTBOX_PATIENTS_PER_TASK patients).
    condition = " OR ".join(["(patient_id = %s AND version = %s)"] * len(versions))
    params = [value for pair in versions.items() for value in pair]
    where = _outbox_rows_in_lock_order(f"({condition})")
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_OUTBOX_TABLE} WHERE {where} RETURNING patient_id", params)
        released = {row[0] for row in cursor.fetchall()}
    rerun = [patient_id for patient_id in versions if patient_id not in released]
    if rerun:
        _outbox_release(rerun, also_untake=True)
        outbox_enqueue(patient_ids=rerun)


# --- Processing ---------------------------------------------------------------


def patient_summaries_refresh(*, patient_ids: Sequence[int]) -> None:
    """Latest reading and 24-h count for a group of patients: one query and one upsert, not three per patient."""
    from django.db.models import Count, IntegerField, OuterRef, Subquery

    from glucoscope.patients.models import Patient

    now = timezone.now()
    readings = GlucoseReading.objects.filter(patient=OuterRef("pk"))
    last_24h = (
        readings.filter(measured_at__gt=now - timedelta(hours=24), measured_at__lte=now)
        .order_by().values("patient").annotate(n=Count("pk")).values("n")
    )
    # Upserted in patient id order, as every multi-row writer here locks rows, so two refreshes over
    # overlapping patients cannot deadlock.
    rows = Patient.objects.filter(pk__in=patient_ids).order_by("pk").annotate(
        latest_id=Subquery(readings.order_by("-measured_at").values("pk")[:1]),
        count_24h=Subquery(last_24h, output_field=IntegerField()),
    ).values_list("pk", "latest_id", "count_24h")
    PatientSummary.objects.bulk_create(
        [
            PatientSummary(patient_id=pk, latest_reading_id=latest_id, readings_last_24h=count or 0, computed_at=now)
            for pk, latest_id, count in rows
        ],
        update_conflicts=True,
        unique_fields=["patient"],
        update_fields=["latest_reading", "readings_last_24h", "computed_at"],
    )


def patients_process(*, patient_ids: Sequence[int]) -> None:
    """The first stage after an ingest, for a group of patients. Idempotent: safe to run twice.

    The outbox versions are read before any data, so readings committed while the pipeline
    runs leave their rows in place and cause another run. The next stage (AFTER_INGEST_TASK,
    the forecaster, on its own queue) releases the rows when it is done, so a patient has at
    most one pipeline run in flight. The group actually processed is what `outbox_take` hands
    this run: possibly fewer patients (already done, or held by a live run) or more (coalesced).
    """
    patient_ids = outbox_take(patient_ids=patient_ids)
    if not patient_ids:
        return
    versions = outbox_versions(patient_ids=patient_ids)
    patient_summaries_refresh(patient_ids=patient_ids)
    if not settings.AFTER_INGEST_TASK:
        outbox_complete(versions=versions)
        return
    next_stage = import_string(settings.AFTER_INGEST_TASK)
    next_stage.apply_async(args=[list(patient_ids), {str(k): v for k, v in versions.items()}])


def patients_mark_for_processing(*, patient_ids: Sequence[int]) -> int:
    """Run the after-ingest pipeline for these patients as if they had new data."""
    with transaction.atomic():
        outbox_mark(patient_ids=patient_ids)
    return len(patient_ids)


# --- Treatments ---------------------------------------------------------------

_TREATMENT_COLUMNS = (
    "patient_id", "occurred_at", "kind", "carbs_g", "insulin_units", "basal_rate_u_per_h", "duration_minutes",
    "note", "event_type", "entered_by_id", "entered_by_label", "source", "received_at",
)


def treatments_ingest(
    *, treatments: Sequence[TreatmentInput], source: str, entered_by_id: int | None
) -> list[int | None]:
    """Store treatments once (unique per patient, time and kind); returns the new id or None per item.

    Every treatment must already be bound to a patient the caller may write for (patient_id set).
    """

    if not treatments:
        return []
    table = Treatment._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    received_at = adapt(timezone.now())
    new_ids: list[int | None] = []
    with transaction.atomic(), connection.cursor() as cursor:
        for treatment in treatments:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(_TREATMENT_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(_TREATMENT_COLUMNS))})"
                " ON CONFLICT DO NOTHING RETURNING id",
                [
                    treatment.patient_id, adapt(treatment.occurred_at), treatment.kind, treatment.carbs_g,
                    treatment.insulin_units, treatment.basal_rate_u_per_h, treatment.duration_minutes,
                    treatment.note, treatment.event_type, entered_by_id, treatment.entered_by_label,
                    source, received_at,
                ],
            )
            row = cursor.fetchone()
            new_ids.append(row[0] if row else None)
        outbox_mark(patient_ids={t.patient_id for t, new_id in zip(treatments, new_ids, strict=True) if new_id and t.patient_id}, cursor=cursor)
    return new_ids


def nightscout_documents_store(*, patient_id: int, collection: str, items: Sequence[dict[str, Any]]) -> list[NightscoutDocument]:
    """Keep uploader documents as sent; the same document posted again is stored once (returned, not copied)."""
    from glucoscope.readings.validation import FieldErrors, parse_timestamp

    now = timezone.now()
    documents = []
    for item in items:
        errors: FieldErrors = {}
        raw_time = item.get("created_at") or item.get("date") or item.get("startDate")
        # A document's own time is informative only; an unreadable one falls back to arrival time.
        created_at = parse_timestamp(raw_time, now=now + timedelta(days=1), errors=errors) if raw_time else None
        digest = hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
        documents.append(NightscoutDocument(
            patient_id=patient_id, collection=collection, created_at=created_at or now, document=item, digest=digest
        ))
    NightscoutDocument.objects.bulk_create(documents, ignore_conflicts=True)
    stored = {
        d.digest: d for d in NightscoutDocument.objects.filter(
            patient_id=patient_id, collection=collection, digest__in=[d.digest for d in documents]
        )
    }
    return [stored[d.digest] for d in documents]
