from __future__ import annotations

import pytest

from jaxslm.errors import UserError
from jaxslm.evaluation.metrics import (ERROR_CATEGORIES, FORMATS, FormatScore, Statement,
                                       arithmetic_statements, categorize, format_compliance,
                                       rouge1_f1, rouge1_f1_many)

GOOD = "<reasoning>4 boxes of 6 is 24.</reasoning>\n<solution>24</solution>"


# ---------------------------------------------------------------- ROUGE-1
def test_rouge1_by_hand():
  # 3 of 3 predicted unigrams match, 3 of 6 reference ones: P = 1, R = 0.5, F1 = 2/3
  assert rouge1_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
  assert rouge1_f1("the cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
  assert rouge1_f1("The cat, sat!", "the cat sat") == pytest.approx(1.0)
  assert rouge1_f1("dog runs", "cat sleeps") == 0.0
  # "the the" vs "the": clipped overlap 1, P = 1/2, R = 1 -> F1 = 2/3
  assert rouge1_f1("the the", "the") == pytest.approx(2 / 3)
  assert rouge1_f1("", "the cat") == 0.0


def test_rouge1_many():
  assert rouge1_f1_many(["a b", "c"], ["a b", "d"]) == pytest.approx([1.0, 0.0])
  with pytest.raises(UserError, match="2 predictions but 1 references"):
    rouge1_f1_many(["a", "b"], ["a"])


# ---------------------------------------------------------------- format
@pytest.mark.parametrize("text, strict, partial", [
    (GOOD, True, 1.0),
    ("  \n" + GOOD + "\n\n", True, 1.0),                                     # outer space ok
    ("<reasoning>x</reasoning>\n<solution>24", False, 1.5 / 3),               # 3 of 4
    ("<solution>24</solution>\n<reasoning>x</reasoning>", False, 2.0 / 3),    # wrong order
    ("Sure! " + GOOD, False, 1.0),                                            # extra text
    (GOOD + " Hope that helps.", False, 1.0),
    ("<reasoning>x</reasoning> <solution>24</solution>", False, 1.0),         # no newline
    ("<reasoning> </reasoning>\n<solution>24</solution>", False, 1.0),        # blank reasoning
    ("<reasoning>a</reasoning>\n<solution>1</solution><solution>2</solution>", False, 1.0),
    ("The answer is 24.", False, 0.0),
])
def test_structured_format(text, strict, partial):
  assert format_compliance(text) == FormatScore(strict, pytest.approx(partial))
  assert format_compliance(text, "structured").strict is strict


@pytest.mark.parametrize("text, strict, partial", [
    ("4*6=24 boxes\n#### 24", True, 1.0),
    ("so\n#### $1,200.50\n", True, 1.0),
    ("####24", True, 1.0),
    ("#### 24\nThanks!", False, 0.5),
    ("so #### 24", False, 0.5),          # not a line of its own
    ("#### twenty", False, 0.5),
    ("The answer is 24", False, 0.0),
])
def test_gsm8k_format(text, strict, partial):
  assert format_compliance(text, "gsm8k") == FormatScore(strict, partial)


@pytest.mark.parametrize("text, strict, partial", [
    ("So the answer is 24.", True, 1.0),
    ("The final answer is: $24", True, 1.0),
    ("The answer is twenty-four", False, 0.5),
    ("#### 24", False, 0.0),
])
def test_answer_is_format(text, strict, partial):
  assert format_compliance(text, "answer-is") == FormatScore(strict, partial)


def test_unknown_format():
  with pytest.raises(UserError) as info:
    format_compliance("x", "xml")
  assert "'xml'" in str(info.value) and ", ".join(FORMATS) in str(info.value)


# ---------------------------------------------------------------- arithmetic
def test_annotation_correct_and_wrong():
  assert arithmetic_statements("He pays <<48/2=24>>24.") == [
      Statement("48/2", "24", 24, True, "annotation")]
  [s] = arithmetic_statements("<<48/2=25>>")
  assert (s.value, s.correct) == (24, False)


def test_inline_wrong():
  assert arithmetic_statements("She has 3 + 4 = 8 apples.") == [
      Statement("3 + 4", "8", 7, False, "inline")]


def test_gsm8k_annotation_counted_once():
  text = "Each box has 2*3=<<2*3=6>>6 eggs, and 6*4=<<6*4=24>>24 in all."
  statements = arithmetic_statements(text)
  assert [(s.expr, s.claimed, s.kind) for s in statements] == [
      ("2*3", "6", "annotation"), ("6*4", "24", "annotation")]
  assert all(s.correct for s in statements)


@pytest.mark.parametrize("text, expr, claimed, value", [
    ("$1,200 x 2 = $2,400", "$1,200 x 2", "$2,400", 2400),
    ("10/3 = 3.33", "10/3", "3.33", 10 / 3),              # rounded to the claim's decimals
    ("(3 + 4) * 2 = 14 cookies", "(3 + 4) * 2", "14", 14),
    ("12 ÷ 4 = 3", "12 ÷ 4", "3", 3),
    ("0.5 × 8 = 4.0", "0.5 × 8", "4.0", 4),
    ("So 5 - -2 = 7.", "5 - -2", "7", 7),
    ("(total 3 + 4 = 7)", "3 + 4", "7", 7),               # unmatched bracket dropped
])
def test_inline_correct(text, expr, claimed, value):
  [s] = arithmetic_statements(text)
  assert (s.expr, s.claimed, s.kind, s.correct) == (expr, claimed, "inline", True)
  assert s.value == pytest.approx(value)


def test_arithmetic_edges():
  assert [s.correct for s in arithmetic_statements("10/3 = 3.3333")] == [True]
  assert [s.correct for s in arithmetic_statements("10/3 = 3.34")] == [False]
  assert [s.correct for s in arithmetic_statements("7/2 = 4")] == [False]   # no rounding to int
  chain = arithmetic_statements("2*3 = 6 * 2 = 13")
  assert [(s.expr, s.claimed, s.correct) for s in chain] == [("2*3", "6", True),
                                                              ("6 * 2", "13", False)]
  [bad] = arithmetic_statements("<<2*a=6>>")
  assert (bad.value, bad.correct) == (None, None)      # unparseable: not counted as wrong
  assert arithmetic_statements("Step 1: x = 5, on 2024-01-02 we met") == []
  assert arithmetic_statements("no math here") == []


# ---------------------------------------------------------------- categories
def test_categorize():
  assert ERROR_CATEGORIES == ("format_error", "incomplete", "arithmetic_error",
                              "wrong_reasoning")
  assert categorize("#### 5", correct=True, extracted="5", finish_reason="eos") is None
  assert categorize("I think 3 + 4", correct=False, extracted=None,
                    finish_reason="length") == "incomplete"
  assert categorize("I think", correct=False, extracted=None,
                    finish_reason="context") == "incomplete"
  assert categorize("I give up.", correct=False, extracted=None,
                    finish_reason="eos") == "format_error"
  assert categorize("3 + 4 = 8\n#### 8", correct=False, extracted="8",
                    finish_reason="eos") == "arithmetic_error"
  assert categorize("3 + 4 = 7 so 7 - 1 = 6\n#### 6", correct=False, extracted="6",
                    finish_reason="eos") == "wrong_reasoning"
  # an unparseable calculation is not an arithmetic error
  assert categorize("<<2*a=6>>\n#### 6", correct=False, extracted="6",
                    finish_reason="stop_string") == "wrong_reasoning"
