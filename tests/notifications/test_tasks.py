"""The notification tasks: explicit names, the notifications queue, bounded retries for transient errors only, beat entries."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import InterfaceError, OperationalError

from glucoscope.celery import app
from notifications import tasks

TASKS = [tasks.send_notifications, tasks.evaluate_patients, tasks.sweep, tasks.fire_reminders, tasks.send_tips]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_each_task_is_named_routed_to_the_notifications_queue_and_retries_only_transient_errors(task) -> None:  # type: ignore[no-untyped-def]
    assert task.name.startswith("notifications.")
    assert app.amqp.router.route({}, task.name)["queue"].name == "notifications"
    assert set(task.autoretry_for) == {OperationalError, InterfaceError}
    assert 0 < task.max_retries <= 5
    assert task.soft_time_limit < task.time_limit <= 300


def test_beat_runs_the_sweeper_reminders_and_tips() -> None:
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"notifications.sweep", "notifications.fire_reminders", "notifications.send_tips"} <= scheduled


@pytest.mark.django_db
def test_the_beat_tasks_run_on_an_empty_database() -> None:
    assert tasks.sweep.apply().get() == 0
    assert tasks.fire_reminders.apply().get() == 0
    assert tasks.send_tips.apply().get() == 0
    assert tasks.evaluate_patients.apply(args=[[999999]]).get() == 0  # a deleted patient is simply not found
    assert tasks.send_notifications.apply(args=[[999999]]).get() == 0
