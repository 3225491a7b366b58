"""Per-example metrics besides accuracy: format, ROUGE-1, arithmetic, errors.

    from jaxslm.evaluation.metrics import (arithmetic_statements, categorize,
                                           format_compliance, rouge1_f1)

    format_compliance("<reasoning>3*12</reasoning>\\n<solution>36</solution>")
    # FormatScore(strict=True, partial=1.0)
    rouge1_f1("the cat sat", "the cat sat on the mat")      # 0.666...
    arithmetic_statements("3 + 4 = 8, then 2*3=<<2*3=6>>6")
    # [Statement(expr="3 + 4", claimed="8", value=7, correct=False, kind="inline"),
    #  Statement(expr="2*3", claimed="6", value=6, correct=True, kind="annotation")]
    categorize(text, correct=False, extracted="8", finish_reason="eos")
    # "arithmetic_error"

Formats (`FORMATS`) and what `format_compliance` checks:

  * "structured"  `<reasoning>X</reasoning>\\n<solution>Y</solution>`, the GRPO
                  format. `partial` is the GRPO format reward scaled to [0, 1]:
                  (0.5 per delimiter present + 1.0 if all four are in order) / 3.
  * "gsm8k"       the text ends with a line `#### N`.
  * "answer-is"   the text says "The answer is N".

Arithmetic statements are GSM8K calculator annotations `<<48/2=24>>` and
written calculations such as `$1,200 x 2 = $2,400` (at least one of
`+ - * / x × ÷`). They are evaluated with the safe `jaxslm.tools.calculate`;
one is correct when the value equals the claim within a relative 1e-6, or
rounds to it at the claim's number of decimals (`10/3 = 3.33`). GSM8K's
`2*3=<<2*3=6>>6` is one statement (the annotation), not two.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from fractions import Fraction

from jaxslm.errors import UserError
from jaxslm.evaluation.extract import NUMBER_PATTERN, answer_is, to_number
from jaxslm.tools import CalculatorError, calculate

STRUCTURED_DELIMITERS = ("<reasoning>", "</reasoning>", "<solution>", "</solution>")
FORMATS = ("structured", "gsm8k", "answer-is")
ERROR_CATEGORIES = ("format_error", "incomplete", "arithmetic_error", "wrong_reasoning")
# Finish reasons meaning "stopped before a final answer for lack of room": the
# sampler's "length" / "context" and the agent's "context_full" / "step_limit".
INCOMPLETE_REASONS = ("length", "context", "context_full", "step_limit", "prompt_too_long")

_STRUCTURED = re.compile(r"<reasoning>(.*)</reasoning>\n<solution>(.*)</solution>", re.DOTALL)
_GSM8K_LAST_LINE = re.compile(r"####[ \t]*" + NUMBER_PATTERN)
_ANSWER_IS_WORDS = re.compile(r"\banswer\s+is\b", re.IGNORECASE)

_ANNOTATION = re.compile(r"<<([^<>]*)=([^<>=]*)>>")
_NUM = r"\$?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
_OPERAND = r"\(*[ \t]*-?[ \t]*" + _NUM + r"(?:[ \t]*\))*"
_OPERATOR = r"[ \t]*[-+*/x×÷][ \t]*"
# The claimed value sits in a lookahead so that it can begin the next
# statement of a chain: "2*3 = 6 * 2 = 12" is two statements.
_INLINE = re.compile(r"(?<![\w.,$])(" + _OPERAND + r"(?:" + _OPERATOR + _OPERAND + r")+)"
                     r"[ \t]*=[ \t]*(?=(-?" + _NUM + r"))")
_MASK = "\x00"  # stands in for annotations when looking for written calculations


# ---------------------------------------------------------------- format
@dataclasses.dataclass(frozen=True)
class FormatScore:
  """`strict`: exactly the format; `partial`: credit in [0, 1] for getting close."""
  strict: bool
  partial: float


def format_compliance(text: str, fmt: str = "structured") -> FormatScore:
  """How well `text` follows the output format `fmt` (one of `FORMATS`).

  "structured": strict when the stripped text is exactly
  `<reasoning>X</reasoning>\\n<solution>Y</solution>` with X and Y not blank
  and each delimiter once. partial = (0.5 * delimiters present (of 4) + 1.0 if
  all four appear in order) / 3, the GRPO format reward scaled to [0, 1]; 1.0
  when strict.
  "gsm8k": strict when the last line is `#### N` for a number N; partial 1.0
  if strict, 0.5 if "####" appears anywhere, else 0.
  "answer-is": strict when the text says "The answer is N" for a number N;
  partial 1.0 if strict, 0.5 for "answer is" without a number, else 0.
  """
  if not isinstance(text, str):
    raise UserError(f"format_compliance expects the model's text as a str, got "
                    f"{type(text).__name__}; decode the tokens first")
  if fmt == "structured":
    return _structured(text.strip())
  if fmt == "gsm8k":
    stripped = text.strip()
    last_line = stripped.rpartition("\n")[2].strip()
    if _GSM8K_LAST_LINE.fullmatch(last_line):
      return FormatScore(True, 1.0)
    return FormatScore(False, 0.5 if "####" in stripped else 0.0)
  if fmt == "answer-is":
    if answer_is(text) is not None:
      return FormatScore(True, 1.0)
    return FormatScore(False, 0.5 if _ANSWER_IS_WORDS.search(text) else 0.0)
  raise UserError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}; "
                  "pick one of those names")


def _structured(text: str) -> FormatScore:
  counts = [text.count(d) for d in STRUCTURED_DELIMITERS]
  m = _STRUCTURED.fullmatch(text)
  if (m and all(c == 1 for c in counts)
      and m.group(1).strip() and m.group(2).strip()):
    return FormatScore(True, 1.0)
  present = sum(c > 0 for c in counts)
  positions = [text.find(d) for d in STRUCTURED_DELIMITERS]
  in_order = present == 4 and positions == sorted(positions)
  return FormatScore(False, (0.5 * present + 1.0 * in_order) / 3)


# ---------------------------------------------------------------- ROUGE
def rouge1_f1(prediction: str, reference: str) -> float:
  """ROUGE-1 F1 (unigram overlap) by the `rouge-score` package, no stemming.

  Its tokenizer lowercases and splits on anything not a letter or digit; an
  empty prediction or reference scores 0.
  """
  return float(_rouge_scorer().score(reference, prediction)["rouge1"].fmeasure)


def rouge1_f1_many(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
  """`rouge1_f1` for each (prediction, reference) pair."""
  if len(predictions) != len(references):
    raise UserError(f"rouge1_f1_many got {len(predictions)} predictions but "
                    f"{len(references)} references; pass one reference per prediction")
  return [rouge1_f1(p, r) for p, r in zip(predictions, references)]


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
  try:
    from rouge_score import rouge_scorer
  except ImportError as e:
    raise ImportError("ROUGE needs the rouge-score package, which is not installed; "
                      "run `pip install rouge-score`") from e
  return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


# ---------------------------------------------------------------- arithmetic
@dataclasses.dataclass(frozen=True)
class Statement:
  """One calculation in a solution: `expr` = `claimed`.

  `value` is `calculate(expr)` (None if it cannot be evaluated); `correct`
  whether it equals the claim (None when either side is not a number). `kind`
  is "annotation" (`<<expr=claimed>>`) or "inline" (written in the text).
  """
  expr: str
  claimed: str
  value: int | float | None
  correct: bool | None
  kind: str = "inline"


def arithmetic_statements(text: str) -> list[Statement]:
  """The calculator annotations and written calculations in `text`, in order."""
  if not isinstance(text, str):
    raise UserError(f"arithmetic_statements expects a str, got {type(text).__name__}; "
                    "decode the tokens first")
  found: list[tuple[int, Statement]] = []
  for m in _ANNOTATION.finditer(text):
    found.append((m.start(), _statement(m.group(1), m.group(2), "annotation")))
  masked = _ANNOTATION.sub(lambda m: _MASK * len(m.group(0)), text)
  for m in _INLINE.finditer(masked):
    found.append((m.start(), _statement(_balance(m.group(1)), m.group(2), "inline")))
  found.sort(key=lambda item: item[0])
  return [statement for _, statement in found]


def _balance(expr: str) -> str:
  """Drop the unmatched outer brackets of "(3 + 4 = 7" or "total 3 + 4) = 7"."""
  expr = expr.strip()
  surplus = expr.count("(") - expr.count(")")
  while surplus > 0 and expr.startswith("("):
    expr, surplus = expr[1:].lstrip(), surplus - 1
  while surplus < 0 and expr.endswith(")"):
    expr, surplus = expr[:-1].rstrip(), surplus + 1
  return expr


def _statement(expr: str, claimed: str, kind: str) -> Statement:
  expr, claimed = expr.strip(), claimed.strip()
  try:
    value = calculate(expr)
  except CalculatorError:
    value = None
  target = to_number(claimed)
  correct = None if value is None or target is None else _agrees(value, target, claimed)
  return Statement(expr, claimed, value, correct, kind)


def _agrees(value: int | float, claimed: Fraction, text: str) -> bool:
  """Equal within a relative 1e-6, or equal after rounding to the claim's decimals."""
  target = float(claimed)
  if math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-9):
    return True
  decimals = len(text.rpartition(".")[2]) if "." in text else 0
  if decimals == 0:
    return False
  return abs(value - target) <= 0.5 * 10.0**-decimals * (1 + 1e-9)


# ---------------------------------------------------------------- errors
def categorize(text: str, *, correct: bool, extracted: str | None,
               finish_reason: str) -> str | None:
  """Why a wrong answer is wrong, one of `ERROR_CATEGORIES`; None when correct.

    * "incomplete"        no answer was extracted and generation stopped for
                          lack of room (`finish_reason` in INCOMPLETE_REASONS:
                          out of new tokens, context, or agent steps),
    * "format_error"      no answer was extracted although the model finished,
    * "arithmetic_error"  an answer was extracted and at least one arithmetic
                          statement in `text` is wrong (`arithmetic_statements`),
    * "wrong_reasoning"   an answer was extracted, every checkable calculation
                          is right, and the answer is still wrong.
  """
  if correct:
    return None
  if extracted is None:
    return "incomplete" if finish_reason in INCOMPLETE_REASONS else "format_error"
  if any(s.correct is False for s in arithmetic_statements(text)):
    return "arithmetic_error"
  return "wrong_reasoning"
