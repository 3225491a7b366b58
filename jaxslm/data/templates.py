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
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from jaxslm.errors import UserError

_ANNOTATION = re.compile(r"<<[^<>]*>>")
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

  def prompt(self, question: str) -> str:
    return self.prompt_format.format(question=question.strip())

  def target(self, solution: str, gold: str) -> str:
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
