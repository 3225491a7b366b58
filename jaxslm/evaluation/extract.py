"""Reading final answers out of model text and comparing them with the gold one.

    from jaxslm.evaluation.extract import gold_answer, score_text

    gold = gold_answer("3 bags of 12 pens is 3*12=<<3*12=36>>36 pens.\\n#### 36")  # "36"
    score_text("So 3*12 = 36.\\n#### 36.00", gold)
    # {"strict-match":     {"extracted": "36.00", "normalized": "36.00", "correct": True},
    #  "flexible-extract": {"extracted": "36.00", "normalized": "36.00", "correct": True}}

Extractors are named functions `text -> raw answer string | None`, kept in
`EXTRACTORS`:

  * "strict-match"      the first `#### N` (lm-evaluation-harness's GSM8K
                        regex `#### (\\-?[0-9\\.\\,]+)`),
  * "flexible-extract"  the last number-like run in the text (the harness's
                        `(-?[$0-9.,]{2,})|(-?[0-9]+)`; it can return junk such
                        as "..", which then simply fails to match the gold),
  * "solution"          the last number inside the first `<solution>...</solution>`
                        (the GRPO format), else the tag's stripped content,
  * "answer-is"         the number after the last "The (final) answer is(:)",
  * "final-answer"      the number after the last "Final Answer:" (the agent's
                        format), else that line's stripped text.

Extractors return the raw match; `normalize` then strips whitespace, "$",
commas and one trailing period, and lowercases (the harness's GSM8K
`exact_match` normalization). `answers_match` compares two answers as exact
numbers when both parse (`to_number`: "18.00" == "18", "$1,000.50" == "1000.5",
"3/4" == "0.75"), else as normalized strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

from jaxslm.errors import UserError

Extractor = Callable[[str], "str | None"]

# A number as written in a solution: optional minus (not one that is a binary
# minus right after a digit or ")"), optional "$", digits with optional
# thousands commas, optional decimals, or ".5"; optionally "/ d" for a fraction.
NUMBER_PATTERN = (r"(?:(?<![\d)])-)?\$?"
                  r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
                  r"(?:/\d+(?!\d|\.\d))?")
_NUMBER = re.compile(NUMBER_PATTERN)

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_SOLUTION = re.compile(r"<solution>(.*?)</solution>", re.DOTALL)
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(" + NUMBER_PATTERN + ")",
                        re.IGNORECASE)
_FINAL_ANSWER = re.compile(r"final\s+answer\s*:[ \t]*\n?[ \t]*([^\n]*)", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"(-?\d+)/(\d+)")


def gold_answer(solution: str) -> str | None:
  """The normalized text after the last "####" of a GSM8K solution, or None."""
  if not isinstance(solution, str):
    raise UserError(f"gold_answer expects the solution text as a str, got "
                    f"{type(solution).__name__}; pass the dataset's 'answer' field")
  _, sep, tail = solution.rpartition("####")
  return normalize(tail) if sep else None


# ---------------------------------------------------------------- extractors
def strict_match(text: str) -> str | None:
  """Group 1 of the first `#### N` (lm-evaluation-harness "strict-match")."""
  m = _STRICT.search(text)
  return m.group(1) if m else None


def flexible_extract(text: str) -> str | None:
  """The last number-like run (lm-evaluation-harness "flexible-extract")."""
  found = _FLEXIBLE.findall(text)
  if not found:
    return None
  return next((group for group in found[-1] if group), None)


def solution_tag(text: str) -> str | None:
  """The last number in the first `<solution>` tag, else its stripped content."""
  m = _SOLUTION.search(text)
  if m is None:
    return None
  content = m.group(1).strip()
  numbers = _NUMBER.findall(content)
  if numbers:
    return numbers[-1]
  return content or None


def answer_is(text: str) -> str | None:
  """The number after the last "The answer is" / "the final answer is: $N"."""
  found = _ANSWER_IS.findall(text)
  return found[-1] if found else None


def final_answer(text: str) -> str | None:
  """The number after the last "Final Answer:", else that line's stripped text.

  When the line is a calculation ("12 * 3 = 36") the part after the last "="
  is read; then the first number in it is the answer ("36 pens" -> "36").
  """
  found = _FINAL_ANSWER.findall(text)
  if not found:
    return None
  line = found[-1].strip()
  tail = line.rpartition("=")[2]
  m = _NUMBER.search(tail)
  if m:
    return m.group(0)
  return line or None


EXTRACTORS: dict[str, Extractor] = {
    "strict-match": strict_match,
    "flexible-extract": flexible_extract,
    "solution": solution_tag,
    "answer-is": answer_is,
    "final-answer": final_answer,
}
DEFAULT_EXTRACTORS = ("strict-match", "flexible-extract")


def get_extractor(name: str) -> Extractor:
  """The extractor called `name`; UserError listing the valid names otherwise."""
  try:
    return EXTRACTORS[name]
  except (KeyError, TypeError):
    raise UserError(f"unknown answer extractor {name!r}; expected one of "
                    f"{', '.join(sorted(EXTRACTORS))}; pick one of those names") from None


def check_extractors(names: Iterable[str]) -> tuple[str, ...]:
  """`names` as a tuple after checking each (a lone str is one name, not letters)."""
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names:
    raise UserError(f"no answer extractors given; name at least one of "
                    f"{', '.join(sorted(EXTRACTORS))}")
  for name in names:
    get_extractor(name)
  return names


# ---------------------------------------------------------------- comparison
def normalize(answer: str | None) -> str | None:
  """Strip, drop "$" and commas and one trailing ".", lowercase; "" -> None."""
  if answer is None:
    return None
  text = answer.strip().replace("$", "").replace(",", "")
  if text.endswith("."):
    text = text[:-1]
  text = text.strip().lower()
  return text or None


def to_number(answer: str | None) -> Fraction | None:
  """The exact value of an int, decimal or simple fraction answer, else None.

  "18.00" -> 18, ".5" -> 1/2, "-3" -> -3, "$1,000.50" -> 2001/2, "3/4" -> 3/4;
  "1e3", "5%", "3/0", "twelve" -> None.
  """
  text = normalize(answer)
  if text is None:
    return None
  if _PLAIN_NUMBER.fullmatch(text):
    return Fraction(text)
  m = _FRACTION.fullmatch(text)
  if m and int(m.group(2)) != 0:
    return Fraction(int(m.group(1)), int(m.group(2)))
  return None


def answers_match(pred: str | None, gold: str | None) -> bool:
  """Exact numeric equality when both parse, else normalized string equality."""
  if pred is None or gold is None:
    return False
  x, y = to_number(pred), to_number(gold)
  if x is not None and y is not None:
    return x == y
  a, b = normalize(pred), normalize(gold)
  return a is not None and a == b


def score_text(text: str, gold: str | None,
               extractors: Sequence[str] = DEFAULT_EXTRACTORS) -> dict[str, dict]:
  """Per extractor: the raw "extracted" answer, its "normalized" form, "correct"."""
  if not isinstance(text, str):
    raise UserError(f"score_text expects the model's text as a str, got "
                    f"{type(text).__name__}; decode the tokens first")
  out = {}
  for name in check_extractors(extractors):
    raw = EXTRACTORS[name](text)
    out[name] = {"extracted": raw, "normalized": normalize(raw),
                 "correct": answers_match(raw, gold)}
  return out
