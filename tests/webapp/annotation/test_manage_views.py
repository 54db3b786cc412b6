"""The admin pages: projects, questions with the live preview, uploads, members, users."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import client_for
from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import Role, User
from webapp.annotation.models import Label, Membership, Project, Prompt, Question, Submission
from webapp.annotation.questions import TaskType

pytestmark = pytest.mark.usefixtures("postgres")
HTMX = {"HX-Request": "true"}


@pytest.fixture
def project(make_project: MakeProject) -> Project:
    return make_project(TaskType.RATING, name="Chat ratings", slug="chat")


@pytest.fixture
def admin(admin_user: User) -> Client:
    return client_for(admin_user)


def url(name: str, *args: object) -> str:
    return reverse(f"annotation:{name}", args=args)


def page_urls(project: Project, someone: User) -> list[tuple[str, str]]:
    question = project.questions.first()
    assert question is not None
    membership = Membership.objects.create(project=project, user=someone)
    return [
        ("get", url("manage-projects")),
        ("get", url("manage-project-create")),
        ("get", url("manage-project", project.slug)),
        ("post", url("manage-preview", project.slug)),
        ("get", url("manage-question-add", project.slug)),
        ("get", url("manage-question-edit", project.slug, question.pk)),
        ("post", url("manage-question-remove", project.slug, question.pk)),
        ("post", url("manage-question-move", project.slug, question.pk)),
        ("get", url("manage-prompts", project.slug)),
        ("get", url("manage-upload", project.slug)),
        ("get", url("manage-members", project.slug)),
        ("post", url("manage-member-remove", project.slug, membership.pk)),
        ("get", url("manage-users")),
        ("post", url("manage-user-role", someone.pk)),
        ("post", url("manage-user-active", someone.pk)),
        ("post", url("manage-user-link", someone.pk)),
    ]


@pytest.mark.parametrize("persona", ["annotator", "researcher", "outsider"])
def test_everyone_but_admins_gets_403_and_nothing_changes(
    request: pytest.FixtureRequest, project: Project, second_annotator: User, persona: str
) -> None:
    client = client_for(request.getfixturevalue(persona))
    before = (Question.objects.count(), Membership.objects.count())
    for method, address in page_urls(project, second_annotator):
        response = getattr(client, method)(
            address, {"direction": "up", "role": "admin", "active": "0"}
        )
        assert response.status_code == 403, address
    assert (Question.objects.count(), Membership.objects.count()) == (before[0], before[1] + 1)
    second_annotator.refresh_from_db()
    assert second_annotator.is_active and second_annotator.role == Role.ANNOTATOR


def test_anonymous_visitors_are_sent_to_sign_in(project: Project, second_annotator: User) -> None:
    client = Client()
    for method, address in page_urls(project, second_annotator):
        response = getattr(client, method)(address)
        assert response.status_code == 302, address
        assert response["Location"].startswith(reverse("login"))


def test_admins_open_every_page(admin: Client, project: Project, second_annotator: User) -> None:
    for method, address in page_urls(project, second_annotator):
        if method == "get":
            assert admin.get(address).status_code == 200, address


def test_an_unknown_project_or_a_question_of_another_project_is_404(
    admin: Client, project: Project, make_project: MakeProject
) -> None:
    other = make_project(TaskType.RATING)
    foreign = other.questions.first()
    assert foreign is not None
    assert admin.get(url("manage-project", "nope")).status_code == 404
    assert admin.get(url("manage-question-edit", project.slug, foreign.pk)).status_code == 404
    assert admin.post(url("manage-question-remove", project.slug, foreign.pk)).status_code == 404
    assert Question.objects.filter(pk=foreign.pk).exists()


# Projects


def test_the_project_list_shows_counts(
    admin: Client, project: Project, add_items: AddItems, annotator: User
) -> None:
    [item, *_] = add_items(project, prompts=2, responses=2)
    submission = Submission.objects.create(item=item, annotator=annotator, served_at=timezone.now())
    Label.objects.create(
        submission=submission,
        item=item,
        annotator=annotator,
        question=project.questions.get(key="helpfulness"),
        value={"score": 3},
    )
    html = admin.get(url("manage-projects")).content.decode()
    row = re.search(r"Chat ratings.*?</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">(\d+)</td>', row.group(0))
    assert cells == ["0", "2", "4", "0", "1"]  # members, prompts, items, complete, labels


def test_an_admin_creates_a_project_with_a_slug_from_its_name(
    admin: Client, admin_user: User
) -> None:
    response = admin.post(
        url("manage-project-create"),
        {
            "name": "Code review pairs",
            "slug": "",
            "task_type": "pairwise",
            "overlap": 3,
            "gold_share": 0.1,
            "ranking_size": 4,
            "undo_window_seconds": 300,
            "lease_seconds": 600,
        },
    )
    project = Project.objects.get(name="Code review pairs")
    assert response.status_code == 302
    assert response["Location"] == url("manage-project", "code-review-pairs")
    assert (project.slug, project.overlap, project.created_by) == (
        "code-review-pairs",
        3,
        admin_user,
    )
    assert project.questions.filter(key="preference").exists()


def test_a_project_with_bad_settings_is_not_created(admin: Client) -> None:
    response = admin.post(
        url("manage-project-create"),
        {
            "name": "Bad",
            "task_type": "ranking",
            "overlap": 0,
            "gold_share": 2,
            "ranking_size": 12,
            "undo_window_seconds": 300,
            "lease_seconds": 600,
        },
    )
    assert response.status_code == 422
    assert b"greater than or equal to 1" in response.content
    assert not Project.objects.filter(name="Bad").exists()


def test_the_project_page_previews_each_question(admin: Client, project: Project) -> None:
    html = admin.get(url("manage-project", project.slug)).content.decode()
    assert 'id="preview"' in html
    for question in project.questions.all():
        assert question.text in html
    assert "hash table" in html  # the sample prompt


def settings_data(project: Project, **changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": project.name,
        "slug": project.slug,
        "description": "",
        "guidelines": "",
        "overlap": project.overlap,
        "gold_share": project.gold_share,
        "ranking_size": project.ranking_size,
        "undo_window_seconds": 300,
        "lease_seconds": 600,
        "is_active": "on",
    }
    data.update(changes)
    return data


def test_settings_saved_over_htmx_return_the_settings_fragment(
    admin: Client, project: Project
) -> None:
    response = admin.post(
        url("manage-project", project.slug),
        settings_data(project, overlap=5, guidelines="Be fair."),
        headers=HTMX,
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "settings-saved"
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="settings"')
    assert "Saved." in html
    project.refresh_from_db()
    assert (project.overlap, project.guidelines) == (5, "Be fair.")


def test_a_new_slug_reloads_the_page_at_its_new_address(admin: Client, project: Project) -> None:
    response = admin.post(
        url("manage-project", project.slug), settings_data(project, slug="chat-v2"), headers=HTMX
    )
    assert response["HX-Redirect"] == url("manage-project", "chat-v2")
    project.refresh_from_db()
    assert project.slug == "chat-v2"


def test_settings_without_htmx_redirect_back(admin: Client, project: Project) -> None:
    response = admin.post(url("manage-project", project.slug), settings_data(project, overlap=2))
    assert response.status_code == 302


def test_out_of_range_settings_are_refused_in_place(admin: Client, project: Project) -> None:
    response = admin.post(
        url("manage-project", project.slug),
        settings_data(project, overlap=99, gold_share=-1),
        headers=HTMX,
    )
    assert response.status_code == 422
    assert "less than or equal to 50" in response.content.decode()
    project.refresh_from_db()
    assert project.overlap == 1


# Questions


def question_data(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "key": "clarity",
        "kind": "likert",
        "text": "How clear is it?",
        "required": "on",
        "scale_min": 1,
        "scale_max": 7,
        "scale_labels": "1: muddled\n7: crystal clear",
        "max_strength": 3,
        "flag_options": "",
    }
    data.update(changes)
    return data


def test_a_question_is_added_over_htmx(admin: Client, project: Project) -> None:
    response = admin.post(url("manage-question-add", project.slug), question_data(), headers=HTMX)
    assert response.status_code == 200
    assert response["HX-Trigger"] == "questions-changed"
    assert response.content.decode().lstrip().startswith('<div id="questions">')
    question = project.questions.get(key="clarity")
    assert question.config == {"min": 1, "max": 7, "labels": {"1": "muddled", "7": "crystal clear"}}
    assert "How clear is it?" in response.content.decode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "preference"}, "Select a valid choice"),
        ({"scale_min": 5, "scale_max": 2}, "Likert scale needs"),
        ({"scale_labels": "great"}, "Write each scale label"),
        ({"key": "flags"}, "already exists"),
        ({"key": "not a slug"}, "Enter a valid"),
    ],
)
def test_a_bad_question_is_refused_with_its_message(
    admin: Client, project: Project, changes: dict[str, object], message: str
) -> None:
    before = project.questions.count()
    response = admin.post(
        url("manage-question-add", project.slug), question_data(**changes), headers=HTMX
    )
    assert response.status_code == 422
    assert message in response.content.decode()
    assert project.questions.count() == before


def test_a_question_is_edited_in_place(admin: Client, project: Project) -> None:
    question = project.questions.get(key="helpfulness")
    form = admin.get(url("manage-question-edit", project.slug, question.pk), headers=HTMX)
    assert form.status_code == 200
    assert 'value="helpfulness"' in form.content.decode()
    response = admin.post(
        url("manage-question-edit", project.slug, question.pk),
        question_data(key="helpfulness", text="Does it help?", scale_max=5, scale_labels=""),
        headers=HTMX,
    )
    assert response.status_code == 200
    question.refresh_from_db()
    assert question.text == "Does it help?"


def test_an_answered_question_keeps_its_kind_and_cannot_be_removed(
    admin: Client, project: Project, add_items: AddItems, annotator: User
) -> None:
    [item, *_] = add_items(project, prompts=1, responses=1)
    question = project.questions.get(key="helpfulness")
    submission = Submission.objects.create(item=item, annotator=annotator, served_at=timezone.now())
    Label.objects.create(
        submission=submission,
        item=item,
        annotator=annotator,
        question=question,
        value={"score": 3},
    )
    response = admin.post(
        url("manage-question-edit", project.slug, question.pk),
        question_data(key="helpfulness", kind="text"),
        headers=HTMX,
    )
    assert response.status_code == 422
    assert "cannot change: annotators have answered it" in response.content.decode()
    response = admin.post(url("manage-question-remove", project.slug, question.pk), headers=HTMX)
    assert response.status_code == 422
    assert "cannot be removed" in response.content.decode()
    question.refresh_from_db()
    assert question.kind == "likert"


def test_a_question_is_removed_and_moved(admin: Client, project: Project) -> None:
    rationale = project.questions.get(key="rationale")
    response = admin.post(
        url("manage-question-move", project.slug, rationale.pk), {"direction": "up"}, headers=HTMX
    )
    assert response.status_code == 200
    assert list(project.questions.values_list("key", flat=True))[2] == "rationale"
    bad = admin.post(url("manage-question-move", project.slug, rationale.pk), {"direction": "left"})
    assert bad.status_code == 422
    response = admin.post(url("manage-question-remove", project.slug, rationale.pk), headers=HTMX)
    assert response.status_code == 200
    assert not project.questions.filter(key="rationale").exists()
    assert "questions-changed" in response["HX-Trigger"]


def test_the_preview_shows_an_unsaved_question(admin: Client, project: Project) -> None:
    helpfulness = project.questions.get(key="helpfulness")
    response = admin.post(
        url("manage-preview", project.slug),
        question_data(key="helpfulness", text="Is it any use?", question_id=helpfulness.pk),
        headers=HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="preview"')
    assert "Is it any use?" in html
    assert "How helpful is the response?" not in html
    assert html.count('name="q-helpfulness-score"') == 7
    helpfulness.refresh_from_db()
    assert helpfulness.text == "How helpful is the response?"


def test_the_preview_shows_a_new_question_after_the_others(admin: Client, project: Project) -> None:
    html = admin.post(
        url("manage-preview", project.slug), question_data(), headers=HTMX
    ).content.decode()
    assert html.index("How correct is the response?") < html.index("How clear is it?")
    assert not project.questions.filter(key="clarity").exists()


def test_the_preview_of_a_ranking_follows_the_ranking_size(
    admin: Client, make_project: MakeProject
) -> None:
    ranking = make_project(TaskType.RANKING)
    html = admin.post(
        url("manage-preview", ranking.slug), {"ranking_size": "6"}, headers=HTMX
    ).content.decode()
    assert html.count('class="rank-card"') == 6
    html = admin.post(
        url("manage-preview", ranking.slug), {"ranking_size": "60"}, headers=HTMX
    ).content.decode()
    assert html.count('class="rank-card"') == 4


def test_the_preview_renders_guidelines_being_typed(admin: Client, project: Project) -> None:
    html = admin.post(
        url("manage-preview", project.slug),
        {"guidelines": "# Rules\n\nBe **fair**.<script>alert(1)</script>"},
        headers=HTMX,
    ).content.decode()
    assert "<strong>fair</strong>" in html
    assert "<script>" not in html
    project.refresh_from_db()
    assert project.guidelines == ""


def test_the_preview_says_when_the_edited_question_has_errors(
    admin: Client, project: Project
) -> None:
    html = admin.post(
        url("manage-preview", project.slug), question_data(scale_min=9, scale_max=1), headers=HTMX
    ).content.decode()
    assert "has errors" in html


# Uploads and prompts


def upload(client: Client, project: Project, name: str, data: bytes) -> Any:
    return client.post(url("manage-upload", project.slug), {"file": SimpleUploadedFile(name, data)})


def test_a_good_upload_shows_counts_and_prompts(admin: Client, project: Project) -> None:
    lines = [{"prompt": f"Question {n}?", "responses": [f"Answer {n}"]} for n in range(3)]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    response = upload(admin, project, "batch.jsonl", data)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<strong>3</strong> prompts" in html
    assert "<strong>3</strong> items" in html
    assert "Question 2?" in html
    prompts = admin.get(url("manage-prompts", project.slug)).content.decode()
    assert "Question 0?" in prompts


def test_a_bad_upload_lists_line_errors_and_imports_nothing(
    admin: Client, project: Project
) -> None:
    data = b'{"prompt": "fine", "responses": ["ok"]}\n{"prompt": ""}\nnot json\n'
    response = upload(admin, project, "batch.jsonl", data)
    html = response.content.decode()
    assert response.status_code == 422
    assert "Nothing was imported" in html
    assert '<td class="num">2</td><td>The “prompt” is empty.</td>' in html
    assert "Malformed JSON" in html
    assert not Prompt.objects.exists()


def test_a_large_upload_kept_in_a_temporary_file_is_read(
    admin: Client, project: Project, settings: Any
) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100  # Django writes bigger uploads to disk
    data = "prompt,response_1\n" + "".join(f"Prompt {n},Answer {n}\n" for n in range(50))
    response = upload(admin, project, "big.csv", data.encode())
    assert response.status_code == 200
    assert Prompt.objects.filter(project=project).count() == 50


def test_an_upload_without_a_file_is_refused(admin: Client, project: Project) -> None:
    response = admin.post(url("manage-upload", project.slug), {})
    assert response.status_code == 422
    assert b"This field is required" in response.content


# Members


def test_an_annotator_is_added_and_removed_over_htmx(
    admin: Client, project: Project, annotator: User
) -> None:
    response = admin.post(url("manage-members", project.slug), {"username": "ann"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="members">')
    assert "ann now annotates this project" in html
    membership = Membership.objects.get(project=project, user=annotator)
    response = admin.post(url("manage-member-remove", project.slug, membership.pk), headers=HTMX)
    assert response.status_code == 200
    assert not Membership.objects.exists()


@pytest.mark.parametrize(
    ("username", "message"), [("nobody", "There is no user"), ("res", "not an annotator")]
)
def test_a_member_who_cannot_annotate_is_refused(
    admin: Client, project: Project, researcher: User, username: str, message: str
) -> None:
    response = admin.post(url("manage-members", project.slug), {"username": username}, headers=HTMX)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not Membership.objects.exists()


def test_the_members_page_counts_each_members_labels(
    admin: Client, project: Project, add_items: AddItems, annotator: User
) -> None:
    Membership.objects.create(project=project, user=annotator)
    [item, *_] = add_items(project, prompts=1, responses=1)
    submission = Submission.objects.create(item=item, annotator=annotator, served_at=timezone.now())
    for key in ("helpfulness", "correctness"):
        Label.objects.create(
            submission=submission,
            item=item,
            annotator=annotator,
            question=project.questions.get(key=key),
            value={"score": 4},
        )
    html = admin.get(url("manage-members", project.slug)).content.decode()
    assert re.search(r'<td class="num">2</td>', html)


# Users


def test_an_invite_shows_a_link_that_sets_the_password(admin: Client) -> None:
    response = admin.post(
        url("manage-users"),
        {"username": "newbie", "email": "n@example.com", "role": "annotator"},
        headers=HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    user = User.objects.get(username="newbie")
    assert user.role == Role.ANNOTATOR and not user.has_usable_password()
    link = re.search(r'value="http://testserver(/annotate/manage/set-password/[^"]+)"', html)
    assert link is not None

    visitor = Client()
    landing = visitor.get(link.group(1))
    assert landing.status_code == 302  # Django swaps the token for a session-held one
    form_url = landing["Location"]
    done = visitor.post(
        form_url, {"new_password1": "a long new secret 42", "new_password2": "a long new secret 42"}
    )
    assert done.status_code == 302 and done["Location"] == reverse("login")
    user.refresh_from_db()
    assert user.check_password("a long new secret 42")
    again = Client().get(link.group(1), follow=True)
    assert b"This link no longer works" in again.content


def test_an_invite_with_a_taken_username_is_refused(admin: Client, annotator: User) -> None:
    response = admin.post(
        url("manage-users"), {"username": "ann", "role": "annotator"}, headers=HTMX
    )
    assert response.status_code == 422
    assert b"already exists" in response.content


def test_an_admin_changes_a_role_and_deactivates_a_user(admin: Client, annotator: User) -> None:
    response = admin.post(
        url("manage-user-role", annotator.pk), {"role": "researcher"}, headers=HTMX
    )
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<div id="users">')
    response = admin.post(url("manage-user-active", annotator.pk), {"active": "0"}, headers=HTMX)
    assert response.status_code == 200
    annotator.refresh_from_db()
    assert annotator.role == Role.RESEARCHER and not annotator.is_active


def test_an_admin_cannot_demote_or_deactivate_themselves(admin: Client, admin_user: User) -> None:
    response = admin.post(
        url("manage-user-role", admin_user.pk), {"role": "annotator"}, headers=HTMX
    )
    assert response.status_code == 422
    assert "your own role" in response.content.decode()
    response = admin.post(url("manage-user-active", admin_user.pk), {"active": "0"}, headers=HTMX)
    assert response.status_code == 422
    bad = admin.post(url("manage-user-role", admin_user.pk), {"role": "emperor"}, headers=HTMX)
    assert bad.status_code == 422
    admin_user.refresh_from_db()
    assert admin_user.role == Role.ADMIN and admin_user.is_active


def test_a_new_link_only_for_people_without_a_password(admin: Client, annotator: User) -> None:
    response = admin.post(url("manage-user-link", annotator.pk), headers=HTMX)
    assert response.status_code == 422
    assert "has set a password already" in response.content.decode()
    invited = User.objects.create(username="pending", role=Role.ANNOTATOR)
    invited.set_unusable_password()
    invited.save()
    response = admin.post(url("manage-user-link", invited.pk), headers=HTMX)
    assert response.status_code == 200
    assert "/annotate/manage/set-password/" in response.content.decode()
