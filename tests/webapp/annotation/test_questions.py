"""questions.py: what a question's config and an answer may be."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp.annotation.questions import (
    DEFAULT_FLAGS,
    KINDS_FOR_TASK,
    MAX_TEXT,
    QuestionKind,
    TaskType,
    clean_answer,
    clean_config,
    default_questions,
)

LIKERT = clean_config("likert", {})
PREFERENCE = clean_config("preference", {})
FLAGS = clean_config("flags", {})
PAIR = [17, 12]  # left, right
SET = [5, 6, 7]


def answer(kind: str, raw: dict[str, Any], config: dict[str, Any] | None = None) -> Any:
    config = clean_config(kind, {}) if config is None else config
    ids = PAIR if kind == "preference" else SET
    return clean_answer(kind, config, raw, response_ids=ids, original_text="The original.")


def refused(kind: str, raw: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    with pytest.raises(ValidationError) as error:
        answer(kind, raw, config)
    return " ".join(error.value.messages)


# --- clean_config -------------------------------------------------------------------------------


def test_configs_get_their_defaults() -> None:
    assert clean_config("likert", None) == {"min": 1, "max": 5, "labels": {}}
    assert clean_config("preference", {}) == {
        "allow_tie": True,
        "allow_both_bad": True,
        "max_strength": 3,
    }
    assert clean_config("flags", {}) == {"options": DEFAULT_FLAGS}
    for kind in ("ranking", "rewrite", "text"):
        assert clean_config(kind, {"anything": 1}) == {}


def test_a_likert_config_keeps_its_scale_and_labels_keyed_by_text() -> None:
    config = clean_config("likert", {"min": 0, "max": 10, "labels": {0: "awful", "10": "perfect"}})
    assert config == {"min": 0, "max": 10, "labels": {"0": "awful", "10": "perfect"}}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"min": "1"}, "min must be an integer"),
        ({"max": True}, "max must be an integer"),
        ({"max": 4.5}, "max must be an integer"),
        ({"min": 3, "max": 3}, "0 <= min < max <= 100"),
        ({"min": 5, "max": 1}, "0 <= min < max <= 100"),
        ({"min": -1, "max": 5}, "0 <= min < max <= 100"),
        ({"min": 90, "max": 101}, "0 <= min < max <= 100"),
        ({"min": 0, "max": 21}, "at most 21 points"),
        ({"labels": ["bad", "good"]}, "Likert labels map scale points to text"),
        ({"labels": {"6": "beyond"}}, "Likert labels map scale points to text"),
        ({"labels": {"one": "bad"}}, "Likert labels map scale points to text"),
        ({"labels": {"1": 1}}, "Likert labels map scale points to text"),
    ],
)
def test_a_bad_likert_config_is_refused(config: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        clean_config("likert", config)


def test_a_preference_config_reads_its_switches_and_strength() -> None:
    config = clean_config("preference", {"allow_tie": 0, "allow_both_bad": "", "max_strength": 0})
    assert config == {"allow_tie": False, "allow_both_bad": False, "max_strength": 0}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"max_strength": 6}, "between 0 and 5"),
        ({"max_strength": -1}, "between 0 and 5"),
        ({"max_strength": "3"}, "max_strength must be an integer"),
        ({"max_strength": False}, "max_strength must be an integer"),
    ],
)
def test_a_bad_preference_config_is_refused(config: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        clean_config("preference", config)


def test_flag_options_are_trimmed() -> None:
    assert clean_config("flags", {"options": [" unsafe ", "spam"]}) == {
        "options": ["unsafe", "spam"]
    }


@pytest.mark.parametrize(
    "options", ["unsafe", [], ["unsafe", ""], ["  "], ["spam", "spam "], ["ok", 3], None]
)
def test_bad_flag_options_are_refused(options: object) -> None:
    with pytest.raises(ValidationError, match="distinct, non-empty option names"):
        clean_config("flags", {"options": options})


def test_an_unknown_kind_has_no_config() -> None:
    with pytest.raises(ValidationError, match="Unknown question kind"):
        clean_config("essay", {})


def test_every_default_question_has_a_clean_config_of_a_fitting_kind() -> None:
    for task in TaskType.values:
        for spec in default_questions(task):
            assert spec["kind"] in KINDS_FOR_TASK[task]
            assert clean_config(spec["kind"], spec["config"]) == clean_config(
                spec["kind"], clean_config(spec["kind"], spec["config"])
            )
    assert default_questions(TaskType.PROMPT_WRITING) == []


# --- clean_answer: Likert -----------------------------------------------------------------------


def test_a_likert_score_is_stored_as_an_integer() -> None:
    assert answer("likert", {"score": 4}) == {"score": 4}
    assert answer("likert", {"score": " 5 "}) == {"score": 5}
    assert answer("likert", {"score": "1"}) == {"score": 1}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({}, "score must be a whole number"),
        ({"score": ""}, "score must be a whole number"),
        ({"score": "4.5"}, "score must be a whole number"),
        ({"score": 4.0}, "score must be a whole number"),
        ({"score": True}, "score must be a whole number"),
        ({"score": [4]}, "score must be a whole number"),
        ({"score": 0}, "between 1 and 5"),
        ({"score": "6"}, "between 1 and 5"),
        ({"score": -3}, "between 1 and 5"),
    ],
)
def test_a_bad_likert_score_is_refused(raw: dict[str, Any], says: str) -> None:
    assert says in refused("likert", raw)


# --- clean_answer: preference -------------------------------------------------------------------


def test_a_form_choice_becomes_the_winning_response_id() -> None:
    assert answer("preference", {"choice": "left", "strength": "2"}) == {
        "outcome": "win",
        "winner": 17,
        "strength": 2,
    }
    assert answer("preference", {"choice": "right", "strength": 3})["winner"] == 12


def test_ties_and_both_bad_carry_no_winner_nor_strength() -> None:
    tie = {"outcome": "tie", "winner": None, "strength": 0}
    assert answer("preference", {"choice": "tie", "strength": 3}) == tie
    assert answer("preference", {"choice": "both_bad"}) == {**tie, "outcome": "both_bad"}


def test_without_a_strength_grade_a_win_has_strength_one() -> None:
    config = clean_config("preference", {"max_strength": 0})
    assert answer("preference", {"choice": "left"}, config)["strength"] == 1
    assert answer("preference", {"choice": "left", "strength": 3}, config)["strength"] == 1


def test_the_stored_shape_is_accepted_from_an_api_or_a_gold_upload() -> None:
    stored = {"outcome": "win", "winner": 12, "strength": 1}
    assert answer("preference", stored) == stored
    assert answer("preference", {"outcome": "win", "winner": "17", "strength": 2})["winner"] == 17
    tie = {"outcome": "tie", "winner": None, "strength": 0}
    assert answer("preference", tie) == tie


@pytest.mark.parametrize(
    ("raw", "config", "says"),
    [
        ({"choice": "left"}, {}, "strength must be a whole number"),
        ({"choice": "left", "strength": 0}, {}, "between 1 and 3"),
        ({"choice": "right", "strength": 4}, {}, "between 1 and 3"),
        ({"choice": "middle"}, {}, "one of: left, right, tie, both_bad"),
        ({}, {}, "one of: left, right, tie, both_bad"),
        ({"choice": "tie"}, {"allow_tie": False}, "one of: left, right, both_bad"),
        ({"choice": "both_bad"}, {"allow_both_bad": False}, "one of: left, right, tie."),
        ({"outcome": "win", "winner": 99, "strength": 1}, {}, "one of the pair's responses"),
        ({"outcome": "win", "winner": None, "strength": 1}, {}, "one of the pair's responses"),
        ({"outcome": "win", "winner": True, "strength": 1}, {}, "one of the pair's responses"),
    ],
)
def test_a_bad_preference_is_refused(
    raw: dict[str, Any], config: dict[str, Any], says: str
) -> None:
    assert says in refused("preference", raw, clean_config("preference", config))


def test_a_preference_needs_an_item_of_two_responses() -> None:
    with pytest.raises(ValidationError, match="exactly two responses"):
        clean_answer("preference", PREFERENCE, {"choice": "tie"}, response_ids=[1, 2, 3])


# --- clean_answer: ranking ----------------------------------------------------------------------


def test_a_ranking_orders_every_response_once() -> None:
    assert answer("ranking", {"order": [7, 5, 6]}) == {"order": [7, 5, 6]}
    assert answer("ranking", {"order": ["6", "7", "5"]}) == {"order": [6, 7, 5]}


@pytest.mark.parametrize(
    ("order", "says"),
    [
        (None, "a list of response ids"),
        ("7,5,6", "a list of response ids"),
        ([7, 5, True], "a list of response ids"),
        ([7, 5, 6.0], "a list of response ids"),
        ([7, 5], "every response of the item exactly once"),
        ([7, 5, 6, 8], "every response of the item exactly once"),
        ([7, 5, 5], "every response of the item exactly once"),
        ([7, 5, 6, 6], "every response of the item exactly once"),
    ],
)
def test_a_bad_ranking_is_refused(order: object, says: str) -> None:
    assert says in refused("ranking", {"order": order})


# --- clean_answer: rewrite, text, flags ---------------------------------------------------------


def test_a_rewrite_keeps_its_text_with_unix_line_ends() -> None:
    assert answer("rewrite", {"text": "Better.\r\nMuch better."}) == {
        "text": "Better.\nMuch better."
    }


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({}, "The rewrite is empty"),
        ({"text": "  \n "}, "The rewrite is empty"),
        ({"text": " The original. "}, "same as the original"),
        ({"text": 5}, "must be a string"),
        ({"text": "x" * (MAX_TEXT + 1)}, f"longer than {MAX_TEXT}"),
    ],
)
def test_a_bad_rewrite_is_refused(raw: dict[str, Any], says: str) -> None:
    assert says in refused("rewrite", raw)


def test_free_text_may_be_empty() -> None:
    assert answer("text", {}) == {"text": ""}
    assert answer("text", {"text": "Because.\r\n"}) == {"text": "Because.\n"}
    assert "must be a string" in refused("text", {"text": ["a"]})
    assert f"longer than {MAX_TEXT}" in refused("text", {"text": "x" * (MAX_TEXT + 1)})


def test_flags_are_stored_once_each_in_the_configured_order() -> None:
    assert answer("flags", {}) == {"flags": []}
    assert answer("flags", {"flags": "unsafe"}) == {"flags": ["unsafe"]}
    both = answer("flags", {"flags": ["off topic", "unsafe", "off topic"]})
    assert both == {"flags": ["unsafe", "off topic"]}


@pytest.mark.parametrize("flags", [["spam"], "spam", 3, {"unsafe": True}, [["unsafe"]]])
def test_unknown_flags_are_refused(flags: object) -> None:
    assert "Flags must be among: unsafe, factual error, off topic" in refused(
        "flags", {"flags": flags}
    )


def test_an_unknown_kind_has_no_answer() -> None:
    with pytest.raises(ValidationError, match="Unknown question kind"):
        clean_answer("essay", {}, {"text": "a"}, response_ids=[])


# --- properties ---------------------------------------------------------------------------------

# ASCII without "\r": Unicode digits and lone carriage returns have tests of their own below.
ascii_text = st.text(
    alphabet=st.characters(max_codepoint=127, exclude_characters="\r"), max_size=12
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-20, max_value=40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["left", "right", "tie", "both_bad", "win", "unsafe", "off topic", "5"])
    | ascii_text
    | st.sampled_from([str(i) for i in (*PAIR, *SET)])
)
json_values = st.recursive(
    json_scalars | st.sampled_from(PAIR + SET),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ascii_text, inner),
    max_leaves=10,
)
FIELDS = ["score", "choice", "strength", "outcome", "winner", "order", "text", "flags"]
raw_answers = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)
CONFIGS = {
    "likert": [LIKERT, clean_config("likert", {"min": 0, "max": 20})],
    "preference": [
        PREFERENCE,
        clean_config("preference", {"allow_tie": False, "allow_both_bad": False}),
        clean_config("preference", {"max_strength": 0}),
    ],
    "ranking": [{}],
    "rewrite": [{}],
    "flags": [FLAGS, clean_config("flags", {"options": ["a", "b"]})],
    "text": [{}],
}
cases = st.sampled_from(QuestionKind.values).flatmap(
    lambda kind: st.tuples(st.just(kind), st.sampled_from(CONFIGS[kind]))
)


def stored_or_refused(kind: str, config: dict[str, Any], raw: dict[str, Any]) -> None:
    ids = PAIR if kind == "preference" else SET
    try:
        value = clean_answer(kind, config, raw, response_ids=ids, original_text="The original.")
    except ValidationError:
        return
    again = clean_answer(kind, config, value, response_ids=ids, original_text="The original.")
    assert again == value


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases, raw=raw_answers)
def test_any_answer_is_either_stored_in_a_stable_shape_or_refused(
    case: tuple[str, dict[str, Any]], raw: dict[str, Any]
) -> None:
    kind, config = case
    stored_or_refused(kind, config, raw)


@settings(max_examples=200)
@given(
    kind=st.sampled_from(["likert", "preference", "ranking"]),
    number=st.text(alphabet="0123456789-+ ²³¹٣߃０", min_size=1, max_size=4),
)
def test_any_number_written_as_text_is_read_or_refused(kind: str, number: str) -> None:
    """Unicode has digits that str.isdigit() accepts and int() does not ("²")."""
    field = {"likert": "score", "preference": "strength", "ranking": "order"}[kind]
    value: object = [number, "5", "6"] if kind == "ranking" else number
    raw = {field: value, "choice": "left"}
    stored_or_refused(kind, CONFIGS[kind][0], raw)


@settings(max_examples=200)
@given(text=st.text(alphabet="ab\r\n ", max_size=12))
def test_a_text_answer_is_stored_in_a_stable_shape(text: str) -> None:
    stored_or_refused("text", {}, {"text": text})
    stored_or_refused("rewrite", {}, {"text": text})
