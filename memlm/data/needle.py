"""Needle-in-a-haystack (NIAH) retrieval in the style of RULER (arXiv 2404.06654), with no download.

A needle is the sentence ``One of the special magic numbers for {key} is: {value}.``, with a key drawn from
the ~200 words of :data:`KEYS` and a random 7-digit value. The needles are inserted, at sentence boundaries,
into a haystack of sentences joined by single spaces, and the question asks for the value(s) of one key:

* ``haystack="repeat"``: the filler ``The grass is green. The sky is blue. The sun is yellow. Here we go.
  There and back again.`` repeated; ``haystack="needles"``: distractor needles (RULER's "needle" haystack)
  whose keys are never those of the example's needles, and whose values are distinct from all other values
  in the example; their keys are distinct until every other word of :data:`KEYS` has been used once.
* ``variant="single"``: one needle. ``"multikey"``: the target needle and ``num_keys - 1`` distractor
  needles with other keys; only the target key is asked. ``"multivalue"``: ``num_values`` needles with the
  same key and distinct values, all asked. The needles' keys are distinct words and their values distinct
  numbers.
* The target (first) needle goes after ``round(depth * n)`` of the ``n`` haystack sentences; with ``m``
  needles, needle ``j`` goes at depth ``(depth + j / m) % 1``, so the needles are evenly spread over the
  haystack, wrapping around its end (needles at the same boundary keep this order).
* The context (haystack and needles, without the question) is measured in tokens of ``tokenizer``
  (``len(tokenizer(text, add_special_tokens=False)["input_ids"])``) or in whitespace-separated words. It
  holds the most haystack sentences that keep it within ``context_length``, found with a few measurements
  of the whole context (an estimate from the length per sentence, then corrections). So it is at most
  ``context_length`` and, for a measure that adds up over sentences (words, bytes), shorter by less than
  one haystack sentence and its joining space: under 4 words for "repeat", under 10 for "needles".

``niah(1, 40)[0]``, a ``"single"`` example of 37 words (the next filler sentence would make 41), with the
needle after 4 of the 7 filler sentences (``round(0.5 * 7)``); the context is one line:

    context:        The grass is green. The sky is blue. The sun is yellow. Here we go. One of the special
                    magic numbers for spider is: 8056020. There and back again. The grass is green. The sky is blue.
    question:       What is the special magic number for spider mentioned in the provided text?
    answer_prefix:  The special magic number for spider mentioned in the provided text is
    answers:        ["8056020"]

:attr:`NeedleExample.prompt` joins them as ``context + "\\n" + question + " " + answer_prefix``, and
:attr:`NeedleExample.document` appends ``" 8056020."`` to that; :meth:`NeedleExample.jrt_prompt` is JRT-Prompt
(the question, the context twice, the question and the answer prefix). :func:`niah_score` scores an output by the
fraction of the gold values it contains, case-insensitively, as RULER's ``string_match_all``.

The examples are drawn with a local ``random.Random`` seeded by ``seed``: the same arguments give the same
examples, and the keys and values of an example do not depend on ``context_length``, ``depth``,
``tokenizer`` or ``haystack``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from memlm.data import prompting

_KEY_WORDS = """
    anchor apple arrow badge basket beach bell blanket boat bottle bread bridge brush bucket button cabin
    cable camera candle canvas carpet castle chair cherry circle cloud coast coffee coin comet copper cotton
    crystal desert diamond dinner doctor dragon drum eagle engine feather fence field finger flame flower
    forest fountain garden gate glass glove hammer harbor helmet honey horse island jacket jungle kettle
    kitchen ladder lake lantern lemon letter library lion magnet maple marble meadow mirror monkey mountain
    ocean orange owl paper parrot pencil pepper piano pillow planet pocket puzzle rabbit rainbow river rocket
    saddle salmon shadow shell silver spider spoon stone storm summer sunset table teacher thunder tiger
    tomato tower train tree trumpet tunnel turtle umbrella valley violin wagon wallet window winter wizard
    wolf zebra ancient angry bitter bold brave bright brisk calm careful cheerful clever cold curious daring
    dark distant eager early elegant empty fancy fierce fragile fresh friendly gentle giant golden graceful
    happy heavy hidden hollow honest humble jolly kind lazy little lively lonely lucky mellow mighty modern
    narrow noble odd patient polite proud quick quiet rapid rare rough royal rusty shiny silent simple
    sleepy smooth soft solid sour spicy steady sticky strange sturdy sweet swift tall tender tiny vivid warm
    wild wise wooden young
"""
KEYS = tuple(_KEY_WORDS.split())
"""The words keys are drawn from: common English nouns and adjectives, none of them in the filler."""
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
"""The sentences of the ``"repeat"`` haystack, in order."""
NEEDLE = "One of the special magic numbers for {key} is: {value}."
"""The needle sentence, RULER's with ``type_needle_v="numbers"``."""
VARIANTS = ("single", "multikey", "multivalue")
HAYSTACKS = ("repeat", "needles")
_SAMPLE_SENTENCES = 10  # haystack sentences measured together for the first estimate of the length per sentence


@dataclass
class NeedleExample:
    """One NIAH example: a context with needles, a question about one key, and the gold values.

    Attributes:
        context: the haystack sentences and needles, joined by single spaces.
        question: the question about the target key.
        answer_prefix: the start of the answer, which the model continues with the value(s).
        answers: the gold values, the target needle's first.
        context_length: the requested length of ``context`` (in tokens, or words without a tokenizer).
        depth: the requested relative depth of the target needle in the haystack.
    """

    context: str
    question: str
    answer_prefix: str
    answers: list[str]
    context_length: int
    depth: float

    @property
    def prompt(self) -> str:
        """``context + "\\n" + question + " " + answer_prefix``: the model's input, to continue with the answer."""
        return f"{self.context}\n{self.question} {self.answer_prefix}"

    @property
    def document(self) -> str:
        """``prompt + " " + ", ".join(answers) + "."``: the prompt with its answer, as a training document."""
        return f"{self.prompt} {', '.join(self.answers)}."

    def jrt_prompt(self, repeats: int = 2) -> str:
        """JRT-Prompt in the paper's question format (:func:`memlm.data.prompting.jrt_prompt`), then the answer prefix:
        ``question + " " + context + "\\n" + context + " " + question + " " + answer_prefix`` for ``repeats=2``.

        The question leads, so a recurrent model reads the haystack knowing which key is asked. ``repeats=1``
        gives ``context + " " + question + " " + answer_prefix``.
        """
        return f"{prompting.jrt_prompt(self.context, self.question, repeats)} {self.answer_prefix}"


def _draw_value(rng: random.Random, used: set[str]) -> str:
    """A random 7-digit number not in ``used``, which it joins."""
    while (value := str(rng.randrange(1_000_000, 10_000_000))) in used:
        pass
    used.add(value)
    return value


def _distractor_needles(rng: random.Random, excluded_keys: Sequence[str], used_values: set[str]) -> Iterator[str]:
    """Endless needles with keys not in ``excluded_keys`` (each key once per pass over the others, shuffled)."""
    keys = [key for key in KEYS if key not in excluded_keys]
    while True:
        rng.shuffle(keys)
        for key in keys:
            yield NEEDLE.format(key=key, value=_draw_value(rng, used_values))


def _insert(sentences: Sequence[str], needles: Sequence[str], depths: Sequence[float]) -> str:
    """``sentences`` with ``needles[j]`` after ``round(depths[j] * len(sentences))`` of them, joined by spaces."""
    parts = list(sentences)
    slots = sorted(((round(depth * len(sentences)), j) for j, depth in enumerate(depths)), reverse=True)
    for position, j in slots:  # back to front, so earlier positions stay valid and ties keep needle order
        parts.insert(position, needles[j])
    return " ".join(parts)


def _fit(
    stream: Iterator[str],
    needles: Sequence[str],
    depths: Sequence[float],
    context_length: int,
    measure: Callable[[str], int],
    unit: str,
) -> str:
    """The context with the most sentences of ``stream`` whose ``measure`` is at most ``context_length``.

    Keeps a bracket ``lo`` (fits) < ``hi`` (too long) of haystack sizes and probes the size that the length per
    sentence measured so far predicts, clamped inside the bracket; each probe measures the whole context once.
    """
    haystack: list[str] = []

    def context(n: int) -> str:
        haystack.extend(itertools.islice(stream, max(0, n - len(haystack))))
        return _insert(haystack[:n], needles, depths)

    best = context(0)
    base = measure(best)
    if base > context_length:
        raise ValueError(
            f"context_length={context_length} cannot hold the needles, which take {base} {unit}: "
            f"context_length must be at least {base} for them (their length varies with the keys)"
        )
    haystack.extend(itertools.islice(stream, _SAMPLE_SENTENCES))
    per_sentence = max(measure(" ".join(haystack)) / _SAMPLE_SENTENCES, 1.0)
    lo, hi = 0, None
    n = (context_length - base) // per_sentence
    while hi is None or hi - lo > 1:
        n = max(int(n), lo + 1) if hi is None else min(max(int(n), lo + 1), hi - 1)
        text = context(n)
        size = measure(text)
        if size <= context_length:
            lo, best = n, text
        else:
            hi = n
        if size > base:
            per_sentence = (size - base) / n
        n += math.floor((context_length - size) / per_sentence)
    return best


def niah(
    num_examples: int,
    context_length: int,
    depth: float = 0.5,
    variant: str = "single",
    tokenizer: Any = None,
    haystack: str = "repeat",
    num_keys: int = 4,
    num_values: int = 3,
    seed: int = 0,
) -> list[NeedleExample]:
    """RULER-style needle-in-a-haystack examples (see the module notes for the format and placement).

    Args:
        num_examples: number of examples.
        context_length: the most tokens (or words) of each context; at least what the needles take.
        depth: relative position of the target needle in the haystack, in [0, 1].
        variant: ``"single"``, ``"multikey"`` or ``"multivalue"``.
        tokenizer: a Hugging Face tokenizer to measure the context with, or None to count words.
        haystack: ``"repeat"`` (the filler sentences) or ``"needles"`` (distractor needles).
        num_keys: needles of a ``"multikey"`` example (the target and ``num_keys - 1`` distractors), at most
            ``len(KEYS) - 1``.
        num_values: needles, all with the target key, of a ``"multivalue"`` example.
        seed: seed of the local generator.

    Returns:
        ``num_examples`` examples; each has one answer, or ``num_values`` for ``"multivalue"``.

    Raises:
        ValueError: for a size that is not a positive int, ``num_keys >= len(KEYS)``, a ``depth`` outside
            [0, 1], an unknown ``variant`` or ``haystack``, or a ``context_length`` too short for the needles.
    """
    sizes = {
        "num_examples": num_examples,
        "context_length": context_length,
        "num_keys": num_keys,
        "num_values": num_values,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_keys >= len(KEYS):
        raise ValueError(f"num_keys must be at most {len(KEYS) - 1} (distinct words of KEYS), got {num_keys}")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if haystack not in HAYSTACKS:
        raise ValueError(f"haystack must be one of {HAYSTACKS}, got {haystack!r}")

    if tokenizer is None:
        unit = "words"

        def measure(text: str) -> int:
            return len(text.split())
    else:
        unit = "tokens"

        def measure(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(seed)
    num_needles = {"single": 1, "multikey": num_keys, "multivalue": num_values}[variant]
    depths = [(depth + j / num_needles) % 1.0 if j else depth for j in range(num_needles)]
    examples = []
    for _ in range(num_examples):
        keys = rng.sample(KEYS, num_keys if variant == "multikey" else 1)
        used_values: set[str] = set()
        values = [_draw_value(rng, used_values) for _ in range(num_needles)]
        needles = [NEEDLE.format(key=keys[j % len(keys)], value=value) for j, value in enumerate(values)]
        haystack_seed = rng.getrandbits(64)  # drawn for every haystack; its own generator never shifts `rng`
        if haystack == "repeat":
            stream = itertools.cycle(FILLER)
        else:
            stream = _distractor_needles(random.Random(haystack_seed), keys, used_values)
        key = keys[0]
        if variant == "multivalue":
            question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
            answer_prefix = f"The special magic numbers for {key} mentioned in the provided text are"
        else:
            question = f"What is the special magic number for {key} mentioned in the provided text?"
            answer_prefix = f"The special magic number for {key} mentioned in the provided text is"
        context = _fit(stream, needles, depths, context_length, measure, unit)
        answers = values if variant == "multivalue" else values[:1]
        examples.append(NeedleExample(context, question, answer_prefix, answers, context_length, depth))
    return examples


def niah_grid(
    context_lengths: Sequence[int],
    depths: Sequence[float],
    num_examples_per_cell: int,
    seed: int = 0,
    **kwargs: Any,
) -> list[NeedleExample]:
    """:func:`niah` examples for every context length and depth, lengths outer and depths inner.

    Args:
        context_lengths: the context lengths of the grid.
        depths: the depths of the grid.
        num_examples_per_cell: examples per (length, depth) cell.
        seed: seed of a local generator that draws one :func:`niah` seed per cell, in grid order, so that the
            cells hold different keys and values.
        **kwargs: the other arguments of :func:`niah` (``variant``, ``tokenizer``, ``haystack``, ...).

    Returns:
        ``len(context_lengths) * len(depths) * num_examples_per_cell`` examples, cell by cell; each carries its
        cell's ``context_length`` and ``depth``.

    Raises:
        ValueError: for an empty ``context_lengths`` or ``depths``, a ``num_examples_per_cell`` that is not a
            positive int, or any argument :func:`niah` rejects.
    """
    if len(context_lengths) == 0:
        raise ValueError(f"context_lengths must hold at least one length, got {context_lengths!r}")
    if len(depths) == 0:
        raise ValueError(f"depths must hold at least one depth, got {depths!r}")
    n = num_examples_per_cell
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"num_examples_per_cell must be a positive int, got {n!r}")
    seeds = random.Random(seed)
    return [
        example
        for context_length in context_lengths
        for depth in depths
        for example in niah(n, context_length, depth=depth, seed=seeds.getrandbits(64), **kwargs)
    ]


def niah_score(output: str, answers: Sequence[str]) -> float:
    """The fraction of ``answers`` found in ``output``, case-insensitively (RULER's ``string_match_all``).

    Raises:
        ValueError: for empty ``answers``.
    """
    if len(answers) == 0:
        raise ValueError("answers must hold at least one gold answer, got none")
    output = output.lower()
    return sum(answer.lower() in output for answer in answers) / len(answers)
