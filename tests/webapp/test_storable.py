"""webapp/storable.py, and every path that takes text from outside: a NUL character or an
unpaired surrogate is a 4xx that says so, with nothing written.

No test here asks for PostgreSQL: the suite runs on SQLite by default and on PostgreSQL with
DATABASE_URL (as in CI), and each database must give the same answer. Before the shared check,
PostgreSQL answered 500 where SQLite stored the NUL, and both answered 500 to a surrogate.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.urls import reverse

from tests.conftest import client_for
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from webapp.accounts.models import User
from webapp.annotation.models import (
    Flag,
    FlagStatus,
    Item,
    Label,
    Membership,
    Project,
    Prompt,
    Response,
    Skip,
    Submission,
)
from webapp.annotation.questions import TaskType
from webapp.annotation.queue import next_item
from webapp.storable import check_storable, storable_problem, unstorable_character

pytestmark = pytest.mark.both_databases

HX = {"HTTP_HX_REQUEST": "true"}

# --- the check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("fine\x00", "a NUL character (U+0000)"),
        ("half a pair \ud83d", "an unpaired surrogate (U+D83D)"),
        ({"outer": {"k\x00": 1}}, "a NUL character (U+0000)"),
        ({"outer": [1, ("x", "\udfff")]}, "an unpaired surrogate (U+DFFF)"),
    ],
)
def test_it_finds_the_character_in_text_keys_and_nested_values(value: object, found: str) -> None:
    assert unstorable_character(value) == found


@pytest.mark.parametrize(
    "value", ["", "tab\tbell\x07 emoji 😀 ünïcode", {"k": [1, 2.5, None, True]}, 7, None]
)
def test_it_passes_what_both_databases_store(value: object) -> None:
    assert unstorable_character(value) == ""
    assert storable_problem(value, "The text") == ""


def test_it_reads_json_nested_deeper_than_the_stack() -> None:
    deep: Any = "\x00"
    for _ in range(5000):
        deep = [deep]
    assert unstorable_character(deep) == "a NUL character (U+0000)"


def test_check_storable_names_the_value_in_a_validation_error() -> None:
    with pytest.raises(ValidationError) as error:
        check_storable("a\x00b", "The note")
    assert error.value.code == "unstorable"
    assert error.value.messages == [
        "The note contains a NUL character (U+0000), which cannot be stored; remove it."
    ]


# --- every path ---------------------------------------------------------------------------------


@dataclass
class Scene:
    project: Project
    writing: Project
    served: Item
    flagged: Item
    annotator: User
    admin: User


@pytest.fixture
def scene(request: pytest.FixtureRequest, annotator: User, admin_user: User) -> Scene:
    """A rating project whose item is served to the annotator and another flagged by them, and
    a prompt-writing project."""
    new_project: MakeProject = request.getfixturevalue("make_project")
    new_items: AddItems = request.getfixturevalue("add_items")
    project = new_project(members=[annotator], slug="rate", overlap=1)
    new_items(project, prompts=3, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    flagged = Item.objects.filter(project=project).exclude(pk=lease.item_id).first()
    assert flagged is not None
    Flag.objects.create(item=flagged, annotator=annotator, reason="unsafe")
    writing = new_project(TaskType.PROMPT_WRITING, members=[annotator], slug="write")
    return Scene(project, writing, lease.item, flagged, annotator, admin_user)


def written() -> tuple[object, ...]:
    """Everything these paths write, to show that a refusal wrote nothing."""
    return (
        Submission.objects.count(),
        Label.objects.count(),
        Skip.objects.count(),
        list(Flag.objects.values_list("status", "note")),
        Prompt.objects.count(),
        Response.objects.count(),
        Item.objects.count(),
        list(Membership.objects.values_list("paused", "paused_reason")),
    )


def workspace(name: str, data: dict[str, str]) -> Callable[[Scene], HttpResponse]:
    def post(scene: Scene) -> HttpResponse:
        url = reverse(f"annotation:{name}", args=[scene.project.slug, scene.served.pk])
        return client_for(scene.annotator).post(url, data, **HX)

    return post


def written_prompt(scene: Scene) -> HttpResponse:
    url = reverse("annotation:write-prompt", args=[scene.writing.slug])
    return client_for(scene.annotator).post(url, {"text": "Why\x00?"}, **HX)


def upload(name: str, content: bytes) -> Callable[[Scene], HttpResponse]:
    def post(scene: Scene) -> HttpResponse:
        file = io.BytesIO(content)
        file.name = name
        url = reverse("annotation:manage-upload", args=[scene.project.slug])
        return client_for(scene.admin).post(url, {"file": file}, **HX)

    return post


def flag_review(scene: Scene) -> HttpResponse:
    url = reverse("annotation:quality-flag-review", args=[scene.flagged.pk])
    return client_for(scene.admin).post(url, {"status": "dismissed", "note": "ok\x00"}, **HX)


def pause(scene: Scene) -> HttpResponse:
    url = reverse("annotation:quality-pause", args=[scene.project.slug, scene.annotator.pk])
    return client_for(scene.admin).post(url, {"paused": "1", "reason": "slow\x00"}, **HX)


RATING = {"q-helpfulness-score": "4", "q-correctness-score": "5", "active_ms": "1200"}
GOOD_LINE = b'{"prompt": "A fine prompt."}\n'
PATHS: dict[str, tuple[Callable[[Scene], HttpResponse], int]] = {
    "rationale": (workspace("submit", {**RATING, "q-rationale-text": "because\x00"}), 400),
    "skip reason": (workspace("skip", {"reason": "dull\x00"}), 400),
    "flag note": (workspace("flag", {"reason": "other", "note": "odd\x00"}), 400),
    "written prompt": (written_prompt, 400),
    "JSONL prompt": (upload("p.jsonl", GOOD_LINE + b'{"prompt": "x\\u0000"}\n'), 422),
    "JSONL surrogate": (upload("p.jsonl", GOOD_LINE + b'{"prompt": "x\\ud800"}\n'), 422),
    "JSONL metadata key": (
        upload("p.jsonl", GOOD_LINE + b'{"prompt": "y", "metadata": {"k\\u0000": 1}}\n'),
        422,
    ),
    "JSONL response model": (
        upload("p.jsonl", b'{"prompt": "z", "responses": [{"text": "r", "model": "m\\u0000"}]}\n'),
        422,
    ),
    "CSV NUL byte": (upload("p.csv", b"prompt,response_1\nfine,also fine\nhi\x00,there\n"), 422),
    "flag review note": (flag_review, 400),
    "pause reason": (pause, 400),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_path_refuses_unstorable_text_with_a_4xx_and_writes_nothing(
    scene: Scene, path: str
) -> None:
    send, status = PATHS[path]
    before = written()
    response = send(scene)
    assert response.status_code == status, response.content[:300]
    assert "which cannot be stored; remove it." in response.text
    assert written() == before


def test_the_workspace_message_names_the_field(scene: Scene) -> None:
    send, _ = PATHS["rationale"]
    response = send(scene)
    assert 'data-field="rationale"' in response.text
    assert "The text contains a NUL character (U+0000)" in response.text


def test_a_flag_list_filtered_by_a_project_slug_with_a_nul_is_a_404(scene: Scene) -> None:
    url = reverse("annotation:quality-flags")
    response = client_for(scene.admin).get(url, {"project": "rate\x00"})
    assert response.status_code == 404
    assert Flag.objects.filter(status=FlagStatus.OPEN).count() == 1
