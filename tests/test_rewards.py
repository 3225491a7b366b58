from __future__ import annotations

import math

import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.train import rewards
from jaxslm.train.rewards import (DEFAULT_WEIGHTS, REWARDS, STEP_WEIGHTS, RewardError,
                                  accuracy_reward, answer_value, compute, format_reward,
                                  is_correct, process_reward, resolve, score_accuracy,
                                  score_format, score_process, step_kind)

PERFECT = ("<reasoning>3 bags of 12 pens is 3 * 12 = 36 pens.</reasoning>\n"
           "<solution>36</solution>")


def solved(answer: str, reasoning: str = "Some steps.") -> str:
  return f"<reasoning>{reasoning}</reasoning>\n<solution>{answer}</solution>"


# ---------------------------------------------------------------- format
@pytest.mark.parametrize("text, expected", [
    (PERFECT, 3.0),
    ("\n  " + PERFECT + "\n", 3.0),                                     # outer space ok
    ("<reasoning>x</reasoning>\n<solution>36", 1.5),                    # 3 of 4
    ("<reasoning>x\n<solution>36", 1.0),                                # 2 of 4
    ("<solution>36</solution>\n<reasoning>x</reasoning>", 2.0),         # wrong order
    ("The answer is 36.", 0.0),                                          # none
    ("", 0.0),
    ("<reasoning>x</reasoning>\n<solution> </solution>", 3.0),          # blank: in order
    ("Sure! " + PERFECT + " Done.", 3.0),                               # text outside
    (PERFECT + "\n<solution>37</solution>", 3.0),                       # repeated tag
])
def test_format_reward_values(text, expected):
  assert score_format(text) == expected


def test_format_reward_batch():
  assert format_reward(["p", "q"], [PERFECT, "nothing"], ["36", "1"]) == [3.0, 0.0]


# ---------------------------------------------------------------- accuracy
@pytest.mark.parametrize("answer, gold, expected", [
    ("36", "36", 3.0),
    (" 36 ", "36", 3.0),
    ("1,200", "1,200", 3.0),
    ("36.00", "36", 1.5),
    ("$1,200", "1200", 1.5),
    ("1200", "1,200", 1.5),
    ("$1,200 dollars", "1200", 1.5),
    ("36 pens", "36", 1.5),
    ("5%", "5", 1.5),
    ("3/4", "0.75", 1.5),
    ("The answer is 36", "36", 1.5),
    ("90", "100", 0.5),     # r = 0.9, inclusive
    ("110", "100", 0.5),    # r = 1.1, inclusive
    ("89", "100", 0.25),
    ("80", "100", 0.25),    # r = 0.8, inclusive
    ("120", "100", 0.25),   # r = 1.2, inclusive
    ("79", "100", -0.5),
    ("121", "100", -0.5),
    ("-36", "36", -0.5),
    ("twelve", "12", -1.0),  # not numeric
    ("0", "0", 3.0),
    ("0.0", "0", 1.5),
    ("5", "0", -1.0),        # gold 0, no ratio
])
def test_accuracy_reward_tiers(answer, gold, expected):
  assert score_accuracy(solved(answer), gold) == expected


@pytest.mark.parametrize("text", [
    "<reasoning>3 * 12 = 36</reasoning>\n36",               # no solution tag
    "<reasoning>x</reasoning>\n<solution>   </solution>",   # blank solution
    "",
])
def test_accuracy_without_answer_is_wrong(text):
  assert score_accuracy(text, "36") == -1.0


def test_accuracy_other_extractor_and_errors():
  assert score_accuracy("So 36 it is.\n#### 36", "36", extractor="strict-match") == 3.0
  assert score_accuracy("#### 36.0", "36", extractor="strict-match") == 1.5
  with pytest.raises(UserError, match="unknown answer extractor 'nope'"):
    score_accuracy(PERFECT, "36", extractor="nope")
  with pytest.raises(UserError, match="gold answer as a str, got NoneType"):
    score_accuracy(PERFECT, None)


def test_is_correct_and_batch():
  assert is_correct(PERFECT, "36")
  assert is_correct(solved("36 pens"), "36")
  assert not is_correct(solved("37"), "36")   # 0.5 partial credit is not correct
  assert accuracy_reward(["p", "q"], [PERFECT, solved("40")], ["36", "36"]) == [3.0, 0.25]
  with pytest.raises(UserError, match="2 completions but 1 answers"):
    accuracy_reward(["p", "q"], [PERFECT, PERFECT], ["36"])


def test_answer_value():
  assert answer_value("$1,200 dollars") == 1200
  assert answer_value("3/4 cup") == 0.75
  assert answer_value("12 km/h.") == 12
  assert answer_value("1e3") is None
  assert answer_value("x = 5") is None
  assert answer_value(None) is None


# ---------------------------------------------------------------- process
@pytest.mark.parametrize("expr, kind", [
    ("3 + 4", "additive"), ("10 - 2 - 1", "additive"), ("-3 + 4", "additive"),
    ("36", "additive"),
    ("4 * 3", "multiplicative"), ("48/2", "multiplicative"), ("$1,200 x 2", "multiplicative"),
    ("10 ÷ 2", "multiplicative"), ("5 * -2", "multiplicative"), ("2**10", "multiplicative"),
    ("2*3+1", "mixed"), ("(3 + 4) × 2", "mixed"), ("12 / 4 - 1", "mixed"),
])
def test_step_kind(expr, kind):
  assert step_kind(expr) == kind


def test_process_reward_all_correct():
  text = solved("42", "2 + 3 = 5 apples, 5 * 6 = 30, and 30 + 12 / 1 = 42.")
  assert score_process(text) == 3.0


def test_process_reward_weights_a_wrong_step():
  # one right additive step (weight 1.0), one wrong multiplicative (weight 1.5)
  text = solved("13", "2 + 3 = 5 and 4 * 3 = 13")
  assert STEP_WEIGHTS["additive"] == 1.0 and STEP_WEIGHTS["multiplicative"] == 1.5
  assert score_process(text) == 3.0 * 1.0 / 2.5 == 1.2
  # a wrong mixed step (2.0) next to a right multiplicative one (1.5): 3 * 1.5 / 3.5
  text = solved("7", "<<6/2=3>> then 2 * 3 + 1 = 8")
  assert score_process(text) == 3.0 * 1.5 / 3.5


def test_process_reward_without_statements_is_zero():
  assert score_process(solved("36", "Twelve pens in each of three bags.")) == 0.0
  assert score_process("") == 0.0


def test_process_reward_reads_only_the_reasoning():
  # the wrong step after </reasoning> does not count when the tag exists ...
  text = "<reasoning>3 * 12 = 36</reasoning>\n<solution>2 + 2 = 5</solution>"
  assert score_process(text) == 3.0
  # ... but without a reasoning tag the whole completion is read
  # (a right multiplicative step, 1.5, and a wrong additive one, 1.0)
  assert score_process("3 * 12 = 36, 2 + 2 = 5") == 3.0 * 1.5 / 2.5
  assert process_reward(["p"], [text], ["36"]) == [3.0]


# ---------------------------------------------------------------- combined
def test_combined_perfect_is_exactly_three():
  total, parts = compute(REWARDS, DEFAULT_WEIGHTS, ["p"], [PERFECT], ["36"])
  assert DEFAULT_WEIGHTS == {"format": 0.2, "process": 0.3, "accuracy": 0.5}
  assert total.dtype == np.float64 and total.tolist() == [3.0]
  assert {k: v.tolist() for k, v in parts.items()} == {
      "format": [3.0], "process": [3.0], "accuracy": [3.0]}


def test_combined_mixed_batch():
  completions = [PERFECT, "It is 36", solved("40", "4 * 10 = 41")]
  total, parts = compute(REWARDS, DEFAULT_WEIGHTS, ["p"] * 3, completions, ["36"] * 3)
  assert parts["format"].tolist() == [3.0, 0.0, 3.0]
  assert parts["process"].tolist() == [3.0, 0.0, 0.0]
  assert parts["accuracy"].tolist() == [3.0, -1.0, 0.25]
  assert total.tolist() == pytest.approx([3.0, -0.5, 0.2 * 3.0 + 0.5 * 0.25])


# ---------------------------------------------------------------- compute() checks
def _ones(prompts, completions, answers):
  return [1.0] * len(completions)


def _boom(prompts, completions, answers):
  raise KeyError("missing field")


def _short(prompts, completions, answers):
  return [1.0]


def _nan_second(prompts, completions, answers):
  return [1.0, math.nan]


def _bool_first(prompts, completions, answers):
  return [True, 1.0]


def _scalar(prompts, completions, answers):
  return 1.0


def _string(prompts, completions, answers):
  return "11"


def _inf_array(prompts, completions, answers):
  return np.array([1.0, np.inf])


def _matrix(prompts, completions, answers):
  return np.ones((2, 1))


def _mutates(prompts, completions, answers):
  completions.clear()
  return [0.0, 0.0]


TWO = (["p", "q"], ["first completion", "x" * 500], ["1", "2"])


def _run(fn, name="custom"):
  return compute({name: fn}, {name: 1.0}, *TWO)


def test_compute_accepts_lists_and_arrays():
  total, parts = compute({"a": _ones, "b": lambda p, c, a: np.array([2, 3])},
                         {"a": 0.5, "b": 2}, *TWO)
  assert total.tolist() == [4.5, 6.5] and parts["b"].dtype == np.float64


def test_compute_wraps_an_exception():
  with pytest.raises(RewardError, match=r"'mine' \(_boom\) raised KeyError") as info:
    _run(_boom, "mine")
  assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("fn, pattern", [
    (_short, r"'custom' \(_short\) returned 1 rewards for 2 completions \(expected length 2"),
    (_nan_second, r"'custom' \(_nan_second\) returned nan \(float\) at index 1, for "
                  r"completion 'xxx"),
    (_bool_first, r"'custom' \(_bool_first\) returned True \(bool\) at index 0, for "
                  r"completion 'first completion'"),
    (_scalar, r"'custom' \(_scalar\) returned a float \('1.0'\), not a sequence of 2"),
    (_string, r"'custom' \(_string\) returned a str"),
    (_inf_array, r"'custom' \(_inf_array\) returned inf \(float\) at index 1"),
    (_matrix, r"'custom' \(_matrix\) returned an array of shape \(2, 1\), expected \(2,\)"),
    (lambda p, c, a: [1.0, "2"], r"<lambda>\) returned '2' \(str\) at index 1"),
    (lambda p, c, a: [1.0, None], r"returned None \(NoneType\) at index 1"),
])
def test_compute_rejects_bad_outputs(fn, pattern):
  with pytest.raises(RewardError, match=pattern):
    _run(fn)


def test_compute_truncates_the_quoted_completion():
  with pytest.raises(RewardError) as info:
    _run(_nan_second)
  assert "x" * 200 + "..." in str(info.value) and "x" * 201 not in str(info.value)


def test_compute_passes_copies():
  total, _ = compute({"m": _mutates, "f": format_reward}, {"m": 1.0, "f": 1.0},
                     ["p", "q"], [PERFECT, "none"], ["36", "1"])
  assert total.tolist() == [3.0, 0.0]


@pytest.mark.parametrize("weights, pattern", [
    ({"format": 1.0}, r"missing \['process'\], extra \[\]"),
    ({"format": 1.0, "process": 1.0, "speed": 1.0}, r"missing \[\], extra \['speed'\]"),
    ({"format": 1.0, "process": math.nan}, "weight 'process' is nan"),
    ({"format": True, "process": 1.0}, "weight 'format' is True"),
    ({"format": "0.2", "process": 1.0}, "weight 'format' is '0.2'"),
])
def test_compute_checks_weights(weights, pattern):
  fns = {"format": format_reward, "process": process_reward}
  with pytest.raises(UserError, match=pattern):
    compute(fns, weights, ["p"], [PERFECT], ["36"])


def test_compute_checks_inputs():
  with pytest.raises(UserError, match="2 prompts, 1 completions, 1 answers"):
    compute(REWARDS, DEFAULT_WEIGHTS, ["p", "q"], [PERFECT], ["36"])
  with pytest.raises(UserError, match="completions as a list, got str"):
    compute(REWARDS, DEFAULT_WEIGHTS, ["p"], PERFECT, ["36"])
  with pytest.raises(RewardError, match="'f' is a str, not callable"):
    compute({"f": "format"}, {"f": 1.0}, ["p"], [PERFECT], ["36"])


# ---------------------------------------------------------------- resolve()
def test_resolve_names_and_modules():
  assert resolve("format") is format_reward
  assert resolve("accuracy") is rewards.accuracy_reward
  assert resolve("jaxslm.train.rewards:format_reward") is format_reward
  assert resolve("jaxslm.train.rewards:REWARDS.get") == REWARDS.get
  assert resolve(_ones) is _ones


@pytest.mark.parametrize("spec, pattern", [
    ("speed", r"unknown reward 'speed'; use one of accuracy, format, process"),
    ("no_such_pkg_xyz:fn", r"cannot import module 'no_such_pkg_xyz'"),
    ("jaxslm.train.rewards:nope", r"has no attribute 'nope'"),
    ("jaxslm.train.rewards:MAX_REWARD", r"is a float, not callable"),
    (":fn", r"is not 'package.module:function'"),
    (3, r"named by a str, got int"),
])
def test_resolve_errors(spec, pattern):
  with pytest.raises(RewardError, match=pattern):
    resolve(spec)


# ---------------------------------------------------------------- tool format
@pytest.mark.parametrize("text,good,total", [
    ("3 bags of 12: <<3*12=36>>36 pens, then <<36-5=31>>31", 2, 2),
    ("<<3*12=35>>35", 0, 1),                       # a value the calculator would not write
    ("<<3*x=3>>3 and <<2+2=4", 0, 2),              # not arithmetic; never closed
    ("<<<2+2=4>>", 0, 1),                          # "<<<" opens once
    ("no tool at all", 0, 0),
    ("Thought: t\nAction: calculator[3*12]\nObservation: 36\nThought: u\nAction: calc[2]\n"
     "Observation: Error: unknown tool 'calc'; Write: Action: tool[input]\nFinal Answer: 36", 1, 2),
    ("Action: calculator\nAction Input: 2+2\nObservation: 4", 1, 1),
    ("Action: calculator[2+]\nAction: over there", 0, 2),
])
def test_tool_format_counts_well_formed_calls(text, good, total):
  from jaxslm.train.tool_rewards import score_tool_format, tool_calls
  assert tool_calls(text) == (good, total)
  assert score_tool_format(text) == (3.0 * good / total if total else 0.0)


def test_tool_format_is_a_named_reward():
  out = rewards.resolve("tool_format")(["p"] * 2, ["<<1+1=2>>2", "Action: calculator[1/0]"],
                                       ["2", "2"])
  assert out == [3.0, 0.0]


def test_accuracy_reward_reads_the_answer_with_the_named_extractor():
  import functools
  trace = "Thought: t\nAction: calculator[3*12]\nObservation: 36\nFinal Answer: 36"
  assert rewards.accuracy_reward(["p"], [trace], ["36"]) == [-1.0]     # no <solution> tag
  fn = functools.partial(rewards.accuracy_reward, extractor="final-answer")
  assert rewards.compute({"accuracy": fn}, {"accuracy": 1.0}, ["p"], [trace], ["36"])[0] == [3.0]
