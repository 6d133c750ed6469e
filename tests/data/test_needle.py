import itertools
import re

import pytest

from memlm.data import NeedleExample, niah, niah_grid, niah_score
from memlm.data.needle import FILLER, KEYS, NEEDLE
from memlm.tokenization import byte_level_tokenizer

NEEDLE_RE = re.compile(r"One of the special magic numbers for ([a-z]+) is: (\d{7})\.")


def sentences(context):
    """The sentences of ``context`` (neither the filler nor the needles have a period inside)."""
    return [sentence.strip() for sentence in re.findall(r"[^.]+\.", context)]


def needles_of(context):
    """``(key, value, start)`` of every needle in ``context``, in order."""
    return [(m.group(1), m.group(2), m.start()) for m in NEEDLE_RE.finditer(context)]


def words(text):
    return len(text.split())


@pytest.mark.parametrize("haystack, tolerance", [("repeat", 4), ("needles", 10)])
@pytest.mark.parametrize("variant", ["single", "multikey", "multivalue"])
def test_length_in_words_within_tolerance(haystack, tolerance, variant):
    for context_length in (60, 777, 3001):
        for example in niah(3, context_length, variant=variant, haystack=haystack, seed=context_length):
            assert 0 <= context_length - words(example.context) < tolerance
            assert example.context_length == context_length


@pytest.mark.parametrize("haystack", ["repeat", "needles"])
def test_length_in_tokens_within_one_sentence(haystack):
    tokenizer = byte_level_tokenizer()
    for context_length in (300, 4000, 20000):
        for example in niah(2, context_length, variant="multikey", tokenizer=tokenizer, haystack=haystack):
            size = len(tokenizer(example.context, add_special_tokens=False)["input_ids"])
            assert size == len(example.context.encode())  # one token per byte
            longest = max(len(s) for s in sentences(example.context))
            assert 0 <= context_length - size < longest + 1  # the next sentence and its space would not fit
    # the needles' minimum is in tokens here, not words
    with pytest.raises(ValueError, match="context_length must be at least"):
        niah(1, 40, tokenizer=tokenizer)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_single_needle_format_and_exact_placement(depth):
    (example,) = niah(1, 200, depth=depth, seed=7)
    ((key, value, _),) = needles_of(example.context)
    needle = NEEDLE.format(key=key, value=value)
    assert needle == f"One of the special magic numbers for {key} is: {value}."
    before, after = example.context.split(needle)
    n = example.context.count(".") - 1  # filler sentences
    filler = list(itertools.islice(itertools.cycle(FILLER), n))
    k = round(depth * n)
    assert example.context == " ".join([*filler[:k], needle, *filler[k:]])
    assert example.question == f"What is the special magic number for {key} mentioned in the provided text?"
    assert example.answer_prefix == f"The special magic number for {key} mentioned in the provided text is"
    assert example.answers == [value]
    assert example.depth == depth
    assert example.prompt == example.context + "\n" + example.question + " " + example.answer_prefix
    assert example.document == example.prompt + f" {value}."
    q, c, a = example.question, example.context, example.answer_prefix
    assert example.jrt_prompt() == f"{q} {c}\n{c} {q} {a}"  # JRT-Prompt: question first, context twice
    assert example.jrt_prompt(repeats=3) == f"{q} {c}\n{c}\n{c} {q} {a}"
    assert example.jrt_prompt(repeats=1) == f"{c} {q} {a}"


@pytest.mark.parametrize("haystack", ["repeat", "needles"])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.75, 1.0])
def test_target_needle_at_its_depth(haystack, depth):
    for variant in ("single", "multikey"):
        for example in niah(3, 3000, depth=depth, variant=variant, haystack=haystack):
            key = re.search(r"number for ([a-z]+) mentioned", example.question).group(1)
            start = example.context.index(NEEDLE.format(key=key, value=example.answers[0]))
            assert abs(start / len(example.context) - depth) < 0.02


def test_multikey_asks_the_target_among_distinct_keys():
    for depth in (0.0, 0.3, 1.0):
        for example in niah(5, 1000, depth=depth, variant="multikey", num_keys=4, seed=1):
            found = needles_of(example.context)
            keys = [key for key, _, _ in found]
            assert len(found) == 4 and len(set(keys)) == 4
            assert len({value for _, value, _ in found}) == 4
            target = next((key, value) for key, value, _ in found if key in example.question)
            assert example.question.count(target[0]) == 1 and example.answers == [target[1]]
            assert all(key not in example.question.split() for key in keys if key != target[0])
            # the needles sit at depth, depth + 1/4, depth + 2/4, depth + 3/4 (wrapping), target first
            starts = {key: start / len(example.context) for key, _, start in found}
            spread = sorted((starts[key] - starts[target[0]]) % 1 for key in keys)
            assert spread == pytest.approx([0, 0.25, 0.5, 0.75], abs=0.02)


def test_multivalue_asks_all_values_of_one_key():
    for example in niah(5, 800, variant="multivalue", num_values=3, seed=2):
        found = needles_of(example.context)
        assert len(found) == 3 and len({key for key, _, _ in found}) == 1
        key = found[0][0]
        assert sorted(example.answers) == sorted(value for _, value, _ in found)
        assert len(set(example.answers)) == 3
        assert example.question == f"What are all the special magic numbers for {key} mentioned in the provided text?"
        assert example.answer_prefix == f"The special magic numbers for {key} mentioned in the provided text are"
        assert example.document.endswith(f" are {example.answers[0]}, {example.answers[1]}, {example.answers[2]}.")
        # the first answer is the needle at depth 0.5, the others spread a third of the haystack away
        first = example.context.index(example.answers[0]) / len(example.context)
        assert abs(first - 0.5) < 0.03


@pytest.mark.parametrize("variant, num_targets", [("single", 1), ("multikey", 1), ("multivalue", 3)])
def test_needle_haystack_is_distractors_only(variant, num_targets):
    for example in niah(3, 2500, variant=variant, haystack="needles", seed=5):
        assert not any(filler in example.context for filler in FILLER)
        found = needles_of(example.context)
        assert len(found) == len(sentences(example.context))  # every sentence is a needle
        key = re.search(r"numbers? for ([a-z]+) mentioned", example.question).group(1)
        assert [value for k, value, _ in found if k == key] == sorted(example.answers, key=example.context.index)
        assert len(found) - num_targets > 200  # more distractors than keys: they wrap around KEYS
        values = [value for _, value, _ in found]
        assert len(set(values)) == len(values)
        distractors = [k for k, _, _ in found if k != key]
        first_pass = distractors[: len(KEYS) - 4]  # distinct until the other keys are used up
        assert len(set(first_pass)) == len(first_pass)


def test_keys():
    assert 190 <= len(KEYS) == len(set(KEYS))
    assert all(re.fullmatch("[a-z]+", key) for key in KEYS)
    template_words = set(re.findall("[a-z]+", " ".join(FILLER).lower() + " special magic numbers provided text"))
    assert not template_words & set(KEYS)


def test_deterministic_by_seed():
    kwargs = {"variant": "multikey", "haystack": "needles"}
    a, b, c = niah(4, 500, seed=3, **kwargs), niah(4, 500, seed=3, **kwargs), niah(4, 500, seed=4, **kwargs)
    assert a == b
    assert all(x.context != y.context and x.answers != y.answers for x, y in zip(a, c, strict=True))
    assert len({x.answers[0] for x in a}) == 4  # examples differ within a call
    # the keys and values do not depend on the length, depth, haystack or tokenizer
    other = niah(4, 2000, depth=0.9, seed=3, variant="multikey", tokenizer=byte_level_tokenizer())
    assert [x.question for x in other] == [x.question for x in a]
    assert [x.answers for x in other] == [x.answers for x in a]


def test_grid_cells_and_metadata():
    examples = niah_grid([100, 300], [0.0, 0.5, 1.0], 2, seed=1, variant="multivalue")
    assert len(examples) == 12 and all(isinstance(example, NeedleExample) for example in examples)
    cells = [(example.context_length, example.depth) for example in examples]
    assert cells == [(length, depth) for length in (100, 300) for depth in (0.0, 0.5, 1.0) for _ in range(2)]
    assert all(len(example.answers) == 3 and 0 <= 100 - words(example.context) < 4 for example in examples[:6])
    assert len({tuple(example.answers) for example in examples}) == 12  # the cells hold different values
    assert examples == niah_grid([100, 300], [0.0, 0.5, 1.0], 2, seed=1, variant="multivalue")
    assert examples != niah_grid([100, 300], [0.0, 0.5, 1.0], 2, seed=2, variant="multivalue")


def test_score():
    answers = ["1234567", "7654321", "Apple"]
    assert niah_score("1234567, 7654321 and apple.", answers) == 1.0
    assert niah_score("The numbers are 7654321 and APPLE", answers) == pytest.approx(2 / 3)
    assert niah_score("I don't know.", answers) == 0.0
    assert niah_score("THE ANSWER IS apple", ["aPPle"]) == 1.0
    assert niah_score("123456", ["1234567"]) == 0.0
    (example,) = niah(1, 100)
    assert niah_score(example.document[len(example.prompt) :], example.answers) == 1.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_examples": 0}, "num_examples"),
        ({"num_examples": 1.0}, "num_examples"),
        ({"context_length": -5}, "context_length"),
        ({"context_length": True}, "context_length"),
        ({"context_length": 9}, "context_length"),  # a needle is 10 words
        ({"context_length": 39, "variant": "multikey"}, "context_length"),  # four needles
        ({"num_keys": 0}, "num_keys"),
        ({"num_keys": len(KEYS)}, "num_keys"),
        ({"num_values": 0}, "num_values"),
        ({"depth": -0.1}, "depth"),
        ({"depth": 1.5}, "depth"),
        ({"depth": float("nan")}, "depth"),
        ({"depth": "0.5"}, "depth"),
        ({"variant": "multiquery"}, "variant"),
        ({"haystack": "essay"}, "haystack"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"num_examples": 2, "context_length": 100} | kwargs
    with pytest.raises(ValueError, match=name):
        niah(**args)


def test_minimum_length_is_named():
    with pytest.raises(ValueError, match="must be at least 30"):  # three 10-word needles
        niah(1, 29, variant="multivalue")
    assert words(niah(1, 30, variant="multivalue")[0].context) == 30


@pytest.mark.parametrize(
    "args, name",
    [
        (([], [0.5], 1), "context_lengths"),
        (([100], [], 1), "depths"),
        (([100], [0.5], 0), "num_examples_per_cell"),
        (([100], [1.5], 1), "depth"),
    ],
)
def test_bad_grid_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        niah_grid(*args)


def test_score_needs_answers():
    with pytest.raises(ValueError, match="answers"):
        niah_score("1234567", [])
