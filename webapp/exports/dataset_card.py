"""The dataset card (README.md) of a snapshot: what each file holds and how it was collected."""

from __future__ import annotations

import json
from typing import Any

from webapp.annotation.models import Project
from webapp.exports.formats import DATASETS


def dataset_card(manifest: dict[str, Any], project: Project) -> str:
    lines = [
        f"# {project.name}: export snapshot {manifest['snapshot_id']}",
        "",
        f"Created by {manifest['created_by'] or 'the command line'} at {manifest['created_at']}, "
        f"completed at {manifest['completed_at']}; code version {manifest['code_version']}, "
        f"schema version {manifest['schema_version']}. `manifest.json` lists every file with "
        "its row count and SHA-256.",
        "",
        "## Collection",
        "",
        f"Task: {project.get_task_type_display()}. Each item was answered by up to "
        f"{project.overlap} annotator(s); gold items (answers known in advance) made up "
        f"{project.gold_share:.0%} of what annotators were served. Questions asked:",
        "",
    ]
    lines += [
        f"- `{q.key}` ({q.get_kind_display()}): {q.text} {_scale(q.config)}".rstrip()
        for q in project.questions.all()
    ]
    lines += [
        "",
        "Annotator ids are pseudonyms drawn for this snapshot alone: they link one annotator's "
        "rows within the snapshot and cannot be traced back or matched across snapshots.",
        "",
        "## Selection",
        "",
        "Filters: " + _pairs(manifest["filters"]),
        "",
        "Options: " + _pairs(manifest["options"]),
        "",
        f"Split: by a hash of the prompt with seed {manifest['seed']}, "
        f"{manifest['test_share']:.0%} of prompts in `test`; all rows of a prompt share a split.",
        "",
        "Counts: " + (_pairs(manifest["counts"]) or "none"),
        "",
        "## Files",
        "",
    ]
    for name in dict.fromkeys(f["dataset"] for f in manifest["files"]):
        dataset = DATASETS[name]
        lines += [f"### {name}", "", dataset.description, ""]
        lines += [f"- `{field}`: {meaning}" for field, meaning in dataset.fields]
        if name.startswith("likert"):
            attributes = ", ".join(f"`{a}` {s}" for a, s in manifest["likert_attributes"].items())
            lines.append(f"- one column per attribute: {attributes} (scale [min, max])")
        lines.append("")
        lines += [
            f"- `{f['name']}`: {f['rows']} rows" for f in manifest["files"] if f["dataset"] == name
        ]
        lines.append("")
    return "\n".join(lines)


def _scale(config: dict[str, Any]) -> str:
    return f"(scale {config['min']}..{config['max']})" if "min" in config else ""


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
