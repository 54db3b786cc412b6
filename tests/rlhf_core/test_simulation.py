from rlhf_core.simulation import LetterShare, SimulatedAnnotator, annotator_panel


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
