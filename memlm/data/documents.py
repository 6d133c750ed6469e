"""Document recall in the style of SWDE and FDA (JRT, arXiv 2407.05483), generated offline, and a loader for
the public recall suite.

:func:`document_recall` writes semi-structured documents about made-up entities and asks for one attribute:

* an entity is a ``"person"``, ``"company"`` or ``"product"`` (:data:`KINDS`), named from built-in lists;
  each kind has :data:`MAX_ATTRIBUTES` attributes (:data:`ATTRIBUTES`), ``num_attributes`` of them are drawn
  in random order, and their values are drawn from built-in word lists and number ranges;
* ``style="lines"`` writes ``"{Kind}: {entity}"`` then one ``"{attribute}: {value}"`` line per attribute,
  joined by ``"\\n"``; ``style="html"`` writes one line ``<html><head><title>{entity}</title></head><body>
  <h1>{entity}</h1><table><tr><th>{attribute}</th><td>{value}</td></tr>...</table></body></html>`` (no spaces
  between the tags);
* one attribute, uniformly drawn, is asked: :attr:`RecallExample.key` is its name, and
  :attr:`RecallExample.answers` its value alone. Every value occurs exactly once in the context, ignoring
  case, in both styles (an example where one would not is drawn again), so the values of an example are
  distinct and the answer is found only on its own line or table row.

``document_recall(1, num_attributes=3)[0]``, with its plain and JRT prompts::

    context:       Company: Lakeshore Labs
                   Industry: mining
                   Phone: 555-4969
                   Revenue: $490 million
    key:           Phone
    answers:       ["555-4969"]
    entity:        Lakeshore Labs
    prompt:        context + " Phone:"
    jrt_prompt():  "Information about Phone. " + context + "\\n" + context + " Phone:"

and with ``style="html"`` the same example has the context ``<html><head><title>Lakeshore Labs</title></head>
<body><h1>Lakeshore Labs</h1><table><tr><th>Industry</th><td>mining</td></tr><tr><th>Phone</th><td>555-4969</td>
</tr><tr><th>Revenue</th><td>$490 million</td></tr></table></body></html>`` (one line).

The prompts are those of the SWDE and FDA tasks (``doc + " " + key + ":"``, and JRT's
``"Information about {key}. " + doc + "\\n" + doc + " " + key + ":"``; see :mod:`memlm.data.prompting`), and a
generation is scored with :func:`memlm.eval.contains_any` on its :func:`memlm.eval.first_line`. The examples
are drawn with a local ``random.Random`` seeded by ``seed``: the same arguments give the same examples, and
the entities, attributes and values do not depend on ``style``.

:func:`load_based_recall` reads the suite's public datasets (:data:`BASED_RECALL`) with
``datasets.load_dataset`` into the same :class:`RecallExample` objects, rebuilding the prompts of
HazyResearch's lm-eval tasks ``based_*`` (plain) and ``based_*_twice`` (:meth:`RecallExample.jrt_prompt`).
The columns it reads are those that this task code reads; they were not checked against the datasets
themselves, which cannot be downloaded where this was written. By the columns present:

* ``key`` and ``text`` (SWDE, FDA): the document is ``text`` cut before ``"Summary of information above..."``,
  stripped of the trailing ``"{key}:"`` (repeatedly, ignoring case), of whitespace and of periods, then ended
  with ``"."``; the key gets an upper-case first letter, as the tasks write it;
* ``text``, ``context`` and ``question`` (SQuAD): ``text`` is the plain prompt, the passage (``context`` up to
  ``"Question:"``, stripped) then the cloze question, which becomes the key; ``question`` leads the JRT prompt;
* ``question`` and ``context`` (TriviaQA, NQ, Drop): the passage is ``context`` without TriviaQA's
  ``[PAR]``, ``[DOC]`` and ``[TLE]`` markers and a trailing question, stripped of whitespace and periods and
  ended with ``"."``; the key is ``question``, and ``orig_question`` (stripped of colons), when there is one,
  leads the JRT prompt, else ``question`` does;
* the gold answers come from ``value``, else ``answers`` (a list, or SQuAD's ``{"text": [...]}``), else
  ``answer``.

Up to whitespace, these are the tasks' prompts: the tasks keep some of the datasets' own (FDA's before the
period they add, SQuAD's before ``"Question:"``), where the prompts here join context and key with one space.
Columns of no known layout raise a ValueError that lists them.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memlm.data import prompting

KINDS = ("person", "company", "product")
STYLES = ("lines", "html")
BASED_RECALL = {
    "swde": "hazyresearch/based-swde-v2",
    "fda": "hazyresearch/based-fda",
    "squad": "hazyresearch/based-squad",
    "triviaqa": "hazyresearch/based_triviaqa",
    "drop": "hazyresearch/based_drop",
    "nq_512": "hazyresearch/based_nq_512",
    "nq_1024": "hazyresearch/based_nq_1024",
    "nq_2048": "hazyresearch/based_nq_2048",
}
"""Short names of the recall suite's datasets and their Hugging Face repositories (validation split)."""

_FIRST_NAMES = """
    Ada Boris Clara Dmitri Elena Farid Greta Hugo Ingrid Jonas Keiko Lars Mara Nadia Oskar Priya Quentin Rosa
    Stefan Tamsin Ulric Vera Wendell Ximena Yusuf Zelda Anton Beatrix Cyrus Delphine Emil Freya Gideon Hana Ivo
    Juno Kasimir Livia Matteo Nell
"""
FIRST_NAMES = tuple(_FIRST_NAMES.split())
_LAST_NAMES = """
    Lindqvist Okafor Marchetti Haverford Novak Castellanos Brandt Ishikawa Delacroix Abernathy Kowalski Fairbanks
    Oyelaran Petrov Quist Rasmussen Szabo Thornbury Valdez Whitlock Yamada Zielinski Ashdown Bergstrom Carvalho
    Dunmore Eriksen Falkner Gallardo Hollis Iverson Jovanovic Kemper Larkspur Moreau Nakagawa Ostrander Pellegrini
    Renshaw Sandoval
"""
LAST_NAMES = tuple(_LAST_NAMES.split())
_CITIES = """
    Porto Tbilisi Valparaiso Winnipeg Leipzig Kyoto Adelaide Bergen Cusco Dunedin Edinburgh Fresno Graz Hobart Izmir
    Jaipur Krakow Lyon Mombasa Nantes Oaxaca Perth Quebec Rotterdam Seville Tampere Utrecht Vilnius Windhoek Zagreb
"""
CITIES = tuple(_CITIES.split())
_COUNTRIES = """
    Portugal Vietnam Mexico Poland Malaysia Denmark Chile Morocco Taiwan Estonia Canada Kenya Japan Italy Turkey
    Brazil Sweden India Germany Peru
"""
COUNTRIES = tuple(_COUNTRIES.split())
_OCCUPATIONS = """
    pharmacist architect carpenter geologist librarian veterinarian electrician translator astronomer baker pilot
    surveyor florist chemist journalist plumber dentist economist sculptor welder
"""
OCCUPATIONS = tuple(_OCCUPATIONS.split())
COLORS = (
    "crimson", "teal", "maroon", "indigo", "violet", "amber", "turquoise", "lavender", "beige", "magenta",
    "olive green", "navy blue", "charcoal", "ivory", "scarlet", "emerald", "mustard", "coral", "burgundy", "saffron",
)
HOBBIES = (
    "birdwatching", "pottery", "chess", "kayaking", "knitting", "rock climbing", "beekeeping", "calligraphy",
    "origami", "fencing", "gardening", "juggling", "sailing", "woodworking", "photography", "archery",
    "salsa dancing", "cycling", "stargazing", "board games",
)
_COMPANY_WORDS = """
    Northwind Bluepeak Ironbark Silverline Redfern Clearwater Stonegate Brightpath Oakridge Suncrest Greyhaven
    Westbrook Highmoor Lakeshore Goldleaf Pinecrest Starling Copperfield Evergreen Riverton
"""
COMPANY_WORDS = tuple(_COMPANY_WORDS.split())
_COMPANY_SUFFIXES = "Labs Systems Industries Holdings Group Partners Works Dynamics Corporation Ventures"
COMPANY_SUFFIXES = tuple(_COMPANY_SUFFIXES.split())
INDUSTRIES = (
    "logistics", "biotechnology", "renewable energy", "aerospace", "textiles", "semiconductors", "publishing",
    "shipbuilding", "agriculture", "cybersecurity", "pharmaceuticals", "robotics", "mining", "insurance",
    "tourism", "telecommunications", "furniture", "food processing", "steelmaking", "video games",
)
_BRANDS = """
    Zephyr Aurora Vertex Nimbus Quasar Helix Orion Solace Tundra Kestrel Lumen Cobalt Falcon Mistral Nova Pulsar
    Sierra Tempest Vantage Zenith
"""
BRANDS = tuple(_BRANDS.split())
MATERIALS = (
    "aluminum", "stainless steel", "walnut wood", "carbon fiber", "bamboo", "titanium", "recycled plastic",
    "ceramic", "leather", "tempered glass", "oak", "brass", "silicone", "linen", "copper",
)
_SUMMARY = "Summary of information above..."  # SWDE's text continues with a summary after this marker
_TRIVIAQA_MARKERS = re.compile(r"\[PAR\]|\[DOC\]|\[TLE\]")

Draw = Callable[[random.Random, str], str]  # (rng, entity) -> value


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _company(rng: random.Random) -> str:
    return f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_SUFFIXES)}"


def _product(rng: random.Random) -> str:
    return f"{rng.choice(BRANDS)} {rng.choice('ABCDEFHKLMPRSTVXZ')}{rng.randrange(100, 1000, 10)}"


def _phone(rng: random.Random, entity: str) -> str:
    return f"555-{rng.randrange(10_000):04d}"


def _model_number(rng: random.Random, entity: str) -> str:
    return f"{''.join(rng.choices('ABCDEFGHJKLMNPRSTVWXYZ', k=2))}-{rng.randrange(1000, 10_000)}"


def _pick(words: Sequence[str]) -> Draw:
    """A draw of one of ``words``."""
    return lambda rng, entity: rng.choice(words)


def _number(low: int, high: int, template: str = "{}") -> Draw:
    """A draw of ``template`` filled with an int in ``[low, high]``."""
    return lambda rng, entity: template.format(rng.randint(low, high))


_NAMERS: dict[str, Callable[[random.Random], str]] = {"person": _person, "company": _company, "product": _product}
ATTRIBUTES: dict[str, dict[str, Draw]] = {
    "person": {
        "Occupation": _pick(OCCUPATIONS),
        "Hometown": _pick(CITIES),
        "Birth year": _number(1930, 2005),
        "Employer": lambda rng, entity: _company(rng),
        "Phone": _phone,
        "Email": lambda rng, entity: entity.lower().replace(" ", ".") + "@example.com",
        "Favorite color": _pick(COLORS),
        "Hobby": _pick(HOBBIES),
        "Height": _number(150, 200, "{} cm"),
        "University": lambda rng, entity: f"University of {rng.choice(CITIES)}",
    },
    "company": {
        "Founded": _number(1850, 2020),
        "Headquarters": _pick(CITIES),
        "CEO": lambda rng, entity: _person(rng),
        "Founder": lambda rng, entity: _person(rng),
        "Industry": _pick(INDUSTRIES),
        "Employees": lambda rng, entity: f"{rng.randint(12, 250_000):,}",
        "Ticker": lambda rng, entity: "".join(rng.choices(string.ascii_uppercase, k=4)),
        "Revenue": _number(2, 950, "${} million"),
        "Phone": _phone,
        "Website": lambda rng, entity: "www." + entity.lower().replace(" ", "") + ".com",
    },
    "product": {
        "Manufacturer": lambda rng, entity: _company(rng),
        "Price": lambda rng, entity: f"${rng.randint(19, 2999)}.{rng.choice(('00', '49', '95', '99'))}",
        "Weight": lambda rng, entity: f"{rng.randint(2, 95) / 10} kg",
        "Color": _pick(COLORS),
        "Model number": _model_number,
        "Release year": _number(1995, 2024),
        "Warranty": lambda rng, entity: f"{rng.choice((6, 12, 18, 24, 36, 48, 60))} months",
        "Material": _pick(MATERIALS),
        "Country of origin": _pick(COUNTRIES),
        "Battery life": _number(4, 72, "{} hours"),
    },
}
"""For each kind, its attributes and how a value is drawn (from the generator and the entity's name)."""
MAX_ATTRIBUTES = min(len(attributes) for attributes in ATTRIBUTES.values())


@dataclass
class RecallExample:
    """One recall example: a context, what is asked about it, and the gold answers.

    Attributes:
        context: the document or passage, without the question.
        key: the queried attribute (``"Phone"``) or the question; it ends both prompts.
        answers: the gold answers; a generation is right when it contains one, ignoring case.
        entity: the subject of a generated document (``"Lakeshore Labs"``); ``""`` for loaded rows.
        answer_cue: what follows ``key``: ``":"`` after an attribute, ``""`` after a question.
        header: the lead of the JRT prompt; None for the paper's document lead ``"Information about {key}."``.
    """

    context: str
    key: str
    answers: list[str]
    entity: str = ""
    answer_cue: str = ":"
    header: str | None = None

    @property
    def prompt(self) -> str:
        """``context + " " + key + answer_cue``: the plain prompt (``doc + " " + key + ":"`` for a document)."""
        return prompting.plain_prompt(self.context, self.key + self.answer_cue)

    def jrt_prompt(self, repeats: int = 2) -> str:
        """JRT-Prompt with ``repeats`` copies of the context (:func:`memlm.data.prompting.jrt_prompt`).

        For a document (``header`` None, ``answer_cue`` ``":"``) and ``repeats=2`` this is the paper's SWDE
        and FDA format ``"Information about {key}. " + context + "\\n" + context + " " + key + ":"``; for a
        question, ``header + " " + context + "\\n" + context + " " + key``. ``repeats=1`` gives :attr:`prompt`.
        """
        header = f"Information about {self.key}." if self.header is None else self.header
        return prompting.jrt_prompt(self.context, self.key, repeats, answer_cue=self.answer_cue, header=header)


def _render(style: str, kind: str, entity: str, pairs: Sequence[tuple[str, str]]) -> str:
    """The document of ``entity`` with its ``(attribute, value)`` pairs, in ``style``."""
    if style == "lines":
        return "\n".join([f"{kind.capitalize()}: {entity}"] + [f"{attribute}: {value}" for attribute, value in pairs])
    rows = "".join(f"<tr><th>{attribute}</th><td>{value}</td></tr>" for attribute, value in pairs)
    return f"<html><head><title>{entity}</title></head><body><h1>{entity}</h1><table>{rows}</table></body></html>"


def document_recall(
    num_examples: int,
    num_attributes: int = 6,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    style: str = "lines",
) -> list[RecallExample]:
    """SWDE/FDA-style document recall examples, generated offline (see the module notes for the format).

    Args:
        num_examples: number of examples.
        num_attributes: attributes per document, at most :data:`MAX_ATTRIBUTES`.
        seed: seed of the local generator.
        kinds: the kinds of entity to draw from (uniformly), a non-empty selection of :data:`KINDS`.
        style: ``"lines"`` (``"attribute: value"`` lines) or ``"html"`` (a one-line HTML table).

    Returns:
        ``num_examples`` examples, each with one answer, which occurs exactly once in its context.

    Raises:
        ValueError: for a size that is not a positive int, ``num_attributes > MAX_ATTRIBUTES``, an empty
            ``kinds`` or one not in :data:`KINDS`, or an unknown ``style``.
    """
    for name, value in {"num_examples": num_examples, "num_attributes": num_attributes}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_attributes > MAX_ATTRIBUTES:
        raise ValueError(f"num_attributes must be at most {MAX_ATTRIBUTES} (attributes per kind), got {num_attributes}")
    if isinstance(kinds, str) or len(kinds) == 0 or any(kind not in KINDS for kind in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of {KINDS}, got {kinds!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")

    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        while True:  # redraw until every value occurs once, ignoring case, in the documents of both styles
            kind = rng.choice(kinds)
            entity = _NAMERS[kind](rng)
            attributes = rng.sample(list(ATTRIBUTES[kind]), num_attributes)
            pairs = [(attribute, ATTRIBUTES[kind][attribute](rng, entity)) for attribute in attributes]
            documents = {name: _render(name, kind, entity, pairs).lower() for name in STYLES}
            if all(document.count(value.lower()) == 1 for document in documents.values() for _, value in pairs):
                break
        key, value = pairs[rng.randrange(num_attributes)]
        examples.append(RecallExample(_render(style, kind, entity, pairs), key, [value], entity))
    return examples


def _answers(value: object, column: str, where: str) -> list[str]:
    """The gold answers of a row from its ``column`` cell: a str, a list of str, or ``{"text": [...]}``."""
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    answers = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not answers or not all(isinstance(answer, str) for answer in answers):
        raise ValueError(
            f"{where} has no gold answer in column {column!r}: expected a non-empty str, a list of str or "
            f"{{'text': [...]}}, got {value!r}"
        )
    return answers


def _text(row: dict, column: str, where: str) -> str:
    """``row[column]`` stripped, which must be a non-empty str."""
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} has no text in column {column!r}, got {value!r}")
    return value.strip()


def _cut_suffix(text: str, suffix: str) -> str:
    """``text`` stripped, without ``suffix`` at its end (repeatedly, ignoring case, stripping again each time)."""
    text = text.strip()
    while text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)].strip()
    return text


def _document_row(row: dict, answers: list[str], where: str) -> RecallExample:
    """A SWDE/FDA row (``text``, ``key``) as its document, capitalized key and answers."""
    key = _text(row, "key", where)
    text = _cut_suffix(_text(row, "text", where).split(_SUMMARY)[0], f"{key}:")
    return RecallExample(text.strip(".") + ".", key[:1].upper() + key[1:], answers)


def _cloze_row(row: dict, answers: list[str], where: str) -> RecallExample:
    """A SQuAD row: ``text`` is the passage (``context`` before ``"Question:"``) then the key."""
    passage = _text(row, "context", where).split("Question:")[0].strip()
    text = _text(row, "text", where)
    key = text[len(passage) :].strip()
    if not passage or not text.startswith(passage) or not key:
        raise ValueError(
            f"{where}: its text does not start with its passage (context before 'Question:') followed by the "
            f"question, so the two cannot be told apart; text={text[:80]!r}..."
        )
    return RecallExample(passage, key, answers, answer_cue="", header=_text(row, "question", where))


def _question_row(row: dict, answers: list[str], where: str) -> RecallExample:
    """A TriviaQA/NQ/Drop row: a passage (``context``, else ``text``) and a question, led in JRT by
    ``orig_question`` when there is one."""
    question = _text(row, "question", where)
    passage = _TRIVIAQA_MARKERS.sub("", _text(row, "context" if "context" in row else "text", where))
    passage = _cut_suffix(passage, question).strip(".").strip() + "."
    header = (row.get("orig_question") or "").strip().strip(":").strip() or question
    return RecallExample(passage, question, answers, answer_cue="", header=header)


def load_based_recall(name: str, split: str = "validation", limit: int | None = None) -> list[RecallExample]:
    """The rows of one of the recall suite's datasets as :class:`RecallExample` objects (see the module notes).

    Reads ``datasets.load_dataset(repo, split=split)``, so it needs the Hugging Face Hub or its cache. The
    column names are those of HazyResearch's lm-eval tasks; they were not verified against the datasets here.

    Args:
        name: a short name of :data:`BASED_RECALL` (``"swde"``, ``"nq_1024"``, ...) or its repository
            (``"hazyresearch/based-swde-v2"``).
        split: the split to read; the suite evaluates on ``"validation"``.
        limit: read only the first ``limit`` rows; None reads them all.

    Returns:
        One example per row, in order; ``entity`` is ``""``.

    Raises:
        ValueError: for an unknown ``name``, a ``limit`` that is neither None nor a positive int, columns of no
            known layout or with no answer column (the message lists them), or a row without a gold answer or
            text (or, for SQuAD, whose text does not start with its passage).
    """
    repo = BASED_RECALL.get(name, name if name in BASED_RECALL.values() else None)
    if repo is None:
        raise ValueError(f"name must be one of {tuple(BASED_RECALL)} or their repositories, got {name!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")

    import datasets

    dataset = datasets.load_dataset(repo, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    columns = set(dataset.column_names)
    answer_column = next((column for column in ("value", "answers", "answer") if column in columns), None)
    if answer_column is not None and {"key", "text"} <= columns:
        build = _document_row
    elif answer_column is not None and {"text", "context", "question"} <= columns:
        build = _cloze_row
    elif answer_column is not None and "question" in columns and columns & {"context", "text"}:
        build = _question_row
    else:
        raise ValueError(
            f"{repo} (split {split!r}) has columns {sorted(columns)}, of no known layout: expected 'key' and "
            "'text' (SWDE, FDA), 'text', 'context' and 'question' (SQuAD), or 'question' and 'context' or 'text' "
            "(TriviaQA, NQ, Drop), with the answers in 'value', 'answers' or 'answer'"
        )
    return [
        build(row, _answers(row[answer_column], answer_column, where), where)
        for index, row in enumerate(dataset)
        for where in [f"row {index} of {repo}"]
    ]
