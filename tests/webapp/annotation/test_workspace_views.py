"""The annotator's pages: my projects, annotate (with its htmx fragments), history."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import client_for
from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import User
from webapp.annotation.models import (
    Flag,
    Item,
    Lease,
    Membership,
    Project,
    Prompt,
    Skip,
    Submission,
)
from webapp.annotation.questions import MAX_TEXT, TaskType
from webapp.annotation.queue import next_item

HX = {"HTTP_HX_REQUEST": "true"}
RATING_POST = {"q-helpfulness-score": "4", "q-correctness-score": "5", "q-flags-seen": "1",
               "q-rationale-text": "clear", "active_ms": "1200"}  # fmt: skip


@pytest.fixture
def project(make_project: MakeProject, add_items: AddItems, annotator: User) -> Project:
    project = make_project(members=[annotator], slug="rate-me", guidelines="Be **fair**.")
    add_items(project, prompts=3, responses=1)
    return project


def url(name: str, project: Project, *args: object) -> str:
    return reverse(f"annotation:{name}", args=[project.slug, *args])


def served_item(project: Project, user: User) -> Item:
    lease = next_item(project, user)
    assert lease is not None
    return lease.item


# my projects


def test_projects_lists_my_memberships_with_progress(project: Project, annotator: User) -> None:
    response = client_for(annotator).get(reverse("annotation:projects"))
    assert response.status_code == 200
    assert project.name in response.text
    assert url("annotate", project) in response.text


def test_projects_shows_a_paused_membership_without_an_annotate_link(
    project: Project, annotator: User
) -> None:
    Membership.objects.update(paused=True, paused_reason="check your gold")
    response = client_for(annotator).get(reverse("annotation:projects"))
    assert "paused" in response.text and "check your gold" in response.text
    assert f'href="{url("annotate", project)}"' not in response.text


def test_projects_of_another_annotator_are_not_listed(
    project: Project, second_annotator: User
) -> None:
    response = client_for(second_annotator).get(reverse("annotation:projects"))
    assert response.status_code == 200
    assert project.name not in response.text


def test_projects_lists_an_admins_memberships(project: Project, admin_user: User) -> None:
    Membership.objects.create(project=project, user=admin_user)
    response = client_for(admin_user).get(reverse("annotation:projects"))
    assert response.status_code == 200 and project.name in response.text


@pytest.mark.parametrize("persona", ["researcher", "outsider"])
def test_projects_is_forbidden_to_other_roles(
    project: Project, persona: str, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).get(reverse("annotation:projects")).status_code == 403


def test_projects_sends_an_anonymous_visitor_to_sign_in(project: Project) -> None:
    response = Client().get(reverse("annotation:projects"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# annotate page


def test_annotate_shows_the_next_item_with_its_form(project: Project, annotator: User) -> None:
    response = client_for(annotator).get(url("annotate", project))
    assert response.status_code == 200
    lease = Lease.objects.get(annotator=annotator)
    assert f'data-item="{lease.item_id}"' in response.text
    assert 'name="q-helpfulness-score"' in response.text
    assert "<strong>fair</strong>" in response.text  # guidelines as Markdown
    assert "workspace.js" in response.text


def test_annotate_over_htmx_returns_only_the_item_fragment(
    project: Project, annotator: User
) -> None:
    response = client_for(annotator).get(url("annotate", project), **HX)
    assert response.status_code == 200
    assert "<html" not in response.text and 'id="item-form"' in response.text


def test_annotate_says_when_nothing_is_left(make_project: MakeProject, annotator: User) -> None:
    empty = make_project(members=[annotator])
    response = client_for(annotator).get(url("annotate", empty))
    assert response.status_code == 200 and "Nothing left" in response.text


def test_annotate_lets_an_admin_member_test_the_project(project: Project, admin_user: User) -> None:
    Membership.objects.create(project=project, user=admin_user)
    assert client_for(admin_user).get(url("annotate", project)).status_code == 200


def test_annotate_is_403_with_the_reason_for_a_paused_member(
    project: Project, annotator: User
) -> None:
    Membership.objects.update(paused=True, paused_reason="too fast")
    response = client_for(annotator).get(url("annotate", project))
    assert response.status_code == 403 and "too fast" in response.text


@pytest.mark.parametrize("persona", ["second_annotator", "admin_user"])
def test_annotate_is_404_for_a_non_member(
    project: Project, persona: str, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).get(url("annotate", project)).status_code == 404
    assert not Lease.objects.exists()


@pytest.mark.parametrize("persona", ["researcher", "outsider"])
def test_annotate_is_forbidden_to_other_roles(
    project: Project, persona: str, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).get(url("annotate", project)).status_code == 403


def test_annotate_sends_an_anonymous_visitor_to_sign_in(project: Project) -> None:
    assert Client().get(url("annotate", project)).status_code == 302


@pytest.mark.parametrize("task_type", [TaskType.PAIRWISE, TaskType.RANKING, TaskType.REWRITE])
def test_annotate_renders_every_task_type(
    make_project: MakeProject, add_items: AddItems, annotator: User, task_type: str
) -> None:
    project = make_project(task_type, members=[annotator], ranking_size=3)
    add_items(project, prompts=1, responses=3 if task_type == TaskType.RANKING else 2)
    response = client_for(annotator).get(url("annotate", project))
    assert response.status_code == 200
    expected = {
        TaskType.PAIRWISE: 'name="q-preference-choice"',
        TaskType.RANKING: 'name="q-ranking-order"',
        TaskType.REWRITE: 'name="q-rewrite-text"',
    }[task_type]
    assert expected in response.text


def test_the_annotate_url_leaves_the_manage_and_quality_prefixes_alone() -> None:
    from django.urls import resolve

    assert resolve("/annotate/manage/").url_name != "annotate"
    assert resolve("/annotate/quality/").url_name != "annotate"


# submit


def test_submit_stores_the_answer_and_returns_the_next_item_fragment(
    project: Project, annotator: User
) -> None:
    item = served_item(project, annotator)
    response = client_for(annotator).post(url("submit", project, item.pk), RATING_POST, **HX)
    assert response.status_code == 200
    assert "annotation:submitted" in response["HX-Trigger"]
    submission = Submission.objects.get()
    labels = {label.question.key: label.value for label in submission.labels.all()}
    assert labels["helpfulness"] == {"score": 4} and labels["flags"] == {"flags": []}
    assert submission.active_ms <= 1200
    next_lease = Lease.objects.get(annotator=annotator)
    assert f'data-item="{next_lease.item_id}"' in response.text


def test_submit_of_a_ranking_reads_the_order_in_posted_order(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RANKING, members=[annotator], ranking_size=3)
    add_items(project, prompts=1, responses=3)
    item = served_item(project, annotator)
    ids = [str(i) for i in item.placements.values_list("response_id", flat=True)][::-1]
    data = {"q-ranking-order": ids, "q-flags-seen": "1", "active_ms": "5"}
    response = client_for(annotator).post(url("submit", project, item.pk), data, **HX)
    assert response.status_code == 200
    assert Submission.objects.get().labels.get(question__key="ranking").value == {
        "order": [int(i) for i in ids]
    }


def test_submit_of_an_out_of_range_answer_is_a_400_fragment_and_writes_nothing(
    project: Project, annotator: User
) -> None:
    item = served_item(project, annotator)
    data = {**RATING_POST, "q-helpfulness-score": "9"}
    response = client_for(annotator).post(url("submit", project, item.pk), data, **HX)
    assert response.status_code == 400
    assert "between 1 and 5" in response.text
    assert response["HX-Retarget"] == "#item-message"
    assert not Submission.objects.exists()


def signed_in_with_csrf(user: User, project: Project) -> tuple[Client, dict[str, str]]:
    """A client that, like a browser, passes Django's CSRF check (which reads the form first),
    and the headers htmx sends with it."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get(url("annotate", project))
    return client, {**HX, "HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}


def test_a_5_mb_rationale_is_a_413_beside_the_field_and_keeps_the_item(
    project: Project, annotator: User
) -> None:
    item = served_item(project, annotator)
    client, headers = signed_in_with_csrf(annotator, project)
    body = urlencode({**RATING_POST, "q-rationale-text": "x" * 5_000_000})
    form = "application/x-www-form-urlencoded"
    response = client.post(url("submit", project, item.pk), body, content_type=form, **headers)
    assert response.status_code == 413
    assert response["HX-Retarget"] == "#item-message"  # the form and what was typed stay
    assert 'data-field="rationale"' in response.text
    assert "shorten it to at most 20,000 characters" in response.text
    assert not Submission.objects.exists()
    assert Lease.objects.filter(item=item, annotator=annotator).exists()


def test_an_over_long_rationale_is_a_400_beside_the_field(
    project: Project, annotator: User
) -> None:
    item = served_item(project, annotator)
    data = {**RATING_POST, "q-rationale-text": "x" * (MAX_TEXT + 1)}
    response = client_for(annotator).post(url("submit", project, item.pk), data, **HX)
    assert response.status_code == 400 and 'data-field="rationale"' in response.text
    assert f"longer than {MAX_TEXT} characters" in response.text
    assert not Submission.objects.exists()


def test_every_text_box_of_the_annotate_page_has_a_maxlength(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    rewrite = make_project(TaskType.REWRITE, members=[annotator])
    add_items(rewrite, prompts=1, responses=1)
    writing = make_project(TaskType.PROMPT_WRITING, members=[annotator])
    client = client_for(annotator)
    for page in (rewrite, writing):
        html = client.get(url("annotate", page)).text
        boxes = re.findall(r"<textarea[^>]*>", html)
        assert boxes and all(f'maxlength="{MAX_TEXT}"' in box for box in boxes), boxes


def test_submit_of_a_malformed_active_time_is_400(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    data = {**RATING_POST, "active_ms": "soon"}
    response = client_for(annotator).post(url("submit", project, item.pk), data, **HX)
    assert response.status_code == 400 and not Submission.objects.exists()


def test_submit_on_a_lost_lease_is_a_409_with_a_message(
    project: Project, annotator: User, second_annotator: User
) -> None:
    Membership.objects.create(project=project, user=second_annotator)
    item = served_item(project, annotator)
    Lease.objects.update(
        created_at=timezone.now() - timedelta(hours=2),
        expires_at=timezone.now() - timedelta(hours=1),
    )
    assert served_item(project, second_annotator) == item
    response = client_for(annotator).post(url("submit", project, item.pk), RATING_POST, **HX)
    assert response.status_code == 409
    assert "went to someone else" in response.text and "Load the next item" in response.text
    assert not Submission.objects.exists()


def test_submit_twice_is_a_409(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    client = client_for(annotator)
    client.post(url("submit", project, item.pk), RATING_POST, **HX)
    response = client.post(url("submit", project, item.pk), RATING_POST, **HX)
    assert response.status_code == 409 and "already answered" in response.text
    assert Submission.objects.count() == 1


def test_submit_to_a_guessed_item_of_another_project_is_404(
    project: Project, make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    other = make_project()
    (foreign, *_) = add_items(other, prompts=1, responses=1)
    response = client_for(annotator).post(url("submit", project, foreign.pk), RATING_POST, **HX)
    assert response.status_code == 404
    assert not Submission.objects.exists()


def test_submit_to_a_project_i_am_not_in_is_404(
    project: Project, annotator: User, second_annotator: User
) -> None:
    item = served_item(project, annotator)
    response = client_for(second_annotator).post(url("submit", project, item.pk), RATING_POST)
    assert response.status_code == 404


@pytest.mark.parametrize("persona", ["researcher", "outsider"])
def test_submit_is_forbidden_to_other_roles(
    project: Project, annotator: User, persona: str, request: pytest.FixtureRequest
) -> None:
    item = served_item(project, annotator)
    user = request.getfixturevalue(persona)
    assert client_for(user).post(url("submit", project, item.pk), RATING_POST).status_code == 403


def test_submit_by_an_anonymous_visitor_writes_nothing(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    assert Client().post(url("submit", project, item.pk), RATING_POST).status_code == 302
    assert not Submission.objects.exists()


def test_submit_refuses_get(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    assert client_for(annotator).get(url("submit", project, item.pk)).status_code == 405


# skip, flag, undo


def test_skip_returns_the_next_item(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    response = client_for(annotator).post(url("skip", project, item.pk), **HX)
    assert response.status_code == 200 and "annotation:skipped" in response["HX-Trigger"]
    assert Skip.objects.get().item == item
    assert f'data-item="{item.pk}"' not in response.text


def test_skip_twice_is_409(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    client = client_for(annotator)
    client.post(url("skip", project, item.pk), **HX)
    assert client.post(url("skip", project, item.pk), **HX).status_code == 409


def test_skip_by_a_non_member_is_404(project: Project, annotator: User, outsider: User) -> None:
    item = served_item(project, annotator)
    Membership.objects.create(project=project, user=outsider)  # a member without a role
    assert client_for(outsider).post(url("skip", project, item.pk)).status_code == 403


def test_flag_opens_a_flag_and_returns_the_next_item(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    data = {"reason": "unsafe", "note": "slur"}
    response = client_for(annotator).post(url("flag", project, item.pk), data, **HX)
    assert response.status_code == 200 and "annotation:flagged" in response["HX-Trigger"]
    assert Flag.objects.get().note == "slur"


def test_flag_with_an_unknown_reason_is_a_400_fragment(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    response = client_for(annotator).post(url("flag", project, item.pk), {"reason": "meh"}, **HX)
    assert response.status_code == 400 and "Choose a reason" in response.text
    assert not Flag.objects.exists()


def test_flag_of_an_item_not_served_to_me_is_a_403_fragment(
    project: Project, annotator: User
) -> None:
    served = served_item(project, annotator)
    guessed = Item.objects.filter(project=project).exclude(pk=served.pk).first()
    assert guessed is not None
    response = client_for(annotator).post(
        url("flag", project, guessed.pk), {"reason": "unsafe"}, **HX
    )
    assert response.status_code == 403 and "served to you" in response.text
    assert response["HX-Retarget"] == "#item-message"
    assert not Flag.objects.exists()


def test_flag_of_another_projects_item_is_404(
    project: Project, make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    (foreign, *_) = add_items(make_project(), prompts=1, responses=1)
    response = client_for(annotator).post(url("flag", project, foreign.pk), {"reason": "unsafe"})
    assert response.status_code == 404


def test_undo_brings_the_last_item_back_pre_filled(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    client = client_for(annotator)
    client.post(url("submit", project, item.pk), RATING_POST, **HX)
    response = client.post(url("undo", project), **HX)
    assert response.status_code == 200 and "annotation:undone" in response["HX-Trigger"]
    assert f'data-item="{item.pk}"' in response.text
    assert 'value="4" checked' in response.text
    assert Submission.objects.get().undone_at is not None


def test_undo_with_nothing_to_undo_is_a_409_fragment(project: Project, annotator: User) -> None:
    response = client_for(annotator).post(url("undo", project), **HX)
    assert response.status_code == 409 and "nothing to undo" in response.text


def test_undo_from_history_redirects_to_the_annotate_page(
    project: Project, annotator: User
) -> None:
    item = served_item(project, annotator)
    client = client_for(annotator)
    client.post(url("submit", project, item.pk), RATING_POST, **HX)
    response = client.post(url("undo", project), {"from": "history"}, **HX)
    assert response["HX-Redirect"] == url("annotate", project)


def test_undo_without_htmx_redirects(project: Project, annotator: User) -> None:
    item = served_item(project, annotator)
    client = client_for(annotator)
    client.post(url("submit", project, item.pk), RATING_POST, **HX)
    assert client.post(url("undo", project)).status_code == 302


@pytest.mark.parametrize("persona", ["researcher", "outsider"])
def test_undo_is_forbidden_to_other_roles(
    project: Project, persona: str, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).post(url("undo", project)).status_code == 403


def test_undo_in_a_project_i_am_not_in_is_404(project: Project, second_annotator: User) -> None:
    assert client_for(second_annotator).post(url("undo", project)).status_code == 404


# prompt writing


def test_write_prompt_adds_a_prompt_and_returns_the_form(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.PROMPT_WRITING, members=[annotator])
    client = client_for(annotator)
    page = client.get(url("annotate", project))
    assert 'id="prompt-form"' in page.text
    response = client.post(url("write-prompt", project), {"text": "Why is the sky blue?"}, **HX)
    assert response.status_code == 200 and "written 1" in response.text
    duplicate = client.post(url("write-prompt", project), {"text": "Why is the sky blue?"}, **HX)
    assert duplicate.status_code == 409 and "already" in duplicate.text
    assert Prompt.objects.count() == 1


def test_write_prompt_is_404_outside_my_projects(
    make_project: MakeProject, second_annotator: User
) -> None:
    project = make_project(TaskType.PROMPT_WRITING)
    response = client_for(second_annotator).post(url("write-prompt", project), {"text": "x"})
    assert response.status_code == 404


# history


def test_history_lists_my_answers_with_undo_for_the_last(project: Project, annotator: User) -> None:
    client = client_for(annotator)
    for _ in range(2):
        item = served_item(project, annotator)
        client.post(url("submit", project, item.pk), RATING_POST, **HX)
    response = client.get(url("history", project))
    assert response.status_code == 200
    assert response.text.count("data-submission=") == 2
    assert response.text.count(">Undo</button>") == 1


def test_history_offers_no_undo_after_the_window(project: Project, annotator: User) -> None:
    client = client_for(annotator)
    item = served_item(project, annotator)
    client.post(url("submit", project, item.pk), RATING_POST, **HX)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Submission.objects.update(served_at=an_hour_ago, submitted_at=an_hour_ago)
    assert ">Undo</button>" not in client.get(url("history", project)).text


def test_history_pages_over_htmx(project: Project, add_items: AddItems, annotator: User) -> None:
    Project.objects.filter(pk=project.pk).update(overlap=1)
    add_items(project, prompts=27, responses=1)
    client = client_for(annotator)
    for _ in range(26):
        item = served_item(project, annotator)
        client.post(url("submit", project, item.pk), RATING_POST)
    response = client.get(url("history", project) + "?page=2", **HX)
    assert response.status_code == 200 and "<html" not in response.text
    assert response.text.count("data-submission=") == 1


def test_history_never_shows_other_annotators_answers(
    project: Project, annotator: User, second_annotator: User
) -> None:
    Membership.objects.create(project=project, user=second_annotator)
    item = served_item(project, annotator)
    client_for(annotator).post(url("submit", project, item.pk), RATING_POST)
    response = client_for(second_annotator).get(url("history", project))
    assert response.status_code == 200 and "data-submission=" not in response.text


def test_history_is_404_for_a_non_member(project: Project, second_annotator: User) -> None:
    assert client_for(second_annotator).get(url("history", project)).status_code == 404


@pytest.mark.parametrize("persona", ["researcher", "outsider"])
def test_history_is_forbidden_to_other_roles(
    project: Project, persona: str, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(persona)
    assert client_for(user).get(url("history", project)).status_code == 403


def test_history_sends_an_anonymous_visitor_to_sign_in(project: Project) -> None:
    assert Client().get(url("history", project)).status_code == 302


# the item form as the manage preview renders it


def test_the_question_form_renders_unsaved_questions_as_a_preview(annotator: User) -> None:
    from django.template.loader import render_to_string

    from webapp.annotation.models import Question
    from webapp.annotation.questions import clean_config, default_questions

    questions = [
        Question(key=spec["key"], kind=spec["kind"], text=spec["text"], required=spec["required"],
                 config=clean_config(spec["kind"], spec["config"]))
        for spec in default_questions(TaskType.PAIRWISE)
    ]  # fmt: skip

    class Shown:
        def __init__(self, pk: int, text: str) -> None:
            self.id, self.text = pk, text

    html = render_to_string(
        "annotation/_questions.html",
        {
            "questions": questions,
            "responses": [Shown(1, "Left *answer*"), Shown(2, "Right answer")],
            "item_kind": TaskType.PAIRWISE,
            "preview": True,
            "prompt": "Say hi",
        },
    )
    assert "Response A" in html and "Response B" in html and "<em>answer</em>" in html
    assert "disabled" in html and "Preview" in html
