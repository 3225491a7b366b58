"""jaxslm.data.templates: prompts and targets of each template, and the k-shot layout."""

import pytest

from jaxslm.data.templates import (TEMPLATES, fewshot_prompt, get_template, solution_steps,
                                   strip_annotations)
from jaxslm.errors import UserError
from jaxslm.evaluation import extract, metrics

SOLUTION = "He buys 3*4=<<3*4=12>>12 pens.\nThen 12+1=<<12+1=13>>13.\n#### 13"


def test_qa_is_lm_eval_gsm8k_layout():
  t = get_template("qa")
  assert t.prompt(" How many? ") == "Question: How many?\nAnswer:"
  assert t.target(SOLUTION, "13") == " " + SOLUTION
  shots = [("A?", "1+1=2\n#### 2", "2"), ("B?", "#### 5", "5")]
  assert fewshot_prompt(t, shots, "C?") == (
      "Question: A?\nAnswer: 1+1=2\n#### 2\n\nQuestion: B?\nAnswer: #### 5\n\n"
      "Question: C?\nAnswer:")


def test_every_template_target_is_read_back_by_its_own_extractor_and_format():
  for t in TEMPLATES.values():
    target = t.target(SOLUTION, "13")
    got = extract.get_extractor(t.extractor)(target)
    assert extract.answers_match(got, "13"), (t.name, target, got)
    if t.answer_format in metrics.FORMATS:
      assert metrics.format_compliance(target, t.answer_format).strict, t.name
    assert not any(s in target for s in t.stop if s not in t.keep_stop), t.name
    for s in t.keep_stop:   # a kept stop string ends the answer
      assert target.index(s) == len(target) - len(s), t.name


def test_steps_and_annotations():
  assert solution_steps(SOLUTION) == "He buys 3*4=<<3*4=12>>12 pens.\nThen 12+1=<<12+1=13>>13."
  assert solution_steps("no marker") == "no marker"
  assert strip_annotations(SOLUTION).startswith("He buys 3*4=12 pens.")
  with pytest.raises(UserError, match="valid templates: answer-is, cot"):
    get_template("chat")


def test_python_and_socratic_templates():
  program = get_template("python").target(SOLUTION, "13")
  assert program == "step_1 = 3*4\nstep_2 = 12+1\nanswer = step_2\nprint(answer)\n#### 13"
  assert get_template("python").prompt("How many?") == "Question: How many?\nAnswer (Python):\n"
  socratic = "How many? ** 3*4=<<3*4=12>>12.\n#### 12"
  assert get_template("socratic").target(socratic, "12") == " " + socratic
