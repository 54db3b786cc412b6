"""The rows of each data set, from labels given as plain dicts: no database here.

The input is a stream of `LabelFact`s ordered by item (source.py reads them); each builder
takes one item's facts at a time, so memory holds one item, never the whole export. Policies
(README, "For researchers"):

- pairs: a strict preference gives (chosen, rejected, margin = |strength|). Ties and "both bad"
  give no pair; they are counted in the manifest. With include_ties a tie becomes a margin-0 row
  in the order shown (left, right); "both bad" never does: it states no preference.
- rankings -> pairs: `all` (every C(K, 2) pair), `adjacent` (1st>2nd, 2nd>3rd, ...),
  `best_vs_rest` (1st > each other).
- Likert aggregated: each attribute's mean over the annotators who rated the response.
- SFT: every rewrite, and every response whose mean Likert score, scaled to [0, 1] per attribute
  and averaged over attributes, reaches sft_min_score (1.0: the top of every scale).
- agreement of an item on a question: the share of its labels that give the most common answer
  (preference: outcome and winner; Likert: the score; ranking: the order); undefined with fewer
  than two labels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby, pairwise
from typing import Any, TypedDict

from webapp.annotation.questions import QuestionKind

Row = dict[str, Any]


class LabelFact(TypedDict):
    item_id: int
    prompt: str
    prompt_digest: str  # sha256 of the prompt text: the key of the split
    responses: list[tuple[int, str]]  # (response id, text) in the item's stored order
    annotator_id: int
    question: str
    kind: str
    value: dict[str, Any]


@dataclass(frozen=True)
class Scale:
    low: int
    high: int


@dataclass
class Policy:
    """The snapshot's choices the builders follow, and the counts they report."""

    salt: str
    seed: int = 0
    test_share: float = 0.1
    include_ties: bool = False
    ranking_pairs: str = "all"
    sft_min_score: float = 1.0
    min_agreement: float | None = None
    likert_scales: dict[str, Scale] = field(default_factory=dict)  # attribute -> scale
    counts: Counter[str] = field(default_factory=Counter)  # of the data set being written


def pseudonym(salt: str, annotator_id: int) -> str:
    """A stable name for an annotator within one snapshot; without the salt (never exported)
    it cannot be traced back, and two snapshots give the same person different names."""
    digest = hmac.new(salt.encode(), str(annotator_id).encode(), hashlib.sha256).hexdigest()
    return f"annotator-{digest[:12]}"


@lru_cache(maxsize=65_536)  # a prompt's labels come together: most calls repeat the last one
def split_of(prompt_digest: str, seed: int, test_share: float) -> str:
    """ "train" or "test", from a hash of the prompt and the seed: every row of a prompt lands in
    the same split, and the same seed gives the same split in every snapshot."""
    digest = hashlib.sha256(f"{seed}:{prompt_digest}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if position < test_share else "train"


def hh_transcript(prompt: str, response: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {response}"


def by_item(facts: Iterable[LabelFact]) -> Iterator[list[LabelFact]]:
    for _, group in groupby(facts, key=lambda fact: fact["item_id"]):
        yield list(group)


def answer_key(kind: str, value: Mapping[str, Any]) -> str | None:
    """What two labels must share to agree; None for kinds without agreement."""
    if kind == QuestionKind.PREFERENCE:
        return f"{value.get('outcome')}:{value.get('winner')}"
    if kind == QuestionKind.LIKERT:
        return str(value.get("score"))
    if kind == QuestionKind.RANKING:
        return json.dumps(value.get("order"))
    return None


def agreement(kind: str, values: Sequence[Mapping[str, Any]]) -> float | None:
    keys = [answer_key(kind, value) for value in values]
    if len(keys) < 2 or keys[0] is None:
        return None
    return Counter(keys).most_common(1)[0][1] / len(keys)


def agreeing(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[list[LabelFact]]:
    """The items whose agreement reaches min_agreement on every question that has one; an item
    with a single label on a question has no measurable agreement and is left out too."""
    for facts in items:
        if policy.min_agreement is None or _agrees(facts, policy.min_agreement):
            yield facts
        else:
            policy.counts["items_below_min_agreement"] += 1


def is_blank(text: str) -> bool:
    """A response with no text to judge or train on (a model that ended at once)."""
    return not text.strip()


def text_key(text: str) -> str:
    """What two responses are compared by: the text less its surrounding white space, as
    `is_blank` reads it. Coarser than the exact equality that `rlhf_core.records` refuses in
    a pair (chosen == rejected) or a ranking (one text twice), so texts with different keys
    can never be exported as one; and white space at either end is nothing an annotator can
    see or judge, so a preference between two texts that differ only there states nothing."""
    return text.strip()


def repeats_text(texts: Iterable[str]) -> bool:
    """Whether two of the texts are the same answer (`text_key`)."""
    keys = [text_key(text) for text in texts]
    return len(set(keys)) < len(keys)


def with_text(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[list[LabelFact]]:
    """Each item's labels, less those on an item that shows a blank response: people may
    judge an empty answer (it should lose), but no data set row can hold one (every trainer
    refuses a response without text). A rewrite of it is kept: its row is the new text. The
    labels left out are counted in the manifest."""
    for facts in items:
        if not any(is_blank(text) for _, text in facts[0]["responses"]):
            yield facts
            continue
        kept = [fact for fact in facts if fact["kind"] == QuestionKind.REWRITE]
        policy.counts["labels_on_blank_responses_excluded"] += len(facts) - len(kept)
        if kept:
            yield kept


def with_distinct_texts(
    items: Iterable[list[LabelFact]], policy: Policy
) -> Iterator[list[LabelFact]]:
    """Each item's labels, less the strict preferences and rankings on an item that shows the
    same answer twice (`repeats_text`; blind pairs made before the generate stage compared
    texts): such a label would be a row with chosen == rejected, or a ranking that lists one
    text twice, which every trainer refuses. Ties, "both bad", ratings and rewrites are kept:
    they order nothing. The labels left out are counted in the manifest."""
    for facts in items:
        if not repeats_text(text for _, text in facts[0]["responses"]):
            yield facts
            continue
        kept = [fact for fact in facts if not _orders_responses(fact)]
        policy.counts["labels_on_identical_responses_excluded"] += len(facts) - len(kept)
        if kept:
            yield kept


def _orders_responses(fact: LabelFact) -> bool:
    if fact["kind"] == QuestionKind.RANKING:
        return True
    return fact["kind"] == QuestionKind.PREFERENCE and fact["value"].get("outcome") == "win"


def _agrees(facts: list[LabelFact], minimum: float) -> bool:
    by_question: dict[str, list[LabelFact]] = {}
    for fact in facts:
        by_question.setdefault(fact["question"], []).append(fact)
    for group in by_question.values():
        kind = group[0]["kind"]
        if answer_key(kind, group[0]["value"]) is None:
            continue
        share = agreement(kind, [fact["value"] for fact in group])
        if share is None or share < minimum:
            return False
    return True


def _split(fact: LabelFact, policy: Policy) -> str:
    return split_of(fact["prompt_digest"], policy.seed, policy.test_share)


def pair_rows(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[tuple[str, Row]]:
    for facts in items:
        for fact in facts:
            if fact["kind"] == QuestionKind.PREFERENCE:
                row = preference_row(fact, policy)
                if row is not None:
                    yield _split(fact, policy), row


def preference_row(fact: LabelFact, policy: Policy) -> Row | None:
    value, texts = fact["value"], dict(fact["responses"])
    outcome = value.get("outcome")
    if outcome == "win":
        winner = value["winner"]
        (loser,) = [rid for rid, _ in fact["responses"] if rid != winner]
        margin = float(abs(value.get("strength") or 1))
        policy.counts["strict_preferences"] += 1
        return _pair(fact["prompt"], texts[winner], texts[loser], margin)
    if outcome == "tie" and policy.include_ties:
        policy.counts["ties_included"] += 1
        (left, right) = (text for _, text in fact["responses"])
        return _pair(fact["prompt"], left, right, 0.0)
    policy.counts["ties_excluded" if outcome == "tie" else "both_bad_excluded"] += 1
    return None


def _pair(prompt: str, chosen: str, rejected: str, margin: float) -> Row:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}


def hh_rows(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[tuple[str, Row]]:
    for split, row in pair_rows(items, policy):
        yield (
            split,
            {
                "chosen": hh_transcript(row["prompt"], row["chosen"]),
                "rejected": hh_transcript(row["prompt"], row["rejected"]),
            },
        )


def ranked_texts(fact: LabelFact) -> list[str]:
    texts = dict(fact["responses"])
    return [texts[response_id] for response_id in fact["value"]["order"]]


def ranking_rows(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[tuple[str, Row]]:
    for facts in items:
        for fact in facts:
            if fact["kind"] == QuestionKind.RANKING:
                yield (
                    _split(fact, policy),
                    {
                        "prompt": fact["prompt"],
                        "responses": ranked_texts(fact),
                        "annotator_id": pseudonym(policy.salt, fact["annotator_id"]),
                    },
                )


def ranking_to_pairs(ranked: Sequence[str], policy: str) -> list[tuple[str, str]]:
    """(better, worse) pairs of a ranking, best first, by `policy`."""
    if policy == "all":
        return [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1 :]]
    if policy == "adjacent":
        return list(pairwise(ranked))
    if policy == "best_vs_rest":
        return [(ranked[0], other) for other in ranked[1:]]
    raise ValueError(f"unknown ranking pair policy {policy!r}")


def ranking_pair_rows(
    items: Iterable[list[LabelFact]], policy: Policy
) -> Iterator[tuple[str, Row]]:
    for facts in items:
        for fact in facts:
            if fact["kind"] == QuestionKind.RANKING:
                split = _split(fact, policy)
                for chosen, rejected in ranking_to_pairs(ranked_texts(fact), policy.ranking_pairs):
                    yield split, {"prompt": fact["prompt"], "chosen": chosen, "rejected": rejected}


def _likert_by_annotator(facts: list[LabelFact]) -> dict[int, dict[str, int]]:
    scores: dict[int, dict[str, int]] = {}
    for fact in facts:
        if fact["kind"] == QuestionKind.LIKERT:
            scores.setdefault(fact["annotator_id"], {})[fact["question"]] = fact["value"]["score"]
    return scores


def likert_rows(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[tuple[str, Row]]:
    """One row per (item, annotator); an attribute the annotator left unanswered is null."""
    for facts in items:
        first = facts[0]
        response = first["responses"][0][1]
        for annotator, scores in _likert_by_annotator(facts).items():
            row: Row = {
                "prompt": first["prompt"],
                "response": response,
                "annotator_id": pseudonym(policy.salt, annotator),
            }
            row |= {name: scores.get(name) for name in policy.likert_scales}
            yield _split(first, policy), row


def likert_means(facts: list[LabelFact], attributes: Iterable[str]) -> tuple[dict[str, Any], int]:
    """Each attribute's mean over the annotators who rated it (None if nobody did), and how
    many annotators rated the response at all."""
    scores = _likert_by_annotator(facts)
    means: dict[str, Any] = {}
    for name in attributes:
        given = [s[name] for s in scores.values() if name in s]
        means[name] = sum(given) / len(given) if given else None
    return means, len(scores)


def likert_aggregated_rows(
    items: Iterable[list[LabelFact]], policy: Policy
) -> Iterator[tuple[str, Row]]:
    for facts in items:
        means, raters = likert_means(facts, policy.likert_scales)
        if raters:
            first = facts[0]
            row: Row = {"prompt": first["prompt"], "response": first["responses"][0][1]}
            yield _split(first, policy), row | means | {"num_annotators": raters}


def top_rated(
    means: Mapping[str, float | None], scales: Mapping[str, Scale], minimum: float
) -> bool:
    """Whether the mean score, scaled to [0, 1] per attribute and averaged, reaches `minimum`."""
    scaled = [
        (mean - scales[name].low) / (scales[name].high - scales[name].low)
        for name, mean in means.items()
        if mean is not None
    ]
    # A float mean of top scores is exactly 1.0; the tolerance only absorbs rounding elsewhere.
    return bool(scaled) and sum(scaled) / len(scaled) >= minimum - 1e-9


def sft_rows(items: Iterable[list[LabelFact]], policy: Policy) -> Iterator[tuple[str, Row]]:
    for facts in items:
        first = facts[0]
        split = _split(first, policy)
        for fact in facts:
            if fact["kind"] == QuestionKind.REWRITE:
                policy.counts["rewrites"] += 1
                yield split, _demo(fact["prompt"], fact["value"]["text"], "rewrite")
        means, raters = likert_means(facts, policy.likert_scales)
        if raters and top_rated(means, policy.likert_scales, policy.sft_min_score):
            policy.counts["top_rated"] += 1
            yield split, _demo(first["prompt"], first["responses"][0][1], "top_rated")


def _demo(prompt: str, completion: str, source: str) -> Row:
    return {"prompt": prompt, "completion": completion, "source": source}


def event_row(event: Mapping[str, Any], salt: str) -> Row:
    """A row of the event log from an annotation event or a label (source.py gives both)."""
    value = event.get("value")
    return {
        "at": event["at"],
        "event": event["event"],
        "annotator_id": pseudonym(salt, event["annotator_id"]),
        "item_id": event.get("item_id"),
        "question": event.get("question"),
        "value": None if value is None else json.dumps(value, ensure_ascii=False),
        "active_ms": event.get("active_ms"),
        "details": json.dumps(event.get("details") or {}, ensure_ascii=False),
        "undone_at": event.get("undone_at"),
    }


BUILDERS = {
    "pairs": pair_rows,
    "hh": hh_rows,
    "rankings": ranking_rows,
    "ranking_pairs": ranking_pair_rows,
    "likert": likert_rows,
    "likert_aggregated": likert_aggregated_rows,
    "sft": sft_rows,
}
