"""The quality pages' figures, read from the database and computed by `quality.py`.

Only live answers count (`undone_at IS NULL`). Counts are aggregated in SQL. Figures that need
every answer of an item (agreement, agreement with the consensus) read the answers of a project's
newest `AGREEMENT_ITEM_CAP` items that two or more annotators answered, never the whole project;
`LabelSample.capped` says when older items were left out, and the pages say so. Gold items are
left out of agreement: every annotator answers them, and they measure accuracy instead.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, Prefetch, Q, QuerySet

from webapp.accounts.models import User
from webapp.annotation.models import (
    Flag,
    FlagStatus,
    GoldAnswer,
    Item,
    ItemResponse,
    Label,
    Membership,
    Project,
    Question,
    Skip,
    Submission,
)
from webapp.annotation.quality import (
    Agreement,
    GoldAccuracy,
    GoldCheck,
    QuestionConsensus,
    agreement_with_others,
    check_gold,
    code_units,
    gold_accuracy,
    majority,
    per_hour,
    question_agreement,
    question_consensus,
    wall_seconds,
)
from webapp.annotation.questions import QuestionKind

AGREEMENT_ITEM_CAP = 2000
OVERVIEW_ITEM_CAP = 500  # the overview computes agreement for every project at once
CONSENSUS_PAGE_SIZE = 25


def answered_items(project: Project, minimum: int = 1) -> QuerySet[Item]:
    """The project's non-gold items with at least `minimum` live submissions, newest first
    (from the count the labelling services keep on each item)."""
    return Item.objects.filter(
        project=project, is_gold=False, live_submissions__gte=minimum
    ).order_by("-id")


def response_orders(item_ids: Iterable[int]) -> dict[int, list[int]]:
    """item -> its response ids in their stored order (left, right for a pair)."""
    orders: dict[int, list[int]] = defaultdict(list)
    rows = ItemResponse.objects.filter(item_id__in=list(item_ids)).order_by("item_id", "position")
    for item_id, response_id in rows.values_list("item_id", "response_id"):
        orders[item_id].append(response_id)
    return dict(orders)


@dataclass(frozen=True)
class LabelSample:
    """Live answers of some items: question -> item -> annotator -> Label.value."""

    values: dict[int, dict[int, dict[int, Any]]]
    response_ids: dict[int, list[int]]
    items: int
    capped: bool


def label_sample(project: Project, cap: int = AGREEMENT_ITEM_CAP) -> LabelSample:
    ids = list(answered_items(project, minimum=2).values_list("id", flat=True)[: cap + 1])
    capped, ids = len(ids) > cap, ids[:cap]
    values: dict[int, dict[int, dict[int, Any]]] = defaultdict(lambda: defaultdict(dict))
    rows = Label.objects.filter(item_id__in=ids, undone_at__isnull=True)
    for item, who, question, value in rows.values_list(
        "item_id", "annotator_id", "question_id", "value"
    ):
        values[question][item][who] = value
    return LabelSample(values, response_orders(ids), len(ids), capped)


def project_agreement(
    questions: Sequence[Question], sample: LabelSample
) -> list[tuple[Question, list[Agreement]]]:
    """Agreement rows per graded question (free text and rewrites have none)."""
    result = []
    for question in questions:
        rows = question_agreement(
            question.key,
            question.kind,
            question.config,
            sample.values.get(question.pk, {}),
            sample.response_ids,
        )
        if rows:
            result.append((question, rows))
    return result


# --- gold ---------------------------------------------------------------------------------------


def gold_by_annotator(project: Project | None = None) -> dict[int, GoldAccuracy]:
    """Each annotator's accuracy on gold items (of one project, or of all)."""
    return _gold_by(project, by_question=False)


def gold_by_question(project: Project) -> dict[int, GoldAccuracy]:
    """Every annotator's answers to each question's gold, pooled: which question goes wrong."""
    return _gold_by(project, by_question=True)


def _gold_by(project: Project | None, *, by_question: bool) -> dict[int, GoldAccuracy]:
    answers = (
        GoldAnswer.objects.all()
        if project is None
        else GoldAnswer.objects.filter(item__project=project)
    )
    gold = {
        (item, question): (kind, value, tolerance)
        for item, question, kind, value, tolerance in answers.values_list(
            "item_id", "question_id", "question__kind", "value", "tolerance"
        )
    }
    checks: dict[int, list[GoldCheck]] = defaultdict(list)
    labels = Label.objects.filter(undone_at__isnull=True, item__in=answers.values("item_id"))
    for item, question, who, value in labels.values_list(
        "item_id", "question_id", "annotator_id", "value"
    ):
        if (item, question) in gold:
            kind, gold_value, tolerance = gold[(item, question)]
            check = check_gold(kind, value, gold_value, tolerance)
            if check is not None:
                checks[question if by_question else who].append(check)
    return {key: gold_accuracy(marks) for key, marks in checks.items()}


def pooled(accuracies: Iterable[GoldAccuracy]) -> GoldAccuracy:
    return sum(accuracies, GoldAccuracy())


# --- overview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectSummary:
    project: Project
    items: int
    complete: int
    labels: int
    open_flags: int
    gold: GoldAccuracy
    agreements: list[tuple[Question, list[Agreement]]]
    sample_items: int
    capped: bool


def project_summaries(projects: Sequence[Project]) -> list[ProjectSummary]:
    ids = [project.pk for project in projects]
    items: dict[int, tuple[int, int]] = {
        row["project"]: (row["n"], row["complete"])
        for row in Item.objects.filter(project__in=ids)
        .values("project")
        .annotate(n=Count("id"), complete=Count("id", filter=Q(is_complete=True)))
    }
    labels = dict(
        Label.objects.filter(item__project__in=ids, undone_at__isnull=True)
        .values("item__project")
        .annotate(n=Count("id"))
        .values_list("item__project", "n")
    )
    flags = dict(
        Flag.objects.filter(item__project__in=ids, status=FlagStatus.OPEN)
        .values("item__project")
        .annotate(n=Count("id"))
        .values_list("item__project", "n")
    )
    questions: dict[int, list[Question]] = defaultdict(list)
    for question in Question.objects.filter(project__in=ids):
        questions[question.project_id].append(question)
    summaries = []
    for project in projects:
        sample = label_sample(project, OVERVIEW_ITEM_CAP)
        item_count, complete = items.get(project.pk, (0, 0))
        summaries.append(
            ProjectSummary(
                project=project,
                items=item_count,
                complete=complete,
                labels=labels.get(project.pk, 0),
                open_flags=flags.get(project.pk, 0),
                gold=pooled(gold_by_annotator(project).values()),
                agreements=project_agreement(questions[project.pk], sample),
                sample_items=sample.items,
                capped=sample.capped,
            )
        )
    return summaries


# --- project page -------------------------------------------------------------------------------


def likert_distribution(question: Question) -> list[tuple[int, int]]:
    """(score, live answers) for every point of a Likert question's scale."""
    counts = dict(
        Label.objects.filter(question=question, undone_at__isnull=True)
        .values("value__score")
        .annotate(n=Count("id"))
        .values_list("value__score", "n")
    )
    low, high = question.config.get("min", 1), question.config.get("max", 5)
    return [(score, counts.get(score, 0)) for score in range(low, high + 1)]


@dataclass(frozen=True)
class ItemConsensus:
    item: Item
    answers: int
    questions: list[QuestionConsensus]


def consensus_page(
    project: Project, number: str | int | None, *, only: Sequence[int] | None = None
) -> tuple[Page[Any], list[ItemConsensus]]:
    """One page of answered items, newest first (or the items `only` names, in that order),
    with each question's consensus."""
    page: Page[Any]
    if only is None:
        answered = answered_items(project).select_related("prompt")
        page = Paginator(answered, CONSENSUS_PAGE_SIZE).get_page(number)
        items = list(page.object_list)
    else:
        page = Paginator(list(only), CONSENSUS_PAGE_SIZE).get_page(number)
        found = Item.objects.filter(project=project).select_related("prompt")
        by_id = found.in_bulk(list(page.object_list))
        items = [by_id[pk] for pk in page.object_list if pk in by_id]
    orders = response_orders(item.pk for item in items)
    values: dict[tuple[int, int], list[Any]] = defaultdict(list)
    rows = Label.objects.filter(item__in=items, undone_at__isnull=True).order_by("id")
    for item_id, question_id, value in rows.values_list("item_id", "question_id", "value"):
        values[(item_id, question_id)].append(value)
    graded = [q for q in project.questions.all() if q.kind in _CONSENSUS_KINDS]
    result = [
        ItemConsensus(
            item=item,
            answers=item.live_submissions,
            questions=[
                question_consensus(
                    q.key, q.kind, q.config, values[(item.pk, q.pk)], orders.get(item.pk, [])
                )
                for q in graded
            ],
        )
        for item in items
    ]
    return page, result


def disputed_items(questions: Sequence[Question], sample: LabelSample) -> list[int]:
    """The sample's items on which annotators disagree about some graded question, the most
    split first (by the smallest share of the majority answer), newest first among equals."""
    split: dict[int, float] = {}
    for question in questions:
        if question.kind not in _CONSENSUS_KINDS:
            continue
        units = code_units(question.kind, sample.values.get(question.pk, {}), sample.response_ids)
        for item, answers in units.items():
            top = majority(list(answers.values()))
            if top is not None and top.share < 1:
                split[item] = min(split.get(item, 1.0), top.share)
    return sorted(split, key=lambda item: (split[item], -item))


_CONSENSUS_KINDS = (
    QuestionKind.LIKERT,
    QuestionKind.PREFERENCE,
    QuestionKind.RANKING,
    QuestionKind.FLAGS,
)


# --- annotators ---------------------------------------------------------------------------------


@dataclass
class AnnotatorStats:
    user: User
    submissions: int = 0
    active_seconds: float = 0.0
    wall_seconds: float = 0.0
    median_active_seconds: float | None = None
    gold: GoldAccuracy = field(default_factory=GoldAccuracy)
    consensus: GoldAccuracy = field(default_factory=GoldAccuracy)
    skips: int = 0
    flags: int = 0
    undos: int = 0
    membership: Membership | None = None

    @property
    def per_active_hour(self) -> float | None:
        return per_hour(self.submissions, self.active_seconds)

    @property
    def per_wall_hour(self) -> float | None:
        return per_hour(self.submissions, self.wall_seconds)


SORT_KEYS: dict[str, Callable[[AnnotatorStats], Any]] = {
    "name": lambda s: s.user.username.lower(),
    "submissions": lambda s: s.submissions,
    "active_rate": lambda s: s.per_active_hour,
    "wall_rate": lambda s: s.per_wall_hour,
    "median_time": lambda s: s.median_active_seconds,
    "gold": lambda s: s.gold.accuracy,
    "consensus": lambda s: s.consensus.accuracy,
    "skips": lambda s: s.skips,
    "flags": lambda s: s.flags,
    "undos": lambda s: s.undos,
}


def sort_stats(stats: Sequence[AnnotatorStats], sort: str) -> tuple[list[AnnotatorStats], str]:
    """Sorted by `sort` (a SORT_KEYS name, "-" first for descending); unknown keys sort by
    name. Missing figures go last either way. Returns the rows and the key actually used."""
    descending, name = sort.startswith("-"), sort.lstrip("-")
    if name not in SORT_KEYS:
        descending, name = False, "name"
    key = SORT_KEYS[name]
    present = [s for s in stats if key(s) is not None]
    missing = [s for s in stats if key(s) is None]
    ordered = sorted(present, key=key, reverse=descending) + missing
    return ordered, ("-" if descending else "") + name


def annotator_stats(
    project: Project | None = None, since: datetime | None = None
) -> list[AnnotatorStats]:
    """Statistics of everyone who is a member of `project` (or of any project) or did something
    in it since `since`. Agreement with the consensus uses the newest multiply-answered items."""
    scope = Q() if project is None else Q(item__project=project)
    window = Q() if since is None else Q(submitted_at__gte=since)
    times: dict[int, list[tuple[datetime, datetime, int]]] = defaultdict(list)
    live = Submission.objects.filter(scope, window, undone_at__isnull=True)
    for who, served, submitted, active in live.values_list(
        "annotator_id", "served_at", "submitted_at", "active_ms"
    ).iterator(chunk_size=5000):
        times[who].append((served, submitted, active))
    counts = _action_counts(project, since)
    members = Membership.objects.all() if project is None else project.memberships.all()
    memberships = {m.user_id: m for m in members}
    ids = set(times) | set(memberships) | {who for c in counts.values() for who in c}
    users = User.objects.in_bulk(ids)
    gold, consensus = gold_by_annotator(project), _consensus_agreement(project)
    stats = []
    for who, user in users.items():
        rows = times.get(who, [])
        actives = [active for _, _, active in rows]
        stats.append(
            AnnotatorStats(
                user=user,
                submissions=len(rows),
                active_seconds=sum(actives) / 1000,
                wall_seconds=wall_seconds((served, submitted) for served, submitted, _ in rows),
                median_active_seconds=statistics.median(actives) / 1000 if actives else None,
                gold=gold.get(who, GoldAccuracy()),
                consensus=consensus.get(who, GoldAccuracy()),
                skips=counts["skips"].get(who, 0),
                flags=counts["flags"].get(who, 0),
                undos=counts["undos"].get(who, 0),
                membership=memberships.get(who) if project is not None else None,
            )
        )
    return stats


def _action_counts(project: Project | None, since: datetime | None) -> dict[str, dict[int, int]]:
    """Skips, flags and undos per annotator, counted in SQL."""
    scope = Q() if project is None else Q(item__project=project)
    created = Q() if since is None else Q(created_at__gte=since)
    undone = Q() if since is None else Q(undone_at__gte=since)
    counted: dict[str, QuerySet[Any]] = {
        "skips": Skip.objects.filter(scope, created),
        "flags": Flag.objects.filter(scope, created),
        "undos": Submission.objects.filter(scope, undone, undone_at__isnull=False),
    }
    return {
        name: dict(
            queryset.values("annotator").annotate(n=Count("id")).values_list("annotator", "n")
        )
        for name, queryset in counted.items()
    }


def _consensus_agreement(project: Project | None) -> dict[int, GoldAccuracy]:
    projects = [project] if project is not None else list(Project.objects.all())
    result: dict[int, GoldAccuracy] = defaultdict(GoldAccuracy)
    for each in projects:
        sample = label_sample(each, AGREEMENT_ITEM_CAP if project else OVERVIEW_ITEM_CAP)
        units = [
            code_units(q.kind, sample.values.get(q.pk, {}), sample.response_ids)
            for q in each.questions.all()
            if q.kind in _CONSENSUS_KINDS
        ]
        for who, accuracy in agreement_with_others(units).items():
            result[who] = result[who] + accuracy
    return dict(result)


# --- flags --------------------------------------------------------------------------------------


def flagged_items(status: str) -> QuerySet[Item]:
    """Items with flags in `status`, oldest first, with those flags and their responses."""
    return (
        Item.objects.filter(flags__status=status)
        .distinct()
        .select_related("prompt", "project")
        .prefetch_related(
            Prefetch(
                "flags",
                queryset=Flag.objects.filter(status=status)
                .select_related("annotator", "reviewed_by")
                .order_by("created_at", "id"),
                to_attr="shown_flags",
            ),
            Prefetch(
                "placements",
                queryset=ItemResponse.objects.select_related("response").order_by("position"),
                to_attr="shown_responses",
            ),
        )
        .order_by("id")
    )
