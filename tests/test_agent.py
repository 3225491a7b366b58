from __future__ import annotations

import json
import re

import pytest

from jaxslm.agent import AgentFormat, Step, Trace, run_agent
from jaxslm.tools import Tool, calculator

_QUESTION = re.compile(r"Question: (.*)\nThought:")


class ScriptedModel:
  """A stand-in model: per question, the completions of its 1st, 2nd, ... round.

  Records every call (prompts, stop strings, max_new_tokens) so tests can check
  what the agent loop sent.
  """

  def __init__(self, script: dict[str, list[str]]):
    self.script = script
    self.calls: list[tuple[list[str], list[str], int]] = []
    self.rounds: dict[str, int] = {}

  def __call__(self, prompts: list[str], stop: list[str], max_new_tokens: int) -> list[str]:
    self.calls.append((list(prompts), list(stop), max_new_tokens))
    out = []
    for prompt in prompts:
      question = _QUESTION.findall(prompt)[-1]
      n = self.rounds.get(question, 0)
      self.rounds[question] = n + 1
      out.append(self.script[question][n])
    return out

  def questions_in_call(self, i: int) -> list[str]:
    return [_QUESTION.findall(p)[-1] for p in self.calls[i][0]]


def test_tool_use_then_final_answer():
  model = ScriptedModel({"Tom has 3 bags of 12 pens. How many pens?": [
      " Each bag has 12 pens, so I multiply.\nAction: calculator[3*12]",
      " I now know the answer.\nFinal Answer: 36",
  ]})
  [trace] = run_agent(model, ["Tom has 3 bags of 12 pens. How many pens?"], max_new_tokens=64)
  assert trace.stop_reason == "final_answer"
  assert trace.final_answer == "36"
  assert trace.steps == [Step(thought="Each bag has 12 pens, so I multiply.",
                              action="calculator", action_input="3*12", observation="36")]
  assert len(model.calls) == 2
  prompts, stop, max_new = model.calls[0]
  first_prompt = prompts[0]
  assert stop == ["\nObservation:"] and max_new == 64
  assert "calculator: " in first_prompt  # the header lists the tools
  assert first_prompt.endswith("Question: Tom has 3 bags of 12 pens. How many pens?\nThought:")
  second_prompt = model.calls[1][0][0]
  assert second_prompt == (first_prompt + " Each bag has 12 pens, so I multiply.\n"
                           "Action: calculator[3*12]\nObservation: 36\nThought:")
  assert trace.transcript == second_prompt + " I now know the answer.\nFinal Answer: 36"
  assert json.loads(json.dumps(trace.to_dict()))["steps"][0]["observation"] == "36"


def test_action_input_variant():
  model = ScriptedModel({"q": [
      " Add them.\nAction: calculator\nAction Input: 1,200 + 30",
      " Done.\nFinal Answer: 1230",
  ]})
  [trace] = run_agent(model, ["q"])
  assert trace.steps[0].action == "calculator"
  assert trace.steps[0].action_input == "1,200 + 30"
  assert trace.steps[0].observation == "1230"
  assert model.calls[1][0][0].endswith("Action Input: 1,200 + 30\nObservation: 1230\nThought:")
  assert trace.final_answer == "1230"


def test_malformed_action_then_recovery():
  model = ScriptedModel({"q": [
      " Let me compute.\nAction: please add 2 and 2",
      " Oops.\nAction: calculator[2+2]",
      " Final Answer: 4",
  ]})
  [trace] = run_agent(model, ["q"])
  bad, good = trace.steps
  assert bad.observation.startswith("Error: ")
  assert "Action: tool[input]" in bad.observation and "calculator" in bad.observation
  assert bad.action == "please add 2 and 2" and bad.action_input == ""
  assert "Observation: " + bad.observation in model.calls[1][0][0]
  assert good.observation == "4"
  assert (trace.stop_reason, trace.final_answer) == ("final_answer", "4")


def test_unknown_tool_then_recovery():
  model = ScriptedModel({"q": [
      " Search it.\nAction: search[capital of France]",
      " Use the calculator instead.\nAction: Calculator[6 * 7]",   # names ignore case
      "Final Answer: 42",
  ]})
  [trace] = run_agent(model, ["q"])
  assert trace.steps[0].action == "search"
  assert trace.steps[0].observation.startswith("Error: unknown tool 'search'")
  assert "calculator" in trace.steps[0].observation
  assert trace.steps[1].observation == "42"
  assert trace.final_answer == "42"


def test_calculator_error_is_an_observation():
  model = ScriptedModel({"q": [
      " Divide.\nAction: calculator[10 / (5 - 5)]",
      " Divide by 5 instead.\nAction: calculator[__import__('os')]",
      " Give up.\nFinal Answer: 2",
  ]})
  [trace] = run_agent(model, ["q"])
  assert trace.steps[0].observation.startswith("Error: division by zero")
  assert trace.steps[1].observation.startswith("Error: ")
  assert "Observation: Error: division by zero" in model.calls[1][0][0]
  assert trace.stop_reason == "final_answer"


def test_step_limit():
  model = ScriptedModel({"q": [" Again.\nAction: calculator[1+1]"] * 10})
  [trace] = run_agent(model, ["q"], max_steps=3)
  assert len(model.calls) == 3
  assert len(trace.steps) == 3 and all(s.observation == "2" for s in trace.steps)
  assert (trace.stop_reason, trace.final_answer) == ("step_limit", None)


def test_no_action():
  model = ScriptedModel({"q": [" I am not sure what to do."]})
  [trace] = run_agent(model, ["q"])
  assert (trace.stop_reason, trace.final_answer, trace.steps) == ("no_action", None, [])
  assert trace.transcript.endswith("Thought: I am not sure what to do.")


def test_first_of_action_and_final_answer_wins():
  model = ScriptedModel({
      "a": [" Final Answer: 5\nAction: calculator[1+1]"],
      "b": [" Action: calculator[2+3]\nFinal Answer: 9", " Final Answer: 5"],
  })
  a, b = run_agent(model, ["a", "b"])
  assert (a.final_answer, a.steps) == ("5", [])
  assert a.transcript.endswith("Final Answer: 5")
  assert b.steps[0].observation == "5" and b.final_answer == "5"
  assert "Final Answer: 9" not in b.transcript


def test_batched_rounds_only_unfinished_in_input_order():
  model = ScriptedModel({
      "one": [" Final Answer: 1"],
      "two": [" Action: calculator[1+1]", " Final Answer: 2"],
      "three": [" Action: calculator[1+2]", " Action: calculator[3*1]", " Final Answer: 3"],
  })
  traces = run_agent(model, ["three", "one", "two"])
  assert len(model.calls) == 3
  assert model.questions_in_call(0) == ["three", "one", "two"]
  assert model.questions_in_call(1) == ["three", "two"]
  assert model.questions_in_call(2) == ["three"]
  assert [t.question for t in traces] == ["three", "one", "two"]
  assert [t.final_answer for t in traces] == ["3", "1", "2"]
  assert [len(t.steps) for t in traces] == [2, 0, 1]


def test_context_full():
  fmt = AgentFormat(max_prompt_chars=800)
  model = ScriptedModel({"q": [" Pad. " + "x" * 400 + "\nAction: calculator[1+1]"] * 5})
  [trace] = run_agent(model, ["q"], fmt=fmt)
  assert trace.stop_reason == "context_full" and trace.final_answer is None
  assert len(model.calls) == len(trace.steps) < 5


def test_custom_format_and_tools():
  upper = Tool("upper", "upper-cases text", str.upper)
  fmt = AgentFormat(header="Tools:\n{tools}\n", examples="Q: hi\nA: HI\n\n",
                    question="Q: {question}\nThought:", stop=("\nObs:",),
                    observation="\nObs: {observation}\nThought:")
  calls = []

  def generate(prompts, stop, max_new_tokens):
    calls.append((prompts, stop))
    return [" Action: upper[abc]" if len(calls) == 1 else " Final Answer: ABC"] * len(prompts)

  [trace] = run_agent(generate, ["shout abc"], tools=[upper, calculator], fmt=fmt)
  assert calls[0][0][0] == ("Tools:\nupper: upper-cases text\ncalculator: "
                            + calculator.description + "\nQ: hi\nA: HI\n\nQ: shout abc\nThought:")
  assert calls[0][1] == ["\nObs:"]
  assert calls[1][0][0].endswith("Action: upper[abc]\nObs: ABC\nThought:")
  assert trace.final_answer == "ABC"


def test_bad_input():
  model = ScriptedModel({})
  assert run_agent(model, []) == [] and model.calls == []
  with pytest.raises(ValueError, match="max_steps.*0"):
    run_agent(model, ["q"], max_steps=0)
  with pytest.raises(ValueError, match="list"):
    run_agent(model, "q")
  with pytest.raises(ValueError, match="one per prompt"):
    run_agent(lambda p, s, n: [], ["q"])
  with pytest.raises(ValueError, match="unique"):
    run_agent(model, ["q"], tools=[calculator, calculator])


def test_trace_to_dict_round_trips():
  trace = Trace("q", [Step("t", "calculator", "1+1", "2")], "2", "final_answer", "text")
  d = trace.to_dict()
  assert d["steps"] == [{"thought": "t", "action": "calculator", "action_input": "1+1",
                         "observation": "2"}]
  assert Trace(**{**d, "steps": [Step(**s) for s in d["steps"]]}) == trace


def test_agent_replays_synthetic_react_traces_exactly():
  """`to_react` documents are what the default format parses: a model that
  replays them (cut at each Observation) gets every tool result the trace shows
  and the trace's final answer."""
  from jaxslm.data.synthetic import SyntheticMath, to_react
  problems = [SyntheticMath(5).problem(i) for i in range(30)]
  docs = {p.question: to_react(p) for p in problems}

  def replay(prompts, stop, max_new_tokens):
    out = []
    for prompt in prompts:
      question = _QUESTION.findall(prompt)[0]
      assert docs[question].startswith(prompt)
      rest = docs[question][len(prompt):]   # what follows the prompt in the document
      cut = min([rest.find(s) for s in stop if s in rest] or [len(rest)])
      out.append(rest[:cut])
    return out

  traces = run_agent(replay, [p.question for p in problems], fmt=AgentFormat(header=""), max_steps=8)
  for p, t in zip(problems, traces):
    assert t.stop_reason == "final_answer" and t.final_answer == str(p.final_answer)
    assert len(t.steps) == p.num_steps and t.transcript == docs[p.question]


def test_a_prompt_the_model_cannot_hold_ends_with_context_full():
  def gen(prompts, stop, max_new_tokens):
    return [None if "long" in p else " thinking\nAction: calculator[1+1]" for p in prompts]
  traces = run_agent(gen, ["a long one", "short"], max_steps=2)
  assert traces[0].stop_reason == "context_full" and traces[0].steps == []
  assert traces[1].stop_reason == "step_limit" and len(traces[1].steps) == 2
