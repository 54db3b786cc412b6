"""Filter, option and format validation: property-based over arbitrary input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webapp.exports.filters import (
    FILTER_DEFAULTS,
    ExportError,
    clean_filters,
    clean_formats,
    clean_options,
    clean_test_share,
)
from webapp.exports.formats import FORMATS

junk = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
names = st.lists(st.text(min_size=1, max_size=6), max_size=3)
moments = st.datetimes().map(lambda moment: moment.isoformat())
filter_values = {
    "since": moments,
    "until": moments,
    "model_versions": names,
    "label_kinds": st.lists(st.sampled_from(["likert", "preference", "ranking", "colour"])),
    "min_agreement": st.floats(-1, 2),
    "gold": st.sampled_from(["include", "exclude", "only", "some"]),
    "flagged": st.sampled_from(["include", "exclude", "only", "some"]),
    "annotators": names,
    "colour": st.just("red"),
}
filter_input = st.fixed_dictionaries(
    {}, optional={name: values | junk for name, values in filter_values.items()}
)


@given(filter_input)
def test_any_input_is_either_refused_clearly_or_normalised_idempotently(
    raw: dict[str, Any],
) -> None:
    try:
        cleaned = clean_filters(raw)
    except ExportError as error:
        refused = error
    else:
        assert set(cleaned) == set(FILTER_DEFAULTS)
        assert clean_filters(cleaned) == cleaned  # stored filters validate to themselves
        return
    assert refused.status == 400 and refused.message and refused.field is not None


@given(st.lists(st.sampled_from([*FORMATS, "pairs_xml", "nonsense"]), max_size=6))
def test_formats_are_known_each_once_or_refused(raw: list[str]) -> None:
    if not raw or not set(raw) <= set(FORMATS):
        with pytest.raises(ExportError) as refused:
            clean_formats(raw)
        assert refused.value.field == "formats"
    else:
        assert clean_formats(raw) == sorted(set(raw), key=FORMATS.index)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans())
def test_the_test_share_is_a_number_in_zero_to_one(raw: float) -> None:
    try:
        share = clean_test_share(raw)
    except ExportError:
        assert isinstance(raw, bool) or not 0 <= raw < 1
        return
    assert 0 <= share < 1


def test_times_are_normalised_to_utc_and_ordered() -> None:
    cleaned = clean_filters({"since": "2026-11-01", "until": "2026-11-01T14:00+02:00"})
    assert cleaned["since"] == "2026-11-01T00:00:00+00:00"
    assert cleaned["until"] == "2026-11-01T12:00:00+00:00"
    with pytest.raises(ExportError, match="before"):
        clean_filters({"since": "2026-11-02", "until": "2026-11-01"})


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_that_leaves_the_calendar_in_utc_is_refused(moment: str) -> None:
    with pytest.raises(ExportError, match="out of the range of dates"):
        clean_filters({"since": moment})


def test_names_may_be_given_as_a_comma_separated_string() -> None:
    assert clean_filters({"annotators": "bo, al,bo"})["annotators"] == ["al", "bo"]


def test_options_have_defaults_and_refuse_unknown_policies() -> None:
    assert clean_options(None) == {
        "include_ties": False,
        "ranking_pairs": "all",
        "sft_min_score": 1.0,
    }
    with pytest.raises(ExportError, match="ranking_pairs must be one of"):
        clean_options({"ranking_pairs": "random"})
    with pytest.raises(ExportError, match="include_ties"):
        clean_options({"include_ties": "yes"})
