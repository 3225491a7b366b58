"""The tool-format reward: well-formed tool calls, in either tool format GRPO
samples (`grpo.tools`).

    tool_format_reward(prompts, ["3 bags: <<3*12=36>>36 pens"], ["36"])      # [3.0]
    score_tool_format("Thought: x\\nAction: calculator[3*12]\\nObservation: 36")  # 3.0

A call is one of

  * a GSM8K calculator annotation, from each `<<`: well-formed when it reads
    `<<expr=value>>` with expr arithmetic the safe calculator evaluates and
    value its result as the calculator writes it (`tools.format_number`);
  * an agent action, from each `Action:` outside an observation line:
    well-formed when it reads `Action: tool[input]` (or `Action: tool` /
    `Action Input: input`, as `jaxslm.agent` accepts) naming the calculator
    with an input it evaluates.

The score is 3 × (well-formed calls) / (calls), on the scale of the other
rewards; 0.0 for a completion without any call, so it pays for calls that
work, never for calls as such. It reads the whole trajectory: observation
lines (the tool's own text, error messages included) are skipped.
"""

from __future__ import annotations

import re

from jaxslm.tools import CalculatorError, calculate, format_number

MAX_REWARD = 3.0
_ANNOTATION = re.compile(r"<<([^<>=\n]{1,200})=([^<>\n]{0,64})>>")
_OBSERVATION = re.compile(r"Observation:[^\n]*")
_ACTION = re.compile(r"Action:[ \t]*(?P<tool>[\w.-]+)[ \t]*\[(?P<input>[^\n]*)\]"
                     r"|Action:[ \t]*(?P<tool2>[\w.-]+)[ \t]*\n[ \t]*Action Input:[ \t]*"
                     r"(?P<input2>[^\n]*)")


def _evaluates(expr: str) -> str | None:
  try:
    return format_number(calculate(expr))
  except (CalculatorError, ValueError, ArithmeticError):
    return None


def tool_calls(text: str) -> tuple[int, int]:
  """(well-formed calls, calls) in `text`; see the module doc."""
  if not isinstance(text, str):
    raise TypeError(f"tool_calls expects the completion as a str, got {type(text).__name__}")
  good = total = 0
  for start in (m.start() for m in re.finditer("<<", text)):
    if start > 0 and text[start - 1] == "<":
      continue   # "<<<" is one opening
    total += 1
    m = _ANNOTATION.match(text, start)
    if m is not None:
      value = _evaluates(m.group(1))
      good += value is not None and value == m.group(2).strip()
  body = _OBSERVATION.sub("", text)
  for start in (m.start() for m in re.finditer("Action:", body)):
    total += 1
    m = _ACTION.match(body, start)
    if m is not None:
      tool = m.group("tool") or m.group("tool2")
      arg = m.group("input") if m.group("tool") else m.group("input2")
      good += tool.lower() == "calculator" and _evaluates(arg.strip()) is not None
  return good, total


def score_tool_format(text: str) -> float:
  """3 × the share of well-formed tool calls; 0.0 without any call."""
  good, total = tool_calls(text)
  return MAX_REWARD * good / total if total else 0.0


def tool_format_reward(prompts: list[str], completions: list[str],
                       answers: list[str]) -> list[float]:
  """`score_tool_format` of each completion (trajectory)."""
  del prompts, answers
  return [score_tool_format(text) for text in completions]
