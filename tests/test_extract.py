from __future__ import annotations

from fractions import Fraction

import pytest

from jaxslm.errors import UserError
from jaxslm.evaluation.extract import (EXTRACTORS, answers_match, check_extractors,
                                       get_extractor, gold_answer, normalize, score_text,
                                       to_number)

# Written for this test, in the GSM8K solution style (calculator annotations, "####").
SOLUTION = ("Maya buys 4 crates of 25 apples, so she has 4*25=<<4*25=100>>100 apples.\n"
            "She sells 1,250 cents worth, which is $12.50.\n"
            "She gives away 100-38=<<100-38=62>>62 apples.\n"
            "#### 62")


def extract(name, text):
  return get_extractor(name)(text)


def test_gold_answer():
  assert gold_answer(SOLUTION) == "62"
  assert gold_answer("so the total is\n#### $1,000.50 ") == "1000.50"
  assert gold_answer("#### 3 #### 4") == "4"            # the last marker
  assert gold_answer("no marker here") is None
  assert gold_answer("text\n####   ") is None
  with pytest.raises(UserError, match="str"):
    gold_answer(None)


@pytest.mark.parametrize("text, strict, flexible", [
    ("#### 18", "18", "18"),
    ("First 3+4=7 then 7*2=14.\n#### 14\nDone in 2 steps", "14", "2"),
    ("#### 5 and #### 6 then 9 10", "5", "10"),
    ("#### $1,000.50", None, "$1,000.50"),            # strict needs a digit right after "#### "
    ("#### 1,000.50", "1,000.50", "1,000.50"),
    ("#### -3", "-3", "-3"),
    ("The answer is 5.", None, "5."),                  # harness keeps the period; normalize drops it
    ("no numbers at all", None, None),
    ("ellipsis ... only", None, "..."),                # harness junk: matches, never equals gold
])
def test_strict_and_flexible(text, strict, flexible):
  assert extract("strict-match", text) == strict
  assert extract("flexible-extract", text) == flexible


def test_flexible_takes_the_non_empty_group():
  # "7" alone is too short for the first alternative; the second group matches it.
  assert extract("flexible-extract", "x 7") == "7"
  assert extract("flexible-extract", "a -7 b") == "-7"


@pytest.mark.parametrize("text, expected", [
    ("<reasoning>6*7</reasoning>\n<solution>$42</solution>", "$42"),
    ("<solution>It is 40 then 42.</solution>", "42"),
    ("<solution>\n  1,234.5 \n</solution>", "1,234.5"),
    ("<solution>3/4</solution>", "3/4"),
    ("<solution>-3</solution>", "-3"),
    ("<solution> blue </solution>", "blue"),
    ("<solution>1</solution><solution>2</solution>", "1"),   # the first tag
    ("<solution>  </solution>", None),
    ("<solution>42", None),
    ("just 42", None),
])
def test_solution(text, expected):
  assert extract("solution", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 5.", "5"),
    ("so the final answer is: $1,000.50 dollars", "$1,000.50"),
    ("THE ANSWER IS -3", "-3"),
    ("The answer is 4. Wait, the answer is 6.", "6"),       # the last occurrence
    ("The answer is unknown", None),
    ("no claim 12", None),
])
def test_answer_is(text, expected):
  assert extract("answer-is", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Thought: done\nFinal Answer: 36", "36"),
    ("Final Answer: 36 pens", "36"),
    ("Final Answer: 12 * 3 = 36", "36"),
    ("Final Answer: 5\nThought: oops\nFinal Answer: $1,200.", "$1,200"),
    ("Final Answer:\n  blue", "blue"),
    ("Final Answer:", None),
    ("nothing final", None),
])
def test_final_answer(text, expected):
  assert extract("final-answer", text) == expected


def test_unknown_extractor_lists_valid_names():
  with pytest.raises(UserError) as info:
    get_extractor("loose")
  message = str(info.value)
  assert "'loose'" in message
  assert ", ".join(sorted(EXTRACTORS)) in message
  with pytest.raises(UserError, match="answer-is"):
    check_extractors(["strict-match", "nope"])
  with pytest.raises(UserError):
    check_extractors([])
  assert check_extractors("solution") == ("solution",)


@pytest.mark.parametrize("raw, expected", [
    (" $1,000.50 ", "1000.50"),
    ("5.", "5"),
    ("  42 .", "42"),
    ("Blue", "blue"),
    ("..", "."),
    ("$", None),
    ("   ", None),
    (None, None),
])
def test_normalize(raw, expected):
  assert normalize(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("18.00", Fraction(18)),
    (".5", Fraction(1, 2)),
    ("-3", Fraction(-3)),
    ("$1,000.50", Fraction(2001, 2)),
    ("3/4", Fraction(3, 4)),
    ("0.1", Fraction(1, 10)),          # exact, not the float 0.1
    ("3/0", None),
    ("1e3", None),
    ("5%", None),
    ("twelve", None),
    ("..", None),
    (None, None),
])
def test_to_number(raw, expected):
  assert to_number(raw) == expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("18.00", "18", True),
    ("$1,000.50", "1000.5", True),
    ("3/4", "0.75", True),
    ("5.", "5", True),
    ("-3", "3", False),
    ("0.30000000000000004", "0.3", False),   # exact comparison
    ("Blue", "blue ", True),
    ("blue", "green", False),
    (None, "5", False),
    ("5", None, False),
])
def test_answers_match(pred, gold, expected):
  assert answers_match(pred, gold) is expected


def test_score_text():
  text = "Each costs $2.50, so 4 cost 4*2.5=10.\n#### 10.00\nThat's it for 3 friends."
  scores = score_text(text, gold_answer("#### 10"))
  assert scores["strict-match"] == {"extracted": "10.00", "normalized": "10.00",
                                    "correct": True}
  assert scores["flexible-extract"] == {"extracted": "3", "normalized": "3",
                                        "correct": False}
  assert list(scores) == ["strict-match", "flexible-extract"]
  only = score_text("The answer is 7.", "7", extractors=("answer-is", "strict-match"))
  assert only["answer-is"]["correct"] and not only["strict-match"]["correct"]
  assert only["strict-match"]["extracted"] is None
  with pytest.raises(UserError, match="unknown answer extractor"):
    score_text("x", "1", extractors=("bogus",))
