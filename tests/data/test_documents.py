import re

import datasets
import pytest

from memlm.data import RecallExample, document_recall, load_based_recall
from memlm.data.documents import ATTRIBUTES, BASED_RECALL, KINDS, MAX_ATTRIBUTES, STYLES
from memlm.eval import contains_any, first_line

HTML_RE = re.compile(
    r"<html><head><title>(?P<entity>[^<]+)</title></head><body><h1>(?P=entity)</h1><table>"
    r"(?P<rows>(?:<tr><th>[^<]+</th><td>[^<]+</td></tr>)+)</table></body></html>"
)


def parse_lines(context):
    """``(kind, entity, [(attribute, value), ...])`` of a ``"lines"`` document."""
    lines = [line.split(": ", 1) for line in context.split("\n")]
    assert all(len(line) == 2 for line in lines)
    (kind, entity), *pairs = lines
    return kind, entity, [tuple(pair) for pair in pairs]


def parse_html(context):
    match = HTML_RE.fullmatch(context)
    assert match, context
    return match["entity"], re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", match["rows"])


@pytest.mark.parametrize("num_attributes", [1, 4, MAX_ATTRIBUTES])
def test_lines_format_prompts_and_answers(num_attributes):
    for example in document_recall(100, num_attributes=num_attributes, seed=num_attributes):
        kind, entity, pairs = parse_lines(example.context)
        assert kind.lower() in KINDS and entity == example.entity
        attributes = [attribute for attribute, _ in pairs]
        assert len(attributes) == len(set(attributes)) == num_attributes
        assert set(attributes) <= set(ATTRIBUTES[kind.lower()])
        assert example.answers == [dict(pairs)[example.key]]
        context = example.context.lower()
        assert all(context.count(value.lower()) == 1 for _, value in pairs)  # distinct, none inside another
        answer = example.answers[0]
        assert example.prompt == example.context + " " + example.key + ":"
        assert example.jrt_prompt() == (
            f"Information about {example.key}. " + example.context + "\n" + example.context + f" {example.key}:"
        )
        assert example.jrt_prompt(repeats=1) == example.prompt
        assert example.prompt.lower().count(answer.lower()) == 1
        assert example.jrt_prompt().lower().count(answer.lower()) == 2
        assert example.jrt_prompt(repeats=3).lower().count(answer.lower()) == 3
        # the gold line scores 1 under the suite's score, any other value 0
        assert contains_any(first_line(f" {answer}\n{kind}: x"), example.answers) == 1.0
        assert all(contains_any(value, example.answers) == 0.0 for _, value in pairs if value != answer)


def test_docstring_example():
    (example,) = document_recall(1, num_attributes=3)
    assert example == RecallExample(
        "Company: Lakeshore Labs\nIndustry: mining\nPhone: 555-4969\nRevenue: $490 million",
        "Phone",
        ["555-4969"],
        "Lakeshore Labs",
    )
    assert example.prompt.endswith("$490 million Phone:")


def test_html_style_holds_the_same_entities_keys_and_values():
    lines = document_recall(50, num_attributes=5, seed=11)
    html = document_recall(50, num_attributes=5, seed=11, style="html")
    for a, b in zip(lines, html, strict=True):
        assert "\n" not in b.context
        entity, pairs = parse_html(b.context)
        assert (entity, pairs) == (a.entity, parse_lines(a.context)[2])
        assert (b.key, b.answers, b.entity) == (a.key, a.answers, a.entity)
        assert b.context.lower().count(b.answers[0].lower()) == 1
        assert b.prompt == b.context + f" {b.key}:"
        assert b.jrt_prompt() == f"Information about {b.key}. {b.context}\n{b.context} {b.key}:"


def test_kinds_and_query_positions_vary():
    examples = document_recall(300, num_attributes=4, seed=5)
    assert {parse_lines(example.context)[0] for example in examples} == {"Person", "Company", "Product"}
    positions = {[a for a, _ in parse_lines(example.context)[2]].index(example.key) for example in examples}
    assert positions == {0, 1, 2, 3}
    for example in document_recall(20, seed=5, kinds=["product"]):
        assert example.context.startswith(f"Product: {example.entity}\n")


def test_deterministic_by_seed():
    a, b, c = document_recall(20, seed=3), document_recall(20, seed=3), document_recall(20, seed=4)
    assert a == b
    assert a != c and sum(x.context != y.context for x, y in zip(a, c, strict=True)) >= 18
    assert len({example.context for example in a}) == 20  # examples differ within a call


def test_recall_example_defaults_and_question_form():
    example = RecallExample("Born: 1815.", "Born", ["1815"])
    assert example.prompt == "Born: 1815. Born:"
    assert example.jrt_prompt() == "Information about Born. Born: 1815.\nBorn: 1815. Born:"
    qa = RecallExample("Ada was born in 1815.", "Ada was born in", ["1815"], answer_cue="", header="When was Ada born?")
    assert qa.prompt == "Ada was born in 1815. Ada was born in"
    assert qa.jrt_prompt() == "When was Ada born? Ada was born in 1815.\nAda was born in 1815. Ada was born in"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_examples": 0}, "num_examples"),
        ({"num_examples": 2.0}, "num_examples"),
        ({"num_attributes": 0}, "num_attributes"),
        ({"num_attributes": True}, "num_attributes"),
        ({"num_attributes": MAX_ATTRIBUTES + 1}, "num_attributes"),
        ({"kinds": ()}, "kinds"),
        ({"kinds": "person"}, "kinds"),
        ({"kinds": ["person", "movie"]}, "kinds"),
        ({"style": "json"}, "style"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        document_recall(**({"num_examples": 2} | kwargs))


# --- load_based_recall, on local datasets shaped like the suite's (the real ones are not downloaded) ---


def harness_swde(doc, twice=False):
    """HazyResearch's SWDE / SWDETwice ``doc_to_text``, for comparison."""
    text = doc["text"].split("Summary of information above...")[0]
    while text.lower().endswith(doc["key"].lower() + ":"):
        text = text[: -len(doc["key"] + ":")]
    question = doc["key"][0].upper() + doc["key"][1:] + ":"
    if not twice:
        return text.strip("\n").strip().strip("\n").strip().strip(".") + ". " + question
    out = text.strip("\n").strip(".").strip().strip("\n").strip()
    out = out if out.endswith(".") else out + "."
    return f"Information about {question.strip(':')}. " + out + "\n" + out + " " + question


def harness_qa_twice(doc):
    """HazyResearch's NQ / TriviaQA / Drop ``doc_to_text`` of the ``_twice`` tasks (on a context without markers)."""
    context, question = doc["context"].strip(), doc["question"].strip()
    while context.lower().endswith(question.lower()):
        context = context[: -len(question)]
    out = context.strip().strip(".").strip() + "."
    return doc["orig_question"].strip(":") + " " + out + "\n" + out + " " + question


SWDE_ROWS = {
    "text": [
        "Title: Blue Harbor. Director: Ana Ruiz. Year: 1999. Summary of information above... director:",
        "Title: Red Sky\nDirector: Li Wei\nYear: 2004\nyear:",
    ],
    "key": ["director", "year"],
    "value": ["Ana Ruiz", "2004"],
}
QA_ROWS = {
    "context": [
        "Ada Lovelace published the first algorithm in 1843. Who published the first algorithm?",
        "Alan Turing was born in Maida Vale, London.",
    ],
    "question": ["Who published the first algorithm?", "Where was Alan Turing born?"],
    "orig_question": ["who published the first algorithm:", "where was alan turing born"],
    "answers": [["Ada Lovelace", "Lovelace"], ["Maida Vale"]],
}


def rows_of(columns):
    """The rows of a ``{column: values}`` table, as dicts."""
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


@pytest.fixture
def hub(monkeypatch):
    """Serve local datasets as ``datasets.load_dataset(repo, split=...)``; records the calls."""
    tables, calls = {}, []

    def load_dataset(path, split=None, **kwargs):
        calls.append((path, split, kwargs))
        return datasets.Dataset.from_dict(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


def test_loads_swde_and_fda_documents(hub):
    tables, calls = hub
    tables["hazyresearch/based-swde-v2"] = SWDE_ROWS
    tables["hazyresearch/based-fda"] = {
        "text": ["510(k) SUMMARY. Device name: FlowMax. Applicant: Acme Medical.\ndevice name:"],
        "key": ["device name"],
        "value": ["FlowMax"],
        "doc_id": ["K0001"],
    }
    swde = load_based_recall("swde")
    assert calls == [("hazyresearch/based-swde-v2", "validation", {})]
    assert [example.key for example in swde] == ["Director", "Year"]
    assert [example.answers for example in swde] == [["Ana Ruiz"], ["2004"]]
    assert swde[0].context == "Title: Blue Harbor. Director: Ana Ruiz. Year: 1999."
    assert swde[1].context == "Title: Red Sky\nDirector: Li Wei\nYear: 2004."
    for example, row in zip(swde, rows_of(SWDE_ROWS), strict=True):
        assert example.prompt == harness_swde(row)
        assert example.jrt_prompt() == harness_swde(row, twice=True)
        assert example.entity == ""
    (fda,) = load_based_recall("hazyresearch/based-fda", split="test")
    assert calls[-1] == ("hazyresearch/based-fda", "test", {})
    assert fda.prompt == "510(k) SUMMARY. Device name: FlowMax. Applicant: Acme Medical. Device name:"
    assert fda.jrt_prompt() == (
        "Information about Device name. 510(k) SUMMARY. Device name: FlowMax. Applicant: Acme Medical.\n"
        "510(k) SUMMARY. Device name: FlowMax. Applicant: Acme Medical. Device name:"
    )


def test_loads_question_answering(hub):
    tables, _ = hub
    tables["hazyresearch/based_nq_1024"] = QA_ROWS
    examples = load_based_recall("nq_1024")
    assert [example.answers for example in examples] == QA_ROWS["answers"]
    first, second = examples
    assert first.context == "Ada Lovelace published the first algorithm in 1843."  # the trailing question is cut
    assert first.prompt == "Ada Lovelace published the first algorithm in 1843. Who published the first algorithm?"
    assert first.header == "who published the first algorithm"
    assert second.prompt == "Alan Turing was born in Maida Vale, London. Where was Alan Turing born?"
    for example, row in zip(examples, rows_of(QA_ROWS), strict=True):
        assert example.answer_cue == "" and example.jrt_prompt() == harness_qa_twice(row)

    tables["hazyresearch/based_triviaqa"] = {
        "context": ["[DOC] [TLE] Ada Lovelace [PAR] Ada Lovelace was born in London in 1815."],
        "question": ["Ada Lovelace was born in the city of"],
        "orig_question": ["Where was Ada Lovelace born?"],
        "answers": [["London"]],
    }
    (trivia,) = load_based_recall("triviaqa")
    assert trivia.context == "Ada Lovelace  Ada Lovelace was born in London in 1815."  # markers removed, as the task
    context, question = trivia.context, "Ada Lovelace was born in the city of"
    assert trivia.jrt_prompt() == f"Where was Ada Lovelace born? {context}\n{context} {question}"
    # without orig_question, the question leads the JRT prompt; a single answer may be a str
    tables["hazyresearch/based_drop"] = {
        "context": ["The game ended 24-17."],
        "question": ["Final score?"],
        "answer": ["24-17"],
    }
    (drop,) = load_based_recall("drop")
    assert drop.answers == ["24-17"]
    assert drop.jrt_prompt() == "Final score? The game ended 24-17.\nThe game ended 24-17. Final score?"


def test_loads_squad_cloze(hub):
    tables, _ = hub
    passage = "The Normans were in Normandy in the 10th and 11th centuries."
    cloze = "The Normans were in Normandy in the"
    tables["hazyresearch/based-squad"] = {
        "text": [f"{passage} {cloze}", f"{passage} {cloze}"],
        "context": [passage, f"{passage} Question: When were the Normans in Normandy?"],
        "question": ["When were the Normans in Normandy?"] * 2,
        "value": ["10th and 11th centuries"] * 2,
        "answers": [{"text": ["ignored: value comes first"], "answer_start": [0]}] * 2,
    }
    for example in load_based_recall("squad"):
        assert (example.context, example.key, example.answers) == (passage, cloze, ["10th and 11th centuries"])
        assert example.prompt == f"{passage} {cloze}"  # the text column, as the task's prompt
        assert example.jrt_prompt() == f"When were the Normans in Normandy? {passage}\n{passage} {cloze}"
    tables["hazyresearch/based-squad"] = {
        "text": [f"{passage} {cloze}"],
        "context": [passage],
        "question": ["When?"],
        "answers": [{"text": ["10th and 11th centuries", "10th"], "answer_start": [0, 0]}],
    }
    assert load_based_recall("squad")[0].answers == ["10th and 11th centuries", "10th"]
    tables["hazyresearch/based-squad"]["text"] = ["Another passage entirely. The Normans were in"]
    with pytest.raises(ValueError, match="row 0 of hazyresearch/based-squad"):
        load_based_recall("squad")


def test_limit(hub):
    tables, _ = hub
    tables["hazyresearch/based_nq_512"] = {name: column * 3 for name, column in QA_ROWS.items()}
    assert len(load_based_recall("nq_512")) == 6
    assert load_based_recall("nq_512", limit=2) == load_based_recall("nq_512")[:2]
    assert len(load_based_recall("nq_512", limit=100)) == 6


def test_unknown_layout_lists_the_columns(hub):
    tables, _ = hub
    tables["hazyresearch/based_nq_2048"] = {"passage": ["x"], "label": ["y"]}
    with pytest.raises(ValueError, match=r"\['label', 'passage'\]"):
        load_based_recall("nq_2048")
    tables["hazyresearch/based_nq_2048"] = {"context": ["x"], "question": ["q"], "gold": ["y"]}  # no answer column
    with pytest.raises(ValueError, match="'gold'"):
        load_based_recall("nq_2048")


def test_bad_rows(hub):
    tables, _ = hub
    tables["hazyresearch/based_nq_512"] = {"context": ["a", "b"], "question": ["q", "q"], "answers": [["x"], []]}
    with pytest.raises(ValueError, match="row 1 of hazyresearch/based_nq_512 has no gold answer"):
        load_based_recall("nq_512")
    tables["hazyresearch/based-swde-v2"] = {"text": ["Year: 1999. year:"], "key": [" "], "value": ["1999"]}
    with pytest.raises(ValueError, match="row 0 of hazyresearch/based-swde-v2 has no text in column 'key'"):
        load_based_recall("swde")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"name": "swde-v2"}, "name"),
        ({"name": "based-fda"}, "name"),
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
    ],
)
def test_bad_loader_arguments(hub, kwargs, name):
    _, calls = hub
    with pytest.raises(ValueError, match=name):
        load_based_recall(**({"name": "swde"} | kwargs))
    assert calls == []  # checked before any download


def test_dataset_names():
    assert set(BASED_RECALL) == {"swde", "fda", "squad", "triviaqa", "drop", "nq_512", "nq_1024", "nq_2048"}
    assert all(repo.startswith("hazyresearch/based") for repo in BASED_RECALL.values())
    assert set(STYLES) == {"lines", "html"}
