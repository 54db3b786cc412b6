"""Admin pages: projects and their questions (with a live preview of the annotation form),
prompt uploads, and members; users are in `manage_users`."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.annotation import imports, projects
from webapp.annotation.forms import (
    AddMemberForm,
    ProjectCreateForm,
    ProjectSettingsForm,
    QuestionForm,
    UploadForm,
)
from webapp.annotation.models import Item, Label, Membership, Project, Prompt, Question

INVALID = 422  # a form with errors, re-rendered in place
NEW_QUESTION_IDS = "new_%s"  # element ids of the add-question form, apart from an edit form's
PREVIEW_RESPONSES = (
    "Sure! Here is a short answer with a list:\n\n- first point\n- second point",
    "The capital of Australia is **Canberra**, not Sydney.",
    "```python\ndef add(a, b):\n    return a + b\n```",
    "I am not certain, but it is most likely the second option.",
    "Yes. In short: it depends on the size of the input.",
    "No — that claim is a common misconception.",
    "Here are three ideas: walk, read, cook.",
    "Let me explain step by step.",
    "A shorter reply.",
)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def signed_in_admin(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def posted_data(request: HttpRequest) -> QueryDict | None:
    """A form's data: None on GET (an unbound form), the POST even when it is empty."""
    return request.POST if request.method == "POST" else None


def _project(slug: str) -> Project:
    return get_object_or_404(Project, slug=slug)


def _question(project: Project, question_id: int) -> Question:
    return get_object_or_404(Question, pk=question_id, project=project)


def error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# Projects


@role_required(Role.ADMIN)
@require_GET
def project_list(request: HtmxHttpRequest) -> HttpResponse:
    # One grouped query per count: joining prompts, items and labels in one query would
    # multiply their rows.
    counts = {
        "prompts": _per_project(Prompt.objects.all()),
        "items": _per_project(Item.objects.all()),
        "complete": _per_project(Item.objects.filter(is_complete=True)),
        "members": _per_project(Membership.objects.all()),
        "labels": _per_project(Label.objects.filter(undone_at__isnull=True), "item__project"),
    }
    rows = [
        (project, {name: per.get(project.pk, 0) for name, per in counts.items()})
        for project in Project.objects.all()
    ]
    return render(request, "annotation/manage/projects.html", {"projects": rows})


def _per_project(rows: QuerySet[Any], field: str = "project") -> dict[int, int]:
    return dict(rows.order_by().values_list(field).annotate(n=Count("pk")).values_list(field, "n"))


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def project_create(request: HtmxHttpRequest) -> HttpResponse:
    form = ProjectCreateForm(posted_data(request))
    if request.method == "POST" and form.is_valid():
        try:
            project = projects.create_project(
                form.save(commit=False), created_by=signed_in_admin(request)
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Project “{project.name}” created with default questions.")
            return redirect("annotation:manage-project", slug=project.slug)
    status = INVALID if form.errors else 200
    return render(request, "annotation/manage/project_create.html", {"form": form}, status=status)


def _project_page(
    request: HtmxHttpRequest, project: Project, form: ProjectSettingsForm, *, saved: bool = False
) -> HttpResponse:
    template = "annotation/manage/project.html"
    if request.htmx:
        template += "#settings"
    context = {
        "project": project,
        "form": form,
        "questions": project.questions.all(),
        "question_form": QuestionForm(project, auto_id=NEW_QUESTION_IDS),
        "counts": _counts(project),
        "saved": saved,
        **_preview_context(project, list(project.questions.all())),
    }
    return render(request, template, context, status=INVALID if form.errors else 200)


def _counts(project: Project) -> dict[str, int]:
    items = Item.objects.filter(project=project).aggregate(
        items=Count("id"),
        complete=Count("id", filter=Q(is_complete=True)),
        gold=Count("id", filter=Q(is_gold=True)),
    )
    return {
        "prompts": Prompt.objects.filter(project=project).count(),
        "labels": Label.objects.filter(item__project=project, undone_at__isnull=True).count(),
        "members": Membership.objects.filter(project=project).count(),
        **items,
    }


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def project_detail(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """The project's settings, its questions editor and the live preview."""
    project = _project(slug)
    form = ProjectSettingsForm(posted_data(request), instance=project)
    if request.method == "POST" and form.is_valid():
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        projects.update_project_settings(project, changes)
        if request.htmx and "slug" in changes:  # every URL on the page has changed
            return HttpResponseClientRedirect(
                reverse("annotation:manage-project", args=[project.slug])
            )
        if not request.htmx:
            messages.success(request, "Settings saved.")
            return redirect("annotation:manage-project", slug=project.slug)
        form = ProjectSettingsForm(instance=project)
        response = _project_page(request, project, form, saved=True)
        response["HX-Trigger"] = "settings-saved"
        return response
    if form.errors:
        project.refresh_from_db()
    return _project_page(request, project, form)


# Questions and the preview


def _preview_context(project: Project, questions: list[Question]) -> dict[str, Any]:
    count = {"pairwise": 2, "ranking": project.ranking_size}.get(project.task_type, 1)
    responses = [
        _SampleResponse(n + 1, PREVIEW_RESPONSES[n % len(PREVIEW_RESPONSES)])
        for n in range(count if project.task_type != "prompt_writing" else 0)
    ]
    return {
        "preview_questions": questions,
        "preview_responses": responses,
        "item_kind": project.task_type,
    }


class _SampleResponse:
    """A sample response shown in the preview; never stored."""

    def __init__(self, pk: int, text: str) -> None:
        self.id = self.pk = pk
        self.text = text


def _questions_fragment(request: HtmxHttpRequest, project: Project, **extra: Any) -> HttpResponse:
    context = {
        "project": project,
        "questions": project.questions.all(),
        "question_form": QuestionForm(project, auto_id=NEW_QUESTION_IDS),
        **_preview_context(project, list(project.questions.all())),
        **extra,
    }
    status = INVALID if extra.get("question_error") or extra.get("editing_errors") else 200
    response = render(request, "annotation/manage/project.html#questions", context, status=status)
    if status == 200:
        response["HX-Trigger"] = "questions-changed"
    return response


@role_required(Role.ADMIN)
@require_POST
def preview(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """The annotation form as annotators will see it, with what is being typed and not yet
    saved: the question being edited in place of its stored version, the ranking size, the
    guidelines."""
    project = _project(slug)
    questions = list(project.questions.all())
    if "ranking_size" in request.POST:
        size = request.POST["ranking_size"]
        if size.isdigit() and 2 <= int(size) <= 9:
            project.ranking_size = int(size)
    if "guidelines" in request.POST:
        project.guidelines = request.POST["guidelines"]
    problem = ""
    if "kind" in request.POST:
        draft_data = request.POST.copy()
        # A question being written may have no key or text yet: preview it all the same.
        draft_data["key"] = draft_data.get("key") or "new-question"
        draft_data["text"] = draft_data.get("text") or "(the question's text)"
        form = QuestionForm(project, draft_data)
        editing = request.POST.get("question_id", "")
        if form.is_valid():
            stored = next((q for q in questions if str(q.pk) == editing), None)
            draft = form.apply_to(Question(pk=stored.pk if stored else None))
            questions = [draft if q is stored else q for q in questions]
            if stored is None:
                questions.append(draft)
        else:
            problem = "The question being edited has errors; the preview shows the saved one."
    context = {
        "project": project,
        "preview_problem": problem,
        **_preview_context(project, questions),
    }
    return render(request, "annotation/manage/project.html#preview", context)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def question_add(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    if request.method == "GET":
        return _questions_fragment(request, project)
    form = QuestionForm(project, request.POST, auto_id=NEW_QUESTION_IDS)
    if not form.is_valid():
        return _questions_fragment(request, project, question_form=form, question_error=True)
    try:
        projects.add_question(form.apply_to(Question()))
    except ValidationError as error:
        form.add_error(None, error)
        return _questions_fragment(request, project, question_form=form, question_error=True)
    return _questions_fragment(request, project)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def question_edit(request: HtmxHttpRequest, slug: str, question_id: int) -> HttpResponse:
    """GET: the question's row as an edit form; POST: save it."""
    project = _project(slug)
    question = _question(project, question_id)
    ids = f"q{question.pk}_%s"
    if request.method == "GET":
        form = QuestionForm(project, initial=QuestionForm.initial_for(question), auto_id=ids)
        return _questions_fragment(request, project, editing=question, editing_form=form)
    form = QuestionForm(project, request.POST, auto_id=ids)
    if form.is_valid():
        try:
            projects.update_question(question, form.changes())
        except ValidationError as error:
            form.add_error(None, error)
        else:
            return _questions_fragment(request, project)
    question.refresh_from_db()
    return _questions_fragment(
        request, project, editing=question, editing_form=form, editing_errors=True
    )


@role_required(Role.ADMIN)
@require_POST
def question_remove(request: HtmxHttpRequest, slug: str, question_id: int) -> HttpResponse:
    project = _project(slug)
    question = _question(project, question_id)
    try:
        projects.remove_question(question)
    except ValidationError as error:
        return _questions_fragment(request, project, question_error=error_text(error))
    return _questions_fragment(request, project)


@role_required(Role.ADMIN)
@require_POST
def question_move(request: HtmxHttpRequest, slug: str, question_id: int) -> HttpResponse:
    project = _project(slug)
    question = _question(project, question_id)
    offset = {"up": -1, "down": 1}.get(request.POST.get("direction", ""))
    if offset is None:
        return _questions_fragment(request, project, question_error="Move a question up or down.")
    projects.move_question(question, offset)
    return _questions_fragment(request, project)


# Prompts and uploads


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def upload(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    form = UploadForm(posted_data(request), request.FILES if request.method == "POST" else None)
    report = None
    if request.method == "POST" and form.is_valid():
        file = form.cleaned_data["file"]
        report = imports.import_prompts(
            project, file, filename=file.name or "", created_by=signed_in_admin(request)
        )
    context = {
        "project": project,
        "form": form,
        "report": report,
        "imported": Prompt.objects.filter(pk__in=report.prompt_ids[:20]) if report else None,
        "max_errors": imports.MAX_ERRORS_KEPT,
    }
    failed = bool(form.errors) or (report is not None and not report.ok)
    return render(
        request, "annotation/manage/upload.html", context, status=INVALID if failed else 200
    )


@role_required(Role.ADMIN)
@require_GET
def prompt_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    prompts: QuerySet[Prompt] = (
        Prompt.objects.filter(project=project)
        .annotate(
            item_count=Count("items", distinct=True),
            response_count=Count("responses", distinct=True),
        )
        .order_by("-id")
    )
    page = Paginator(prompts, 50).get_page(request.GET.get("page"))
    return render(request, "annotation/manage/prompts.html", {"project": project, "page": page})


# Members


def _members_page(
    request: HtmxHttpRequest, project: Project, form: AddMemberForm, **extra: Any
) -> HttpResponse:
    members = (
        Membership.objects.filter(project=project)
        .select_related("user")
        .annotate(
            label_count=Count(
                "user__labels",
                filter=Q(user__labels__item__project=project, user__labels__undone_at__isnull=True),
            )
        )
        .order_by("user__username")
    )
    candidates = (
        User.objects.filter(is_active=True)
        .filter(Q(role__in=projects.ANNOTATING_ROLES) | Q(is_superuser=True))
        .exclude(memberships__project=project)
        .order_by("username")
    )
    template = "annotation/manage/members.html" + ("#members" if request.htmx else "")
    context = {
        "project": project,
        "form": form,
        "members": members,
        "candidates": candidates,
        **extra,
    }
    status = INVALID if form.errors or extra.get("member_error") else 200
    return render(request, template, context, status=status)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def members(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project(slug)
    form = AddMemberForm(posted_data(request))
    if request.method == "POST" and form.is_valid():
        try:
            membership = projects.add_member(project, form.cleaned_data["username"])
        except ValidationError as error:
            form.add_error("username", error)
        else:
            form = AddMemberForm()
            return _members_page(request, project, form, added=membership.user)
    return _members_page(request, project, form)


@role_required(Role.ADMIN)
@require_POST
def member_remove(request: HtmxHttpRequest, slug: str, membership_id: int) -> HttpResponseBase:
    project = _project(slug)
    membership = get_object_or_404(Membership, pk=membership_id, project=project)
    projects.remove_member(membership)
    if not request.htmx:
        messages.success(request, f"{membership.user.username} no longer annotates this project.")
        return redirect("annotation:manage-members", slug=project.slug)
    return _members_page(request, project, AddMemberForm(), removed=membership.user)
