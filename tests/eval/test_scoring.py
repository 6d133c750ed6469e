import re

import pytest

from memlm.eval import contains_any, exact_match, first_line


def harness_contains_score(prediction, labels):
    """HazyResearch's ``contains_score`` of the ``based_*`` lm-eval tasks."""
    return max(int(bool(re.search(re.compile(re.escape(label), re.IGNORECASE), prediction))) for label in labels)


def test_first_line():
    assert first_line(" 1815, in London\nQuestion: who") == " 1815, in London"
    assert first_line("no newline") == "no newline"
    assert first_line("\nstarts with one") == ""
    assert first_line("a\r\nb") == "a\r"  # only "\n" stops, as the suite's stop string
    assert first_line("") == ""


@pytest.mark.parametrize(
    "generation, answers, score",
    [
        (" 555-4969", ["555-4969"], 1.0),
        ("It is in WINNIPEG, Canada", ["Winnipeg"], 1.0),
        (" winnipeg", ["WINNIPEG"], 1.0),
        (" Winnipe", ["Winnipeg"], 0.0),
        (" London", ["Paris", "london"], 1.0),
        (" Rome", ["Paris", "London"], 0.0),
        (" $490 million", ["$490 million"], 1.0),  # regex characters are literal
        (" 490 million", ["$490 million"], 0.0),
        (" C++ and more", ["c++"], 1.0),
        (" 1.4 kg", ["1x4 kg"], 0.0),
        ("", ["x"], 0.0),
        ("anything", [""], 1.0),  # an empty answer is contained, as in the harness
    ],
)
def test_contains_any(generation, answers, score):
    assert contains_any(generation, answers) == score
    assert contains_any(generation, answers) == harness_contains_score(generation, answers)
    assert isinstance(contains_any(generation, answers), float)


def test_contains_any_bad_answers():
    with pytest.raises(ValueError, match="answers"):
        contains_any("1815", [])
    with pytest.raises(ValueError, match="answers"):
        contains_any("1815", "1815")  # a str would be read as its characters


@pytest.mark.parametrize(
    "generation, answer, score",
    [
        ("foo", "foo", 1.0),
        ("  foo \t", "foo", 1.0),
        ("foo", " foo ", 1.0),
        ("Foo", "foo", 0.0),  # case-sensitive
        ("foo.", "foo", 0.0),
        ("foo bar", "foo", 0.0),
        ("fo o", "foo", 0.0),
        (" 9376", "9376", 1.0),
        ("", "foo", 0.0),
    ],
)
def test_exact_match(generation, answer, score):
    assert exact_match(generation, answer) == score
    assert isinstance(exact_match(generation, answer), float)


def test_exact_match_of_the_first_line():
    assert exact_match(first_line(" foo\nlion: bar"), "foo") == 1.0
    assert exact_match(" foo\nlion: bar", "foo") == 0.0
