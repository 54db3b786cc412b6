import random
import statistics
from collections.abc import Sequence

import pytest

from rlhf_core.simulation import (
    PREFERENCES,
    EmbeddingSimilarity,
    LengthNear,
    LetterShare,
    LineBreaks,
    Punctuation,
    Rhyme,
    SimulatedAnnotator,
    WordShare,
    annotator_panel,
    calibrated_panel,
    preference_scale,
    preference_values,
)


def test_the_hidden_preference_is_the_share_of_the_letter() -> None:
    assert LetterShare()("eel") == 2 / 3
    assert LetterShare()("") == 0.0


def test_a_noiseless_annotator_prefers_the_text_with_more_es() -> None:
    annotator = SimulatedAnnotator("a")
    label = annotator.compare("p", "xxxx", "eexx")
    assert (label.chosen, label.rejected, label.tie) == ("eexx", "xxxx", False)
    assert label.strength == 3  # a difference of 0.5 is far beyond the 0.2 Likert range


def test_close_calls_become_ties_and_poor_pairs_both_bad() -> None:
    annotator = SimulatedAnnotator("a", tie_margin=0.05, both_bad_below=0.1)
    label = annotator.compare("p", "e" + "x" * 99, "x" * 100)
    assert label.tie and label.strength is None and label.both_bad


def test_ratings_map_the_latent_score_onto_the_scale() -> None:
    annotator = SimulatedAnnotator("a")
    assert annotator.rate("p", "xxxx").scores == {"overall": 1}
    assert annotator.rate("p", "eeee").scores == {"overall": 5}
    assert annotator.rate("p", "exxxxxxxxx").scores == {"overall": 3}


def test_rankings_put_the_preferred_text_first() -> None:
    ranking = SimulatedAnnotator("a").rank("p", ["xx", "ee", "ex"])
    assert ranking.responses == ("ee", "ex", "xx")


def test_a_noisy_panel_disagrees_sometimes_but_agrees_on_clear_cases() -> None:
    panel = annotator_panel(3, noise=0.05, seed=1)
    close = [a.compare("p", "exxxxxxxxx", "xexxxxxxxx").chosen for a in panel for _ in range(20)]
    assert len(set(close)) == 2  # equal latent scores: the noise decides, differently
    clear = {a.compare("p", "eeeeeeeeee", "xxxxxxxxxx").chosen for a in panel}
    assert clear == {"eeeeeeeeee"}


def test_warm_words_are_the_share_of_words_from_the_list_whatever_their_case() -> None:
    # love, dear and friend are warm; "kindness" is not on the list (kind and kindly are).
    assert WordShare()("Love and kindness, my dear friend.") == 3 / 6
    assert WordShare(frozenset({"tax"}))("Tax, tax and TAX law") == 3 / 5
    assert WordShare()("") == 0.0
    assert WordShare()("1, 2, 3!") == 0.0


def test_length_is_zero_at_the_target_and_minus_one_per_target_words_away() -> None:
    assert LengthNear()(" ".join(["word"] * 24)) == 0.0
    assert LengthNear()(" ".join(["word"] * 12)) == -0.5
    assert LengthNear()(" ".join(["word"] * 36)) == -0.5
    assert LengthNear(target=4)("don't stop, 42 believing") == -1 / 4  # 3 words; numbers aren't
    assert LengthNear()("") == -1.0


def test_line_breaks_are_counted_per_word_without_the_trailing_one() -> None:
    assert LineBreaks()("one two\nthree four\n") == 1 / 4
    assert LineBreaks()("one\ntwo\nthree") == 2 / 3
    assert LineBreaks()("\n\n") == 0.0


def test_punctuation_marks_are_counted_per_word() -> None:
    assert Punctuation()("Oh, the night is long.") == 2 / 5
    assert Punctuation()("Yes! No? Maybe; so: fine.") == 5 / 5
    assert Punctuation()('"quoted" - (dashed)') == 0.0
    assert Punctuation()("?!") == 0.0  # no words


def test_rhyme_is_the_share_of_lines_or_clauses_ending_like_an_earlier_one() -> None:
    poem = "In the night\nI see the light,\nand love\n\nfrom Above!"
    # Endings ht, ht, ve, ve (the empty line skipped): two of the three after the first rhyme.
    assert Rhyme()(poem) == 2 / 3
    # Clauses within one line count, and a rhyme with any earlier one: ht, ay, ht.
    assert Rhyme()("I sing of night, of day, of light") == 1 / 2
    assert Rhyme()("the cat\nin a hat") == 1.0
    assert Rhyme(letters=3)("the cat\nin a hat") == 0.0
    assert Rhyme()("a single line") == 0.0


def test_each_preference_name_builds_its_preference() -> None:
    assert set(PREFERENCES) == {
        "letters",
        "warm_words",
        "length",
        "line_breaks",
        "punctuation",
        "rhyme",
        "embedding",
    }
    text = "Dear heart,\nthe night is long\nand so is the song."
    expected = {
        "letters": 4 / len(text),  # Dear, heart, the, the
        "warm_words": 2 / 11,  # dear, heart
        "length": -13 / 24,
        "line_breaks": 2 / 11,
        "punctuation": 2 / 11,
        "rhyme": 1 / 2,  # rt, ng, ng
    }
    assert {name: PREFERENCES[name]()(text) for name in expected} == pytest.approx(expected)


class CountingBatch:
    """A preference that can batch, and counts the batches it is asked for."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, text: str) -> float:
        raise AssertionError("a preference that can batch is called one text at a time")

    def batch(self, texts: Sequence[str]) -> list[float]:
        self.batches.append(list(texts))
        return [float(len(text)) for text in texts]


def test_preference_values_go_through_batch_when_the_preference_has_one() -> None:
    preference = CountingBatch()
    assert preference_values(preference, ["a", "bbb", "cc"]) == [1.0, 3.0, 2.0]
    assert preference.batches == [["a", "bbb", "cc"]]


def test_preference_values_call_a_plain_preference_text_by_text() -> None:
    assert preference_values(LetterShare(), ["ee", "ex", "xx"]) == [1.0, 0.5, 0.0]


def test_a_preferences_scale_is_its_population_standard_deviation() -> None:
    assert preference_scale(LetterShare(), ["e", "x", "ee", "xx"]) == 0.5
    assert preference_scale(LetterShare(), ["eeee", "eexx", "xxxx"]) == pytest.approx(
        statistics.pstdev([1.0, 0.5, 0.0])
    )
    with pytest.raises(ValueError, match="at least two texts"):
        preference_scale(LetterShare(), ["e"])


def test_a_calibrated_panels_noise_is_noise_times_the_preferences_spread() -> None:
    texts = ["e", "x", "ee", "xx"]  # shares 1, 0, 1, 0: a population std of 0.5
    panel = calibrated_panel(3, LetterShare(), texts, noise=0.4, seed=7)
    assert [annotator.noise for annotator in panel] == [0.2, 0.2, 0.2]
    assert [annotator.annotator_id for annotator in panel] == ["sim-0", "sim-1", "sim-2"]
    assert [annotator.seed for annotator in panel] == [7, 8, 9]
    assert {annotator.likert_range for annotator in panel} == {(0.0, 1.0)}
    lengths = calibrated_panel(1, LengthNear(), ["a b", "a b c d"], noise=1.0)
    assert lengths[0].noise == pytest.approx(1 / 24)


def gaussian_texts(count: int, seed: int) -> list[str]:
    """Texts of 200 characters whose share of "e" spreads like a Gaussian (mean 0.5, std 0.075)."""
    rng = random.Random(seed)
    counts = (min(200, max(0, round(rng.gauss(100, 15)))) for _ in range(count))
    return ["e" * share + "x" * (200 - share) for share in counts]


def agreement(noise: float, pairs: int = 3000) -> float:
    """How often one calibrated annotator picks what the noiseless preference picks."""
    preference = LetterShare()
    texts = gaussian_texts(2000, seed=1)
    (annotator,) = calibrated_panel(1, preference, texts, noise=noise, seed=2)
    rng, agreed, counted = random.Random(3), 0, 0
    while counted < pairs:
        a, b = rng.sample(texts, 2)
        if preference(a) == preference(b):
            continue
        better = a if preference(a) > preference(b) else b
        agreed += annotator.compare("p", a, b).chosen == better
        counted += 1
    return agreed / counted


def test_at_noise_one_half_an_annotator_agrees_with_the_preference_on_85_percent() -> None:
    # 1/2 + arctan(1/noise)/pi: 0.852 at 0.5 (1.0 at noise 0, 0.75 at 1, 0.648 at 2).
    assert agreement(0.5) == pytest.approx(0.852, abs=0.03)


def test_embedding_similarity_is_closer_for_a_text_on_its_theme_and_encodes_each_text_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The `simulation` extra is a test dependency (bin/test installs it): never skipped.
    from rlhf_core import simulation

    model, encoded = simulation._minilm(), []

    class CountingModel:
        def encode(self, texts: list[str], **options: object) -> object:
            encoded.append(list(texts))
            return model.encode(texts, **options)

    monkeypatch.setattr(simulation, "_minilm", CountingModel)
    love = "My dear friend, I love you and thank you for your kindness."
    tax = "Section 12 of the income tax act sets the corporate tax rate."
    preference = EmbeddingSimilarity()
    values = preference_values(preference, [love, tax, love])
    assert values[0] > values[1] and values[0] == values[2]
    assert preference(tax) == values[1]
    assert encoded == [[preference.theme, love, tax]]
