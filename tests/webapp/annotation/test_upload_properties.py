"""Property tests over the prompt upload: whatever file an admin sends (JSON lines of any shape,
CSV, raw bytes), the page answers 200 with everything imported or 422 with nothing written;
never a 5xx. Run on SQLite and on PostgreSQL (`both_databases`)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import client_for
from tests.webapp.annotation.conftest import MakeProject
from webapp.accounts.models import User
from webapp.annotation.models import Item, ItemResponse, ModelVersion, Project, Prompt, Response
from webapp.annotation.questions import TaskType

pytestmark = pytest.mark.both_databases

EXAMPLES = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text as people and other tools write it, with what databases refuse mixed in: NUL, unpaired
# surrogates (only reachable through JSON escapes), control characters, long runs.
awkward = st.sampled_from(["\x00", "\ud800", "\udfff", "\x07", "\u2028", "😀", "é", "x" * 5000])
texts = st.one_of(
    st.text(max_size=40), st.lists(awkward | st.text(max_size=5), max_size=4).map("".join)
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
jsonish = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
responses = st.lists(
    texts
    | st.fixed_dictionaries(
        {"text": texts}, optional={"model": texts, "sampling": jsonish, "extra": jsonish}
    )
    | jsonish,
    max_size=4,
)
rows = st.one_of(
    st.fixed_dictionaries(
        {"prompt": texts}, optional={"metadata": jsonish, "responses": responses, "gold": jsonish}
    ),
    jsonish,
)


def json_line(row: Any) -> bytes:
    # ensure_ascii writes unpaired surrogates as escapes, as other tools' JSON does.
    return json.dumps(row, ensure_ascii=True, allow_nan=True).encode()


@pytest.fixture
def project(make_project: MakeProject) -> Project:
    return make_project(TaskType.PAIRWISE)


@pytest.fixture
def admin(admin_user: User) -> Client:
    return client_for(admin_user)


def written() -> tuple[int, ...]:
    return tuple(
        model.objects.count() for model in (Prompt, Response, Item, ItemResponse, ModelVersion)
    )


def upload(client: Client, project: Project, name: str, data: bytes) -> Any:
    file = SimpleUploadedFile(name, data)
    return client.post(reverse("annotation:manage-upload", args=[project.slug]), {"file": file})


def check(client: Client, project: Project, name: str, data: bytes) -> None:
    before = written()
    response = upload(client, project, name, data)
    assert response.status_code in (200, 422), response.content[:2000]
    if response.status_code == 422:
        event("refused")
        assert written() == before
    else:
        event("imported")
        assert written()[0] > before[0]


@EXAMPLES
@given(lines=st.lists(rows, min_size=1, max_size=5))
def test_any_jsonl_upload_is_imported_whole_or_refused_with_nothing_written(
    admin: Client, project: Project, lines: list[Any]
) -> None:
    check(admin, project, "prompts.jsonl", b"\n".join(json_line(line) for line in lines))


@EXAMPLES
@given(
    header=st.lists(st.sampled_from(["prompt", "metadata", "response_1", "response_2"]) | texts),
    cells=st.lists(st.lists(texts, max_size=5), max_size=4),
)
def test_any_csv_upload_is_imported_whole_or_refused_with_nothing_written(
    admin: Client, project: Project, header: list[str], cells: list[list[str]]
) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in [header, *cells]:
        writer.writerow(row)
    data = out.getvalue().encode("utf-8", errors="surrogatepass")
    check(admin, project, "prompts.csv", data)


@EXAMPLES
@given(data=st.binary(max_size=300), name=st.sampled_from(["a.jsonl", "a.csv", "a.txt", "a"]))
def test_any_bytes_are_imported_or_refused_with_nothing_written(
    admin: Client, project: Project, data: bytes, name: str
) -> None:
    check(admin, project, name, data)


def test_the_upload_properties_reach_success_too(admin: Client, project: Project) -> None:
    line = json_line({"prompt": "Fine?", "responses": ["Yes.", {"text": "No.", "model": "m"}]})
    response = upload(admin, project, "prompts.jsonl", line)
    assert response.status_code == 200
    assert Prompt.objects.filter(project=project, text="Fine?").exists()
