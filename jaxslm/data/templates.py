"""Prompt templates for math word problems: how a question becomes a prompt
and a worked solution becomes its target, shared by evaluation and fine-tuning.

    from jaxslm.data.templates import get_template, fewshot_prompt

    t = get_template("qa")                 # "Question: ...\\nAnswer:" (first paper, lm-eval gsm8k)
    t.prompt("Tom has 3 bags of 12 pens. How many pens?")
    t.target(solution, gold)               # " <worked solution ending in #### 36>"
    fewshot_prompt(t, exemplars, question) # k-shot, lm-evaluation-harness gsm8k layout

Each template also names how its answers are read: `extractor` (the primary
answer extractor of `jaxslm.evaluation.extract`), `answer_format` (for format
compliance) and `stop` (strings that end a completion: the start of the next
question; those in `keep_stop`, like "</solution>", end it and stay in its text).

| name | prompt | target |
| --- | --- | --- |
| qa | `Question: {q}\\nAnswer:` | ` {solution}` (ends `#### N`) |
| q_a | `Q: {q}\\nA:` | ` {solution}` (Phi-2 study) |
| cot | `Question: {q}\\nAnswer: Let's think step by step.` | ` {solution}` (zero-shot chain of thought) |
| answer-is | `Question: {q}\\nAnswer:` | ` {steps}\\nThe answer is N.` |
| final-only | `Question: {q}\\nAnswer:` | ` N` (final answer only, no breakdown) |
| structured | instruction + `Question: {q}\\n` | `<reasoning>{steps}</reasoning>\\n<solution>N</solution>` |
| socratic | `Question: {q}\\nAnswer:` | ` {solution}` (sub-questions; GSM8K "socratic") |
| python | `Question: {q}\\nAnswer (Python):\\n` | a program, ending `#### N` (see below) |

"socratic" is the "question with breakdown" format (sub-questions first): meant for
`gsm8k.load(..., config="socratic")` data, whose solutions interleave
sub-questions and answers ("How many pens does he buy? ** He buys 3*4=<<3*4=12>>12
pens.\\n..."); the target is that text as is (it still ends in `#### N`). With
"main" data it reads like "qa". "final-only" is the "question without breakdown".

"python" turns a GSM8K solution into a straight-line program (`python_program`):

    step_1 = 3*4
    step_2 = 12+1
    answer = step_2
    print(answer)
    #### 13

Each calculator annotation `<<expr=value>>` becomes `step_k = expr` (the
expression verbatim when it is plain arithmetic the safe calculator agrees
with, else the annotated value); `answer` names the last step whose value is
the gold answer (rounded to the gold's decimals where Python's floats would
print 26.999999999999957), or is the gold number itself when no step computes
it. The last line `#### N` is a Python comment, so the program still runs and
the "strict-match" extractor and "gsm8k" format read its answer. Over GSM8K's
train and test splits every program prints exactly the gold answer; about 6%
fall back to `answer = N`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

from jaxslm.errors import UserError
from jaxslm.tools import CalculatorError, calculate

_ANNOTATION = re.compile(r"<<[^<>]*>>")
_STEP = re.compile(r"<<([^<>]*)>>")
_PLAIN_ARITHMETIC = re.compile(r"[0-9.+\-*/%() ]*[0-9][0-9.+\-*/%() ]*")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
STRUCTURED_INSTRUCTION = (
    "Solve the problem. Write your reasoning between <reasoning> and </reasoning>, "
    "then only the final number between <solution> and </solution>.\n")


def solution_steps(solution: str) -> str:
  """A GSM8K solution without its final `#### N` line."""
  head, sep, _ = solution.rpartition("####")
  return (head if sep else solution).rstrip()


def strip_annotations(text: str) -> str:
  """Drop GSM8K calculator annotations: "2*3=<<2*3=6>>6" -> "2*3=6"."""
  return _ANNOTATION.sub("", text)


def _value(text: str) -> int | float | None:
  try:
    return calculate(text)
  except CalculatorError:
    return None


def _same(a: int | float | None, b: int | float | None) -> bool:
  return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def python_program(solution: str, gold: str) -> str:
  """The "python" template's target: a straight-line program computing `gold`
  from the solution's `<<expr=value>>` annotations, ending in the comment `#### gold`.

  A step is `step_k = expr` when `expr` is plain arithmetic (digits, `. + - * / % ( )`)
  whose value the safe calculator confirms equals the annotated value, else
  `step_k = value` when the value is a plain number; other annotations are
  skipped. `answer = step_k` names the last step equal to the gold answer
  (within 1e-6), else `answer = gold` (a solution without annotations, or whose
  annotated steps never reach the answer). A step that Python computes in
  floating point ("/", ".", "**") is rounded to the gold's decimals
  (`answer = round(step_3)`), so the program prints the gold answer exactly
  rather than 26.999999999999957."""
  gold = gold.strip()
  gold_value = _value(gold) if _PLAIN_NUMBER.fullmatch(gold) else None
  lines, answer = [], None
  for body in _STEP.findall(solution):
    expr, _, claimed = (part.strip() for part in body.rpartition("="))
    value = _value(expr) if _PLAIN_ARITHMETIC.fullmatch(expr) else None
    claimed_value = _value(claimed) if _PLAIN_NUMBER.fullmatch(claimed) else None
    if value is not None and (claimed_value is None or _same(value, claimed_value)):
      line = expr
    elif claimed_value is not None:
      line, value = claimed, claimed_value
    else:
      continue
    name = f"step_{len(lines) + 1}"
    lines.append(f"{name} = {line}")
    if _same(value, gold_value):
      answer = name
      if any(c in line for c in "/.") or "**" in line:
        decimals = len(gold.partition(".")[2])
        answer = f"round({name}, {decimals})" if decimals else f"round({name})"
  if answer is None:
    answer = gold if gold_value is not None else repr(gold)
  return "\n".join([*lines, f"answer = {answer}", "print(answer)", f"#### {gold}"])


@dataclasses.dataclass(frozen=True)
class Template:
  name: str
  prompt_format: str               # formatted with question=
  target_format: str               # formatted with solution=, steps=, gold=
  stop: tuple[str, ...]
  extractor: str                   # primary answer extractor
  answer_format: str               # format-compliance checker name
  description: str = ""
  keep_stop: tuple[str, ...] = ()  # stop strings that end the answer and stay in its text
  # (solution, gold) -> target; when set it replaces target_format (then only documentation)
  target_fn: Callable[[str, str], str] | None = None

  def prompt(self, question: str) -> str:
    return self.prompt_format.format(question=question.strip())

  def target(self, solution: str, gold: str) -> str:
    if self.target_fn is not None:
      return self.target_fn(solution, gold)
    return self.target_format.format(solution=solution.strip(),
                                     steps=solution_steps(solution).strip(), gold=gold)


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("qa", "Question: {question}\nAnswer:", " {solution}", ("Question:",),
             "strict-match", "gsm8k", "the first paper's format and lm-evaluation-harness gsm8k"),
    Template("q_a", "Q: {question}\nA:", " {solution}", ("\nQ:",), "strict-match", "gsm8k",
             "the Phi-2 study's format"),
    Template("cot", "Question: {question}\nAnswer: Let's think step by step.", " {solution}",
             ("Question:",), "strict-match", "gsm8k", "zero-shot chain-of-thought trigger"),
    Template("answer-is", "Question: {question}\nAnswer:", " {steps}\nThe answer is {gold}.",
             ("Question:",), "answer-is", "answer-is", "steps, then 'The answer is N.'"),
    Template("final-only", "Question: {question}\nAnswer:", " {gold}", ("Question:", "\n"),
             "flexible-extract", "none", "final answer only, no breakdown"),
    Template("structured", STRUCTURED_INSTRUCTION + "Question: {question}\n",
             "<reasoning>{steps}</reasoning>\n<solution>{gold}</solution>",
             ("</solution>", "Question:"), "solution", "structured",
             "the GRPO <reasoning>/<solution> format", keep_stop=("</solution>",)),
    Template("socratic", "Question: {question}\nAnswer:", " {solution}", ("Question:",),
             "strict-match", "gsm8k", "question with breakdown: the sub-question / answer "
             "solutions of GSM8K config 'socratic' (load it with config='socratic')"),
    Template("python", "Question: {question}\nAnswer (Python):\n",
             "<python_program(solution, gold)>",
             ("Question:",), "strict-match", "gsm8k", "a Python program built from the "
             "calculator annotations, ending in the comment '#### N'", target_fn=python_program),
)}


def get_template(name: str) -> Template:
  if name not in TEMPLATES:
    raise UserError(f"unknown prompt template {name!r}; valid templates: "
                    f"{', '.join(sorted(TEMPLATES))}.")
  return TEMPLATES[name]


def fewshot_prompt(template: Template, exemplars: Sequence[tuple[str, str, str]], question: str,
                   delimiter: str = "\n\n") -> str:
  """k-shot prompt: each exemplar (question, solution, gold) as prompt + target,
  joined by `delimiter`, then the question's prompt. With the "qa" template this
  is lm-evaluation-harness's gsm8k layout ("Question: ...\\nAnswer: ...\\n\\n")."""
  shots = [template.prompt(q) + template.target(s, g) for q, s, g in exemplars]
  return delimiter.join([*shots, template.prompt(question)])
