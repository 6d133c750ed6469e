import re
from collections import Counter

import pytest

from memlm.data import ICLExample, associative_recall_text, label_remapping
from memlm.data.icl import CATEGORIES, LABELS, MAX_LABEL_SHOTS_PER_CLASS, NAMES
from memlm.eval import exact_match, first_line

CATEGORY_OF = {word: category for category, words in CATEGORIES.items() for word in words}
SHOT_RE = re.compile(r"(\w+): (\w+)")
PAIR_RE = re.compile(r"([A-Z][a-z]+)'s number is (\d{4})")


def parse_label_prompt(prompt):
    """``[(word, label), ...]`` of the shots and the query word."""
    *shots, query = prompt.split("\n")
    pairs = [SHOT_RE.fullmatch(shot).groups() for shot in shots]
    assert query.endswith(":") and " " not in query
    return pairs, query[:-1]


def test_word_lists():
    words = [word for category in CATEGORIES.values() for word in category]
    assert len(words) == len(set(words)) == len(CATEGORY_OF)  # no word in two categories
    assert all(re.fullmatch(r"[A-Za-z]+", word) for word in words)
    assert len(LABELS) == len(set(LABELS)) >= len(CATEGORIES)
    assert not set(LABELS) & {word.lower() for word in words}
    assert min(len(category) for category in CATEGORIES.values()) - 1 == MAX_LABEL_SHOTS_PER_CLASS
    assert len(NAMES) == len(set(NAMES)) == 100
    lowered = [name.lower() for name in NAMES]
    assert not [(a, b) for a in lowered for b in lowered if a != b and b.endswith(a)]  # "{name}'s" marks one name


@pytest.mark.parametrize(
    "num_shots, num_classes", [(2, 2), (5, 2), (16, 3), (8, 8), (MAX_LABEL_SHOTS_PER_CLASS + 1, 2)]
)
def test_label_remapping_format_and_mapping(num_shots, num_classes):
    for example in label_remapping(50, num_shots, seed=num_shots, num_classes=num_classes):
        assert isinstance(example, ICLExample)
        assert example.prompt.count("\n") == num_shots  # num_shots shots and the query, one per line
        pairs, query = parse_label_prompt(example.prompt)
        assert len(pairs) == num_shots
        words = [word for word, _ in pairs] + [query]
        assert len(set(words)) == len(words)  # the query is not among the shots
        mapping = {CATEGORY_OF[word]: label for word, label in pairs}
        assert len(mapping) == len(set(mapping.values())) == num_classes  # one label per category, every one shown
        assert all(mapping[CATEGORY_OF[word]] == label for word, label in pairs)
        assert set(mapping.values()) <= set(LABELS)
        assert example.answer == mapping[CATEGORY_OF[query]]
        assert exact_match(first_line(f" {example.answer}\nlion: foo"), example.answer) == 1.0


def test_docstring_examples():
    assert label_remapping(1, 4)[0] == ICLExample("pickaxe: dax\nCanada: foo\nJapan: foo\nFinland: foo\nIndia:", "foo")
    assert associative_recall_text(1, 3)[0] == ICLExample(
        "Amir's number is 1663\nSasha's number is 5242\nEdgar's number is 9376\nSasha's number is", "5242"
    )


def test_labels_are_remapped_across_examples():
    examples = label_remapping(300, 6, seed=1, num_classes=3)
    pairs = Counter()
    for example in examples:
        shots, query = parse_label_prompt(example.prompt)
        pairs.update({(CATEGORY_OF[word], label) for word, label in shots})
    assert {category for category, _ in pairs} == set(CATEGORIES)
    assert len({label for _, label in pairs}) == len(LABELS)
    assert all(len({label for c, label in pairs if c == category}) >= 6 for category in CATEGORIES)
    # the query's class is not tied to a position or to the most frequent class
    answers = Counter(example.answer for example in examples)
    assert len(answers) == len(LABELS)


def test_associative_recall_format():
    for num_shots in (1, 2, 10, len(NAMES)):
        for example in associative_recall_text(20, num_shots, seed=num_shots):
            *shots, query = example.prompt.split("\n")
            pairs = [PAIR_RE.fullmatch(shot).groups() for shot in shots]
            assert len(pairs) == num_shots
            names = [name for name, _ in pairs]
            values = [value for _, value in pairs]
            assert len(set(names)) == len(names) and len(set(values)) == len(values)
            name = re.fullmatch(r"([A-Z][a-z]+)'s number is", query).group(1)
            assert example.answer == dict(pairs)[name]
            assert example.prompt.count(example.answer) == 1
            assert example.prompt.count(f"{name}'s number is") == 2  # its shot and the query
            assert exact_match(first_line(f" {example.answer}\nZoe's number is 1"), example.answer) == 1.0
            assert exact_match(f"{example.answer}.", example.answer) == 0.0


def test_queried_position_varies():
    positions = Counter()
    for example in associative_recall_text(200, 4, seed=2):
        lines = example.prompt.split("\n")
        positions[[line.endswith(example.answer) for line in lines].index(True)] += 1
    assert set(positions) == {0, 1, 2, 3}


@pytest.mark.parametrize("build", [label_remapping, associative_recall_text])
def test_deterministic_by_seed(build):
    a, b, c = build(30, 6, seed=3), build(30, 6, seed=3), build(30, 6, seed=4)
    assert a == b
    assert a != c
    assert len({example.prompt for example in a}) == 30
    assert [example.prompt.count("\n") for example in build(3, 9)] == [9] * 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_examples": 0}, "num_examples"),
        ({"num_examples": 1.0}, "num_examples"),
        ({"num_shots": 0}, "num_shots"),
        ({"num_shots": True}, "num_shots"),
        ({"num_shots": 2, "num_classes": 3}, "num_shots"),  # every label must be shown
        ({"num_shots": MAX_LABEL_SHOTS_PER_CLASS + 2}, "num_shots"),  # two classes: one would run out of words
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": len(CATEGORIES) + 1, "num_shots": 10}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
    ],
)
def test_label_remapping_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        label_remapping(**({"num_examples": 2, "num_shots": 4} | kwargs))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_examples": -1}, "num_examples"),
        ({"num_shots": 0}, "num_shots"),
        ({"num_shots": "3"}, "num_shots"),
        ({"num_shots": len(NAMES) + 1}, "num_shots"),
    ],
)
def test_associative_recall_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        associative_recall_text(**({"num_examples": 2, "num_shots": 4} | kwargs))
