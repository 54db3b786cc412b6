from datetime import timedelta

import pytest
from django.utils import timezone

from webapp.accounts.models import User
from webapp.core import services
from webapp.core.models import Queue, WorkerProbe


def test_requesting_probes_asks_every_queue_after_commit(
    admin_user: User, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        probes = services.request_worker_probes(admin_user)
    assert [probe.queue for probe in probes] == [Queue.DEFAULT, Queue.GPU]
    assert all(probe.requested_by == admin_user for probe in probes)
    assert len(callbacks) == 2


@pytest.mark.django_db
def test_a_probe_is_answered_once_and_a_redelivery_changes_nothing() -> None:
    probe = WorkerProbe.objects.create(queue=Queue.DEFAULT)
    assert services.answer_worker_probe(probe.pk, worker="w1", details={"pid": 1})
    assert not services.answer_worker_probe(probe.pk, worker="w2", details={"pid": 2})
    probe.refresh_from_db()
    assert probe.worker == "w1" and probe.details == {"pid": 1}
    assert probe.round_trip_ms is not None and probe.round_trip_ms >= 0


@pytest.mark.django_db
def test_answering_a_probe_that_does_not_exist_does_nothing() -> None:
    assert not services.answer_worker_probe(999_999, worker="w", details={})


@pytest.mark.django_db
def test_the_latest_probe_of_each_queue_is_reported() -> None:
    old = timezone.now() - timedelta(minutes=5)
    WorkerProbe.objects.create(queue=Queue.GPU, requested_at=old)
    newest_gpu = WorkerProbe.objects.create(queue=Queue.GPU)
    only_default = WorkerProbe.objects.create(queue=Queue.DEFAULT, requested_at=old)
    assert services.latest_worker_probes() == [only_default, newest_gpu]


@pytest.mark.django_db
def test_an_unanswered_probe_becomes_overdue_after_thirty_seconds() -> None:
    fresh = WorkerProbe.objects.create(queue=Queue.GPU)
    stale = WorkerProbe.objects.create(
        queue=Queue.GPU, requested_at=timezone.now() - timedelta(seconds=31)
    )
    assert not fresh.is_overdue and stale.is_overdue
