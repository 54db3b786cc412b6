import pytest
from django.db import transaction

from webapp import background


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("training.run_round", "gpu"),
        ("generation.sample_responses", "gpu"),
        ("system.probe_gpu", "gpu"),
        ("system.probe_default", "default"),
        ("exports.build_snapshot", "default"),
        ("stats.refresh_agreement", "default"),
    ],
)
def test_tasks_are_routed_to_their_queue_by_name(task_name: str, queue: str) -> None:
    route = background.app.amqp.router.route({}, task_name)  # what the broker will be told
    assert route["queue"].name == queue


def test_an_unknown_task_name_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="Unknown background task"):
        background.enqueue_after_commit("system.no_such_task", 1)


def test_tasks_carry_primary_keys_only() -> None:
    with pytest.raises(TypeError, match="primary keys"):
        background.enqueue_after_commit(background.PROBE_DEFAULT_QUEUE, "1")  # type: ignore[arg-type]


@pytest.mark.django_db
def test_a_task_leaves_only_when_the_transaction_commits(
    django_capture_on_commit_callbacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append((name, args)))
    with django_capture_on_commit_callbacks(execute=True):
        background.enqueue_after_commit(background.PROBE_DEFAULT_QUEUE, 7)
        assert sent == []
    assert sent == [(background.PROBE_DEFAULT_QUEUE, [7])]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append(name))

    def failing_request() -> None:
        with transaction.atomic():
            background.enqueue_after_commit(background.PROBE_DEFAULT_QUEUE, 7)
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    assert sent == []


def test_the_celery_app_acknowledges_late_and_prefetches_one() -> None:
    conf = background.app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "default"
