"""A project's quality figures for the API: the quality pages' own functions
(webapp/annotation/quality_reports.py), with annotators under their pseudonyms."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from webapp.annotation import quality_reports as reports
from webapp.annotation.models import Project
from webapp.annotation.quality import GoldAccuracy
from webapp.api.pseudonyms import pseudonyms


def accuracy(figure: GoldAccuracy) -> dict[str, Any]:
    return {
        "correct": figure.correct,
        "total": figure.total,
        "accuracy": figure.accuracy,
        "mean_tau": figure.mean_tau,
    }


def project_statistics(project: Project) -> dict[str, Any]:
    """Counts, pooled gold accuracy, gold accuracy per question and agreement per question, as
    the quality overview computes them (agreement over the newest answered items)."""
    (summary,) = reports.project_summaries([project])
    keys = dict(project.questions.values_list("id", "key"))
    by_question = reports.gold_by_question(project)
    return {
        "project": project.slug,
        "items": summary.items,
        "complete_items": summary.complete,
        "labels": summary.labels,
        "open_flags": summary.open_flags,
        "gold": accuracy(summary.gold),
        "gold_by_question": [
            {"question": keys[question_id], **accuracy(figure)}
            for question_id, figure in sorted(by_question.items())
            if question_id in keys
        ],
        "agreement": [
            {
                "question": question.key,
                "name": row.name,
                "level": row.level,
                "alpha": row.alpha,
                "pairwise": row.pairwise,
                "mean_tau": row.mean_tau,
                "items": row.items,
                "labels": row.labels,
            }
            for question, rows in summary.agreements
            for row in rows
        ],
        "agreement_items": summary.sample_items,
        "agreement_capped": summary.capped,
    }


def annotator_rows(project: Project, since: datetime | None) -> list[dict[str, Any]]:
    """Each annotator's figures in the project, busiest first (ties by pseudonym, so pages are
    stable)."""
    stats = reports.annotator_stats(project, since)
    names = pseudonyms(project.pk, [each.user.pk for each in stats])
    rows = [
        {
            "annotator": names[each.user.pk],
            "submissions": each.submissions,
            "active_seconds": each.active_seconds,
            "wall_seconds": each.wall_seconds,
            "median_active_seconds": each.median_active_seconds,
            "per_active_hour": each.per_active_hour,
            "per_wall_hour": each.per_wall_hour,
            "gold": accuracy(each.gold),
            "agreement_with_others": accuracy(each.consensus),
            "skips": each.skips,
            "flags": each.flags,
            "undos": each.undos,
            "paused": each.membership is not None and each.membership.paused,
        }
        for each in stats
    ]
    return sorted(rows, key=lambda row: (-row["submissions"], row["annotator"]))
