import pytest

from memlm.data.prompting import jrt_prompt, plain_prompt

DOC = "Company: Lakeshore Labs\nIndustry: mining\nPhone: 555-4969."
PASSAGE = "Ada Lovelace was born in London in 1815. She wrote the first published algorithm."
QUESTION = "Where was Ada Lovelace born?"


def test_paper_document_format():
    # HazyResearch's based_swde_twice and based_fda_twice:
    # "Information about {key}. " + doc + "\n" + doc + " " + key + ":"
    key = "Phone"
    expected = f"Information about {key}. " + DOC + "\n" + DOC + " " + key + ":"
    assert jrt_prompt(DOC, key, answer_cue=":", header=f"Information about {key}.") == expected
    assert expected == (
        "Information about Phone. Company: Lakeshore Labs\nIndustry: mining\nPhone: 555-4969.\n"
        "Company: Lakeshore Labs\nIndustry: mining\nPhone: 555-4969. Phone:"
    )
    # its plain counterpart: doc + " " + key + ":"
    assert jrt_prompt(DOC, key, repeats=1, answer_cue=":", header=f"Information about {key}.") == DOC + " Phone:"
    assert plain_prompt(DOC, "Phone:") == DOC + " Phone:"


def test_paper_question_format():
    # based_*_twice for question answering: question + " " + ctx + "\n" + ctx + " " + question
    expected = QUESTION + " " + PASSAGE + "\n" + PASSAGE + " " + QUESTION
    assert jrt_prompt(PASSAGE, QUESTION) == expected
    assert expected == (
        "Where was Ada Lovelace born? Ada Lovelace was born in London in 1815. She wrote the first published "
        "algorithm.\nAda Lovelace was born in London in 1815. She wrote the first published algorithm. Where was Ada "
        "Lovelace born?"
    )
    assert jrt_prompt(PASSAGE, QUESTION, repeats=1) == PASSAGE + " " + QUESTION == plain_prompt(PASSAGE, QUESTION)


@pytest.mark.parametrize("header", [None, "", "Information about Phone."])
def test_one_copy_is_the_plain_prompt_whatever_the_header(header):
    assert jrt_prompt(DOC, "Phone", repeats=1, answer_cue=":", header=header) == plain_prompt(DOC, "Phone:")
    assert jrt_prompt(DOC, "Phone", repeats=1, header=header, separator=" | ") == DOC + " Phone"


def test_more_copies_separator_and_leads():
    assert jrt_prompt("C", "Q?", repeats=3) == "Q? C\nC\nC Q?"
    assert jrt_prompt("C", "Q", repeats=3, answer_cue=":", header="H.", separator=" || ") == "H. C || C || C Q:"
    assert jrt_prompt("C", "Q", repeats=2, header="") == "C\nC Q"  # an empty header writes no lead
    assert jrt_prompt("C", "Q", separator="") == "Q CC Q"
    # nothing is stripped: whitespace in the parts is kept
    assert jrt_prompt(" C ", "Q ", answer_cue=" :") == "Q   C \n C  Q  :"
    for repeats in (2, 5):
        prompt = jrt_prompt(PASSAGE, QUESTION, repeats=repeats)
        assert prompt.count(PASSAGE) == repeats and prompt.count(QUESTION) == 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"context": ""}, "context"),
        ({"context": None}, "context"),
        ({"question": ""}, "question"),
        ({"question": 3}, "question"),
        ({"repeats": 0}, "repeats"),
        ({"repeats": 2.0}, "repeats"),
        ({"repeats": True}, "repeats"),
        ({"answer_cue": None}, "answer_cue"),
        ({"header": 1}, "header"),
        ({"separator": None}, "separator"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"context": "C", "question": "Q"} | kwargs
    with pytest.raises(ValueError, match=name):
        jrt_prompt(**args)


@pytest.mark.parametrize(
    "args, name", [(("", "Q"), "context"), (("C", ""), "question_or_cue"), (("C", None), "question_or_cue")]
)
def test_bad_plain_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        plain_prompt(*args)
