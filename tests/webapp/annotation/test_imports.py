"""Uploading prompts from JSONL and CSV files: all or nothing, with every line's problem."""

from __future__ import annotations

import codecs
import io
import json
from typing import Any

import pytest

from tests.webapp.annotation.conftest import MakeProject
from webapp.accounts.models import User
from webapp.annotation.imports import MAX_BYTES, MAX_ERRORS_KEPT, ImportReport, import_prompts
from webapp.annotation.models import (
    GoldAnswer,
    Item,
    ItemResponse,
    ModelVersion,
    Project,
    Prompt,
    PromptSource,
    Response,
)
from webapp.annotation.questions import TaskType

pytestmark = pytest.mark.usefixtures("postgres")


def jsonl(*rows: Any) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def run(project: Any, data: bytes, user: User, name: str = "prompts.jsonl") -> ImportReport:
    return import_prompts(project, io.BytesIO(data), filename=name, created_by=user)


def messages(report: ImportReport) -> list[tuple[int, str]]:
    return [(e.line, e.message) for e in report.errors]


def test_a_good_jsonl_file_creates_prompts_responses_and_items(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.PAIRWISE)
    data = jsonl(
        {
            "prompt": "Why is the sky blue?",
            "metadata": {"topic": "physics"},
            "responses": [
                "Rayleigh scattering.",
                {"text": "Because of the ocean.", "model": "v1", "sampling": {"temperature": 0.7}},
            ],
        },
        {"prompt": "Name a prime number.", "responses": ["7", "9", "11"]},
        {"prompt": "A prompt waiting for a model to answer it."},
    )
    report = run(project, data, admin_user)

    assert report.ok, report.errors
    assert (report.prompts, report.responses, report.items) == (3, 5, 2)
    first = Prompt.objects.get(text="Why is the sky blue?")
    assert first.source == PromptSource.UPLOAD
    assert first.metadata == {"topic": "physics"}
    assert first.created_by == admin_user
    sampled = Response.objects.get(text="Because of the ocean.")
    assert sampled.model_version == ModelVersion.objects.get(name="v1")
    assert sampled.sampling == {"temperature": 0.7}
    assert Item.objects.filter(project=project).count() == 2
    assert all(item.placements.count() == 2 for item in Item.objects.filter(project=project))


def test_a_good_csv_file_with_a_bom_is_imported(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    text = (
        "prompt,metadata,response_1,response_2\r\n"
        '"Write a haiku about rain.","{""lang"": ""en""}","Soft rain on the roof","Drip, drop"\r\n'
        '"Summarise:\nline one\nline two",,"A summary.",\r\n'
    )
    report = run(project, codecs.BOM_UTF8 + text.encode(), admin_user, "data.csv")

    assert report.ok, report.errors
    assert (report.prompts, report.responses, report.items) == (2, 3, 3)
    assert Prompt.objects.get(text="Write a haiku about rain.").metadata == {"lang": "en"}
    assert Prompt.objects.filter(text="Summarise:\nline one\nline two").exists()


def test_the_format_is_detected_from_the_content_without_an_extension(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    assert run(project, jsonl({"prompt": "Hi", "responses": ["Hello"]}), admin_user, "x").ok
    assert run(project, b"prompt\nSecond prompt\n", admin_user, "upload").ok
    assert Prompt.objects.filter(project=project).count() == 2


BAD_LINES = [
    ('{"prompt": "ok", ', "Malformed JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"metadata": {}}, "“prompt” is missing"),
    ({"prompt": "   "}, "“prompt” is empty"),
    ({"prompt": 7}, "“prompt” must be a string"),
    ({"prompt": "p1", "metadata": [1]}, "“metadata” must be a JSON object"),
    ({"prompt": "p2", "responses": "one"}, "“responses” must be a list"),
    ({"prompt": "p3", "responses": [3]}, "Response 1 must be a string"),
    ({"prompt": "p4", "responses": [{"model": "v1"}]}, "Response 1 has no text"),
    ({"prompt": "p5", "responses": [{"text": "a", "temp": 1}]}, "unknown field"),
    ({"prompt": "p6", "responses": [{"text": "a", "sampling": 1}]}, "“sampling” must be"),
    ({"prompt": "p7", "responses": ["same", "same"]}, "the same text"),
    ({"prompt": "p8", "responses": ["only one"]}, "too few"),
    ({"prompt": "p9", "extra": 1}, "Unknown field 'extra'"),
    ({"prompt": "p10", "responses": ["a", "b"], "gold": {"nope": "left"}}, "no such question"),
    ({"prompt": "p11", "responses": ["a", "b"], "gold": {"preference": "up"}}, "choice must be"),
    (
        {"prompt": "p12", "responses": ["a", "b", "c"], "gold": {"preference": "left"}},
        "exactly one item",
    ),
    ({"prompt": "p13", "responses": ["a", "b"], "gold": []}, "“gold” must be an object"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES)
def test_each_kind_of_bad_line_is_reported_with_its_number(
    make_project: MakeProject, admin_user: User, line: Any, expected: str
) -> None:
    project = make_project(TaskType.PAIRWISE)
    good = {"prompt": "A fine prompt", "responses": ["one", "two"]}
    report = run(project, jsonl(good, line), admin_user)

    assert not report.ok
    assert len(report.errors) == 1
    assert report.errors[0].line == 2
    assert expected in report.errors[0].message
    assert not Prompt.objects.filter(project=project).exists()


def test_every_bad_line_is_listed_and_nothing_is_written(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    data = jsonl(
        {"prompt": "Good one", "responses": ["fine"]},
        "not json",
        {"prompt": ""},
        {"prompt": "Good one", "responses": ["again"]},
        {"prompt": "Another good one", "responses": [{"text": "x", "model": "new-model"}]},
    )
    report = run(project, data, admin_user)

    assert messages(report) == [
        (2, "Malformed JSON: Expecting value (column 1)."),
        (3, "The “prompt” is empty."),
        (4, "The same prompt as line 1."),
    ]
    assert report.rows == 5
    assert not Prompt.objects.exists()
    assert not Response.objects.exists()
    assert not Item.objects.exists()
    assert not ModelVersion.objects.filter(name="new-model").exists()


def test_a_prompt_already_in_the_project_is_refused(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    assert run(project, jsonl({"prompt": "Tell me a joke."}), admin_user).ok
    report = run(project, jsonl({"prompt": "  Tell me a joke.  "}), admin_user)
    assert messages(report) == [(1, "This prompt is already in the project.")]
    assert Prompt.objects.count() == 1


def test_the_same_prompt_may_go_into_another_project(
    make_project: MakeProject, admin_user: User
) -> None:
    data = jsonl({"prompt": "Tell me a joke."})
    assert run(make_project(TaskType.RATING), data, admin_user).ok
    assert run(make_project(TaskType.RATING), data, admin_user).ok


def upload_named(project: Project, model: str, user: User) -> Response:
    """One line whose second response names `model`; that response."""
    line = {
        "prompt": f"Compare in {project.slug}",
        "responses": ["a", {"text": "b", "model": model}],
    }
    assert run(project, jsonl(line), user).ok
    return Response.objects.get(prompt__project=project, text="b")


def test_a_model_name_is_a_version_of_the_uploading_project_only(
    make_project: MakeProject, admin_user: User
) -> None:
    first, second = make_project(TaskType.PAIRWISE), make_project(TaskType.PAIRWISE)
    in_first = upload_named(first, "gpt-x", admin_user)
    assert in_first.model_version is not None and in_first.model_version.project == first
    assert not ModelVersion.objects.usable_in(second).filter(name="gpt-x").exists()

    in_second = upload_named(second, "gpt-x", admin_user)
    assert in_second.model_version is not None and in_second.model_version.project == second
    assert in_second.model_version != in_first.model_version
    assert list(ModelVersion.objects.usable_in(first).filter(name="gpt-x")) == [
        in_first.model_version
    ]


def test_the_same_name_in_a_later_upload_reuses_the_projects_version(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.PAIRWISE)
    earlier = upload_named(project, "gpt-x", admin_user)
    line = {"prompt": "Another", "responses": ["c", {"text": "d", "model": "gpt-x"}]}
    assert run(project, jsonl(line), admin_user).ok
    later = Response.objects.get(prompt__project=project, text="d")
    assert later.model_version == earlier.model_version
    assert ModelVersion.objects.filter(name="gpt-x").count() == 1


def test_a_name_equal_to_a_trained_version_is_not_attributed_to_it(
    make_project: MakeProject, admin_user: User
) -> None:
    trained = ModelVersion.objects.create(name="demo-pairwise-r1", checkpoint_dir="rounds/1")
    project = make_project(TaskType.PAIRWISE)
    uploaded = upload_named(project, "demo-pairwise-r1", admin_user)
    assert uploaded.model_version != trained
    assert not trained.responses.exists()
    assert not Item.objects.filter(model_version=trained).exists()


def test_a_ranking_line_needs_k_responses(make_project: MakeProject, admin_user: User) -> None:
    project = make_project(TaskType.RANKING, ranking_size=3)
    report = run(project, jsonl({"prompt": "Rank", "responses": ["a", "b"]}), admin_user)
    assert "give at least 3" in report.errors[0].message
    assert run(project, jsonl({"prompt": "Rank", "responses": ["a", "b", "c"]}), admin_user).ok
    assert Item.objects.get(project=project).placements.count() == 3


def test_gold_answers_become_gold_items_with_response_ids(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.PAIRWISE)
    data = jsonl(
        {
            "prompt": "2+2?",
            "responses": ["4", "5"],
            "gold": {"preference": {"choice": "left", "strength": 3}, "flags": []},
        },
        {"prompt": "3+3?", "responses": ["7", "6"], "gold": {"preference": "right"}},
        {"prompt": "Say hi", "responses": ["hi", "hello"], "gold": {"preference": "tie"}},
    )
    report = run(project, data, admin_user)

    assert report.ok, report.errors
    assert report.gold_items == 3
    four, six = Response.objects.get(text="4"), Response.objects.get(text="6")
    gold = GoldAnswer.objects.get(item__prompt__text="2+2?", question__key="preference")
    assert gold.item.is_gold
    assert gold.value == {"outcome": "win", "winner": four.pk, "strength": 3}
    other = GoldAnswer.objects.get(item__prompt__text="3+3?")
    assert other.value == {"outcome": "win", "winner": six.pk, "strength": 1}
    tie = GoldAnswer.objects.get(item__prompt__text="Say hi")
    assert tie.value == {"outcome": "tie", "winner": None, "strength": 0}
    assert GoldAnswer.objects.get(question__key="flags").value == {"flags": []}


def test_likert_and_ranking_gold_answers_in_short_form(
    make_project: MakeProject, admin_user: User
) -> None:
    rating = make_project(TaskType.RATING)
    report = run(
        rating,
        jsonl(
            {
                "prompt": "Q",
                "responses": ["A"],
                "gold": {"helpfulness": {"score": 4, "tolerance": 1}, "correctness": 5},
            }
        ),
        admin_user,
    )
    assert report.ok, report.errors
    helpful = GoldAnswer.objects.get(question__key="helpfulness")
    assert (helpful.value, helpful.tolerance) == ({"score": 4}, 1)
    assert GoldAnswer.objects.get(question__key="correctness").value == {"score": 5}

    ranking = make_project(TaskType.RANKING, ranking_size=3)
    report = run(
        ranking,
        jsonl({"prompt": "R", "responses": ["x", "y", "z"], "gold": {"ranking": [3, 1, 2]}}),
        admin_user,
    )
    assert report.ok, report.errors
    ids = {r.text: r.pk for r in Response.objects.filter(prompt__project=ranking)}
    order = GoldAnswer.objects.get(question__key="ranking").value["order"]
    assert order == [ids["z"], ids["x"], ids["y"]]


def test_an_out_of_range_gold_score_is_refused(make_project: MakeProject, admin_user: User) -> None:
    project = make_project(TaskType.RATING)
    report = run(
        project, jsonl({"prompt": "Q", "responses": ["A"], "gold": {"helpfulness": 9}}), admin_user
    )
    assert messages(report) == [
        (1, "Gold answer for 'helpfulness': The score must be between 1 and 5.")
    ]


def test_bad_csv_lines_are_reported(make_project: MakeProject, admin_user: User) -> None:
    project = make_project(TaskType.RATING)
    text = (
        "prompt,metadata,response_1\n"
        'ok,,"fine"\n'
        ",,no prompt\n"
        'bad meta,"{not json",x\n'
        "too,many,cells,here\n"
    )
    report = run(project, text.encode(), admin_user, "p.csv")
    assert messages(report) == [
        (3, "The “prompt” is empty."),
        (
            4,
            "The metadata column is not valid JSON: "
            "Expecting property name enclosed in double quotes.",
        ),
        (5, "The line has 4 columns; the header has 3."),
    ]
    assert not Prompt.objects.exists()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text,response_1", "needs a “prompt” column"),
        ("prompt,answer", "Unknown column 'answer'"),
        ("prompt,response_2", "without gaps"),
        ("prompt,prompt", "names a column twice"),
    ],
)
def test_a_bad_csv_header_is_reported_on_line_one(
    make_project: MakeProject, admin_user: User, header: str, expected: str
) -> None:
    report = run(make_project(TaskType.RATING), f"{header}\nx,y\n".encode(), admin_user, "p.csv")
    assert len(report.errors) == 1
    assert report.errors[0].line == 1
    assert expected in report.errors[0].message


def test_text_that_is_not_utf8_is_reported_per_line(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    data = b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n'
    assert messages(run(project, data, admin_user)) == [(2, "The line is not valid UTF-8 text.")]
    csv_data = b"prompt\nfine\ncaf\xe9\n"
    assert messages(run(project, csv_data, admin_user, "p.csv")) == [
        (3, "The line is not valid UTF-8 text.")
    ]
    assert not Prompt.objects.exists()


def test_empty_and_oversized_files_are_refused(make_project: MakeProject, admin_user: User) -> None:
    project = make_project(TaskType.RATING)
    assert messages(run(project, b"", admin_user)) == [(0, "The file is empty.")]
    assert messages(run(project, b"\n\n", admin_user)) == [(0, "The file has no prompts.")]
    huge = run(project, b" " * (MAX_BYTES + 1), admin_user)
    assert "the limit is 20 MB" in huge.errors[0].message


def test_only_the_first_errors_are_kept_but_all_are_counted(
    make_project: MakeProject, admin_user: User
) -> None:
    project = make_project(TaskType.RATING)
    report = run(project, jsonl(*(["{bad"] * (MAX_ERRORS_KEPT + 50))), admin_user)
    assert len(report.errors) == MAX_ERRORS_KEPT
    assert report.error_count == MAX_ERRORS_KEPT + 50
    assert report.hidden_errors == 50


def test_a_prompt_writing_project_takes_no_upload(
    make_project: MakeProject, admin_user: User
) -> None:
    report = run(make_project(TaskType.PROMPT_WRITING), jsonl({"prompt": "x"}), admin_user)
    assert "takes no uploads" in report.errors[0].message


def test_ten_thousand_rows_are_imported_in_bulk_statements(
    make_project: MakeProject, admin_user: User, django_assert_max_num_queries: Any
) -> None:
    project = make_project(TaskType.PAIRWISE)
    data = jsonl(
        *(
            {
                "prompt": f"Prompt number {n}: what is {n} squared?",
                "responses": [{"text": f"{n * n}", "model": "v2"}, f"Roughly {n * n + 1}."],
            }
            for n in range(10_000)
        )
    )
    # Bulk statements, not a few per row (timings are never asserted: the machines are noisy).
    with django_assert_max_num_queries(100):
        report = run(project, data, admin_user)

    assert report.ok, report.errors[:3]
    assert (report.prompts, report.responses, report.items) == (10_000, 20_000, 10_000)
    assert ItemResponse.objects.filter(item__project=project).count() == 20_000


def test_a_csv_gold_column_makes_a_gold_item(make_project: MakeProject, admin_user: User) -> None:
    project = make_project(TaskType.PAIRWISE)
    text = (
        "prompt,response_1,response_2,gold\n"
        'Capital of France?,Paris,Lyon,"{""preference"": ""left""}"\n'
        "Capital of Spain?,Madrid,Seville,\n"
    )
    report = run(project, text.encode(), admin_user, "gold.csv")
    assert report.ok, report.errors
    assert (report.items, report.gold_items) == (2, 1)
    gold = GoldAnswer.objects.get()
    assert gold.item.prompt.text == "Capital of France?"
    assert gold.value["winner"] == Response.objects.get(text="Paris").pk


def test_a_file_over_the_row_limit_is_refused(
    make_project: MakeProject, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.annotation.imports.MAX_ROWS", 3)
    project = make_project(TaskType.RATING)
    report = run(project, jsonl(*({"prompt": f"p{n}"} for n in range(5))), admin_user)
    assert messages(report) == [(4, "The file has more than 3 rows; split it.")]
    assert not Prompt.objects.exists()
