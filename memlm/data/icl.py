"""Few-shot in-context-learning tasks, generated offline and scored by exact match.

Each task writes ``num_shots`` demonstrations, one per line, then a query line that the model completes with
the answer; the lines are joined by ``"\\n"``. The answer ends its line, so a generation is scored as
``exact_match(first_line(generation), answer)`` (:mod:`memlm.eval.scoring`: the suite stops at the first
newline, and surrounding whitespace is ignored, case is not).

* :func:`label_remapping`: words of ``num_classes`` categories (:data:`CATEGORIES`: animals, colors, ...)
  labelled with arbitrary tokens (:data:`LABELS`), drawn anew for every example (animals may be ``"foo"``
  in one example and ``"dax"`` in the next), so the model must infer from the shots both the categories and
  their labels. A shot is ``"{word}: {label}"`` and the query ``"{word}:"``; every label appears in at least
  one shot, the query's category is drawn uniformly, and the words of an example, the query's included, are
  distinct. ``label_remapping(1, 4)[0]``::

      prompt:  pickaxe: dax
               Canada: foo
               Japan: foo
               Finland: foo
               India:
      answer:  foo

* :func:`associative_recall_text`: natural-language key-value recall. A shot is ``"{name}'s number is
  {value}"`` with distinct names (:data:`NAMES`) and distinct 4-digit values; the query repeats one of the
  names, uniformly drawn, as ``"{name}'s number is"``, and the answer is its value, which occurs once in the
  prompt. ``associative_recall_text(1, 3)[0]``::

      prompt:  Amir's number is 1663
               Sasha's number is 5242
               Edgar's number is 9376
               Sasha's number is
      answer:  5242

The examples are drawn with a local ``random.Random`` seeded by ``seed``: the same arguments give the same
examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_CATEGORIES = {
    "animals": """lion tiger zebra giraffe elephant wolf fox bear rabbit squirrel dolphin whale shark eagle hawk
        owl sparrow parrot penguin camel donkey horse goat sheep""",
    "colors": """red blue green yellow purple pink brown black white gray violet indigo crimson scarlet maroon
        teal turquoise beige ivory magenta lavender amber navy cyan""",
    "fruits": """apple banana cherry grape lemon mango peach pear plum melon papaya apricot fig guava coconut
        pineapple strawberry blueberry raspberry watermelon nectarine tangerine pomegranate lychee""",
    "instruments": """piano violin guitar drum flute trumpet cello harp clarinet saxophone trombone oboe banjo
        ukulele accordion harmonica tuba bassoon mandolin xylophone bagpipes sitar tambourine piccolo""",
    "vehicles": """car bus truck bicycle motorcycle train tram airplane helicopter boat ship scooter van taxi
        tractor submarine yacht canoe kayak ferry jeep limousine sled glider""",
    "sports": """soccer tennis golf hockey baseball basketball cricket rugby volleyball boxing swimming cycling
        skiing surfing rowing fencing archery wrestling badminton karate judo bowling curling lacrosse""",
    "tools": """hammer wrench screwdriver saw drill pliers chisel shovel rake axe crowbar mallet trowel hoe
        scissors clamp sander stapler pickaxe hacksaw spanner vise pitchfork wheelbarrow""",
    "countries": """France Spain Italy Germany Japan China India Brazil Mexico Canada Egypt Kenya Peru Chile
        Norway Sweden Finland Poland Greece Vietnam Thailand Argentina Nigeria Morocco""",
}
CATEGORIES = {name: tuple(words.split()) for name, words in _CATEGORIES.items()}
"""The categories of :func:`label_remapping` and their words (no word in two categories)."""
_LABELS = "foo bar baz qux zorp blick dax wug fep toma kiki bouba"
LABELS = tuple(_LABELS.split())
"""The arbitrary label tokens of :func:`label_remapping`, none of them a word of :data:`CATEGORIES`."""
_NAMES = """
    Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Nathan Olivia Peter Quinn Rachel Sam
    Tina Victor Wendy Xavier Yara Zoe Adam Bella Chris Diana Ethan Fiona George Hannah Isaac Julia Kevin Laura
    Mike Nora Oscar Paula Ryan Sofia Thomas Uma Vince Will Yusuf Zach Amir Brenda Caleb Daisy Edgar Felix Gloria
    Hector Ivy Jonah Kira Lucas Megan Noah Opal Pablo Rita Simon Tara Ursula Vera Walter Yvonne Anita Boris Cecil
    Doris Elmer Flora Gavin Hazel Igor Joyce Keith Lydia Marcus Nina Otto Priya Ruben Sergei Troy Umar Violet Wade
    Yuki Zelda Quentin Sasha Tobias Ines
"""
NAMES = tuple(_NAMES.split())
"""The names of :func:`associative_recall_text`; none ends another, so ``"{name}'s"`` marks one name."""
MAX_LABEL_SHOTS_PER_CLASS = min(len(words) for words in CATEGORIES.values()) - 1
"""The most shots of one class in a :func:`label_remapping` example: its words, less one for the query."""


@dataclass
class ICLExample:
    """One few-shot example.

    Attributes:
        prompt: the shots and the query, one per line; the model continues the last line.
        answer: the gold completion of the query, scored by exact match on the generation's first line.
    """

    prompt: str
    answer: str


def _check_sizes(**sizes: int) -> None:
    """Raise a ValueError unless every size is a positive int."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def label_remapping(num_examples: int, num_shots: int, seed: int = 0, num_classes: int = 2) -> list[ICLExample]:
    """Few-shot classification of words into categories with remapped labels (see the module notes).

    Args:
        num_examples: number of examples.
        num_shots: labelled words before the query, at least ``num_classes`` (every label is shown) and at most
            ``num_classes - 1 + MAX_LABEL_SHOTS_PER_CLASS`` (the words of a class are distinct).
        seed: seed of the local generator.
        num_classes: categories per example, from 2 to ``len(CATEGORIES)``.

    Returns:
        ``num_examples`` examples whose prompts have ``num_shots + 1`` lines and whose answers are labels.

    Raises:
        ValueError: for a size that is not a positive int, or a ``num_classes`` or ``num_shots`` out of range.
    """
    _check_sizes(num_examples=num_examples, num_shots=num_shots, num_classes=num_classes)
    if not 2 <= num_classes <= len(CATEGORIES):
        raise ValueError(f"num_classes must be from 2 to {len(CATEGORIES)} (categories), got {num_classes}")
    most_shots = num_classes - 1 + MAX_LABEL_SHOTS_PER_CLASS
    if not num_classes <= num_shots <= most_shots:
        raise ValueError(
            f"num_shots must be from num_classes={num_classes} (one shot per label) to {most_shots} (distinct "
            f"words, {MAX_LABEL_SHOTS_PER_CLASS + 1} per category), got {num_shots}"
        )

    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        categories = rng.sample(list(CATEGORIES), num_classes)
        labels = rng.sample(LABELS, num_classes)
        classes = list(range(num_classes)) + [rng.randrange(num_classes) for _ in range(num_shots - num_classes)]
        rng.shuffle(classes)
        query = rng.randrange(num_classes)
        words = [
            rng.sample(CATEGORIES[category], classes.count(c) + (c == query)) for c, category in enumerate(categories)
        ]
        shots = [f"{words[c].pop()}: {labels[c]}" for c in classes]
        examples.append(ICLExample("\n".join([*shots, f"{words[query].pop()}:"]), labels[query]))
    return examples


def associative_recall_text(num_examples: int, num_shots: int, seed: int = 0) -> list[ICLExample]:
    """Natural-language key-value recall: ``"{name}'s number is {value}"`` lines, then one name asked.

    Args:
        num_examples: number of examples.
        num_shots: name-number lines before the query, at most ``len(NAMES)``.
        seed: seed of the local generator.

    Returns:
        ``num_examples`` examples whose prompts have ``num_shots + 1`` lines and whose answers are 4-digit
        numbers.

    Raises:
        ValueError: for a size that is not a positive int, or ``num_shots > len(NAMES)``.
    """
    _check_sizes(num_examples=num_examples, num_shots=num_shots)
    if num_shots > len(NAMES):
        raise ValueError(f"num_shots must be at most {len(NAMES)} (distinct names), got {num_shots}")

    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        names = rng.sample(NAMES, num_shots)
        values = [str(value) for value in rng.sample(range(1000, 10_000), num_shots)]
        query = rng.randrange(num_shots)
        shots = [f"{name}'s number is {value}" for name, value in zip(names, values, strict=True)]
        examples.append(ICLExample("\n".join([*shots, f"{names[query]}'s number is"]), values[query]))
    return examples
