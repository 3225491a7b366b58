"""A ReAct-style thought / action / observation loop, batched over questions.

The model is any `generate(prompts, stop, max_new_tokens) -> completions`
callable (one completion per prompt, stop strings not included), so a real
model and a scripted stand-in in a test are used the same way:

    import jaxslm
    from jaxslm.agent import model_generator, run_agent

    generate = model_generator(jaxslm.load("runs/sft"), temperature=0.0)
    traces = run_agent(generate, ["Tom has 3 bags of 12 pens. How many pens?"])
    traces[0].final_answer      # "36"
    traces[0].steps[0].action   # "calculator"; .action_input "3*12", .observation "36"
    print(traces[0].transcript) # the whole text the model saw and wrote

With the default `AgentFormat` the prompt is a header naming the tools, the
optional few-shot `examples`, then `Question: ...\\nThought:`. The model writes
a thought and either

    Action: calculator[3*12]            (or: Action: calculator
                                             Action Input: 3*12)

and stops at "\\nObservation:", upon which the loop runs the tool and appends
"\\nObservation: 36\\nThought:" for the next round, or it writes
`Final Answer: 36`, which ends the episode. Each round advances every
unfinished episode with a single `generate` call.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from jaxslm.errors import UserError
from jaxslm.tools import Tool, calculator

# One completion per prompt; None for a prompt the model cannot continue (its
# context is full), which ends that episode with stop reason "context_full".
Generate = Callable[[list[str], list[str], int], list["str | None"]]
STOP_REASONS = ("final_answer", "step_limit", "no_action", "context_full")

DEFAULT_HEADER = (
    "Answer the math question. You can use these tools:\n{tools}\n\n"
    "Use this format:\n"
    "Question: the question to answer\n"
    "Thought: what to do next\n"
    "Action: the tool and its input, e.g. calculator[3*12]\n"
    "Observation: the tool's output\n"
    "... (Thought / Action / Observation can repeat)\n"
    "Thought: I now know the answer\n"
    "Final Answer: the number only\n\n")


@dataclasses.dataclass(frozen=True)
class AgentFormat:
  """How prompts are written and completions are read.

  `header` is formatted with `tools` (one `tool_line` per tool); `examples`
  (few-shot text) follows it verbatim. Regexes: `action_re` and
  `action_input_re` need the groups `tool` and `input`, `final_re` the group
  `answer`; text matching `action_marker` that neither action regex parses is
  a malformed action. Observations longer than `max_observation_chars` are
  cut; an episode whose prompt grows past `max_prompt_chars` (if set) ends
  with stop reason "context_full".
  """
  header: str = DEFAULT_HEADER
  tool_line: str = "{name}: {description}"
  examples: str = ""
  question: str = "Question: {question}\nThought:"
  observation: str = "\nObservation: {observation}\nThought:"
  stop: tuple[str, ...] = ("\nObservation:",)
  action_re: str = r"Action:[ \t]*(?P<tool>[\w.-]+)[ \t]*\[(?P<input>[^\n]*)\]"
  action_input_re: str = (r"Action:[ \t]*(?P<tool>[\w.-]+)[ \t]*\n[ \t]*"
                          r"Action Input:[ \t]*(?P<input>[^\n]*)")
  final_re: str = r"Final Answer:[ \t]*\n?[ \t]*(?P<answer>[^\n]*)"
  action_marker: str = r"Action:[^\n]*"
  max_observation_chars: int = 500
  max_prompt_chars: int | None = None

  def prompt(self, question: str, tools: Sequence[Tool]) -> str:
    lines = "\n".join(self.tool_line.format(name=t.name, description=t.description)
                      for t in tools)
    return self.header.format(tools=lines) + self.examples + self.question.format(
        question=question)


# Agent formats by name, for what picks one by name (GRPO's `data.template`
# with `grpo.tools=agent`): "react" is the layout of the synthetic traces
# (`jaxslm.data.synthetic.to_react`: no header), "react-instructions" puts the
# default header naming the tools first.
AGENT_FORMATS: dict[str, AgentFormat] = {"react": AgentFormat(header=""),
                                         "react-instructions": AgentFormat()}


def get_agent_format(name: str, what: str = "data.template") -> AgentFormat:
  """The agent format called `name`; a UserError naming the valid ones otherwise."""
  if name not in AGENT_FORMATS:
    raise UserError(f"{what}={name!r} has no agent format (Thought / Action / Observation); "
                    f"agent formats: {', '.join(sorted(AGENT_FORMATS))} (e.g. {what}=react for "
                    "a model fine-tuned on synthetic agent traces).")
  return AGENT_FORMATS[name]


def tools_by_name(tools: Sequence[Tool]) -> dict[str, Tool]:
  """{lower-case name: tool}; two tools of one name are refused."""
  by_name = {}
  for tool in tools:
    if tool.name.lower() in by_name:
      raise ValueError(f"two tools are named {tool.name!r}; tool names must be unique")
    by_name[tool.name.lower()] = tool
  return by_name


@dataclasses.dataclass
class Step:
  """One round that ended in an action: what the model thought and did, and what it saw."""
  thought: str
  action: str
  action_input: str
  observation: str


@dataclasses.dataclass
class Trace:
  """One episode. `final_answer` is None unless `stop_reason == "final_answer"`."""
  question: str
  steps: list[Step]
  final_answer: str | None
  stop_reason: str
  transcript: str

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def run_agent(generate: Generate, questions: list[str], *,
              tools: Sequence[Tool] = (calculator,), fmt: AgentFormat | None = None,
              max_steps: int = 8, max_new_tokens: int = 128) -> list[Trace]:
  """Run one episode per question, all advanced together; traces in input order.

  `max_steps` bounds the rounds (generate calls) per episode: when the last
  one ends in an action, the tool still runs and is recorded, and the episode
  stops with "step_limit". Malformed actions and unknown tools become error
  observations (the episode goes on); tools never raise (see `Tool`).
  """
  if isinstance(questions, str):
    raise ValueError("questions must be a list of str, got one str; wrap it: [question]")
  if not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
  fmt = fmt or AgentFormat()
  by_name = tools_by_name(tools)
  patterns = _Patterns(fmt)
  episodes = [_Episode(q, fmt.prompt(q, tools)) for q in questions]
  for _ in range(max_steps):
    for ep in episodes:
      if ep.stop_reason is None and fmt.max_prompt_chars is not None \
          and len(ep.transcript) > fmt.max_prompt_chars:
        ep.stop_reason = "context_full"
    active = [ep for ep in episodes if ep.stop_reason is None]
    if not active:
      break
    completions = generate([ep.transcript for ep in active], list(fmt.stop), max_new_tokens)
    if len(completions) != len(active):
      raise ValueError(f"generate returned {len(completions)} completions for "
                       f"{len(active)} prompts; it must return one per prompt")
    for ep, completion in zip(active, completions):
      if completion is None:   # the model's context cannot hold this prompt any more
        ep.stop_reason = "context_full"
        continue
      _advance(ep, completion, patterns, fmt, by_name)
  for ep in episodes:
    if ep.stop_reason is None:
      ep.stop_reason = "step_limit"
  return [Trace(ep.question, ep.steps, ep.final_answer, ep.stop_reason, ep.transcript)
          for ep in episodes]


def model_generator(model, *, temperature: float = 0.0, seed: int = 0,
                    add_bos: bool | None = None, **sample_kwargs) -> Generate:
  """A `Generate` backed by `jaxslm.sample`; `model` is a path or `jaxslm.load(path)`.

  A path is loaded once here rather than on every round. Prompts start with BOS
  where `add_bos` says (None: the tokenizer's `add_bos_default`). A prompt that fills
  the model's context gets None (the episode ends "context_full"). Round r samples
  with seed `seed + r`, so rounds at temperature > 0 draw fresh randomness
  while the whole run stays reproducible.
  """
  from jaxslm import api  # lazy: the agent loop itself needs no JAX

  model = api.resolve_model(model)
  tok, context = model.tokenizer, model.model_cfg.max_seq_len
  rounds = [0]

  def generate(prompts: list[str], stop: list[str], max_new_tokens: int) -> list[str | None]:
    r, rounds[0] = rounds[0], rounds[0] + 1
    fits = [i for i, p in enumerate(prompts) if len(tok.encode(p, add_bos=add_bos)) < context]
    out: list[str | None] = [None] * len(prompts)
    if fits:
      texts = api.sample(model, [prompts[i] for i in fits], max_new_tokens=max_new_tokens,
                            temperature=temperature, stop=stop, seed=seed + r, add_bos=add_bos,
                            **sample_kwargs)
      for i, text in zip(fits, texts):
        out[i] = text
    return out

  return generate


# ------------------------------------------------------------------ internals
@dataclasses.dataclass
class _Episode:
  question: str
  transcript: str
  steps: list[Step] = dataclasses.field(default_factory=list)
  final_answer: str | None = None
  stop_reason: str | None = None


class _Patterns:
  def __init__(self, fmt: AgentFormat):
    self.actions = [re.compile(fmt.action_re), re.compile(fmt.action_input_re)]
    self.final = re.compile(fmt.final_re)
    self.marker = re.compile(fmt.action_marker)


def _first(*matches: re.Match | None) -> re.Match | None:
  found = [m for m in matches if m is not None]
  return min(found, key=lambda m: m.start()) if found else None


@dataclasses.dataclass(frozen=True)
class Round:
  """What one completion of the model does: `kind` "final" (with `answer`),
  "action" (with `step`: the tool already run, its observation bounded to
  `AgentFormat.max_observation_chars`; `observation_cut` when it was longer)
  or "none"; `end` is where the model's part of the text ends (the final
  answer's line, or the action) and is all of it for "none"."""
  kind: str
  end: int
  answer: str | None = None
  step: Step | None = None
  observation_cut: bool = False


def read_round(completion: str, fmt: AgentFormat, tools: dict[str, Tool],
               patterns: "_Patterns | None" = None) -> Round:
  """Read one completion (`tools` by lower-case name): a final answer, an
  action (run here; tools never raise) or neither. The first of them wins."""
  patterns = patterns or _Patterns(fmt)
  action = _first(*(p.search(completion) for p in patterns.actions))
  marker = patterns.marker.search(completion)
  final = patterns.final.search(completion)
  event = _first(action, marker, final)
  if event is None:
    return Round("none", len(completion))
  if event is final:
    return Round("final", final.end(), answer=final.group("answer").strip())
  thought = completion[:event.start()].strip()
  valid = ", ".join(t.name for t in tools.values()) or "(none)"
  if action is not None and action.start() == event.start():
    name, arg, end = action.group("tool").strip(), action.group("input").strip(), action.end()
    tool = tools.get(name.lower())
    if tool is None:
      observation = (f"Error: unknown tool {name!r}; valid tools: {valid}. "
                     f"Write: Action: tool[input]")
    else:
      observation = tool(arg)
  else:  # "Action:" that neither action regex reads
    name, arg, end = marker.group(0).partition(":")[2].strip(), "", marker.end()
    observation = (f"Error: could not read the action; write it as Action: tool[input] "
                   f"with a tool from: {valid}")
  observation = " ".join(observation.split())
  cut = len(observation) > fmt.max_observation_chars
  return Round("action", end, step=Step(thought, name, arg,
                                        observation[:fmt.max_observation_chars]),
               observation_cut=cut)


def _advance(ep: _Episode, completion: str, patterns: _Patterns, fmt: AgentFormat,
             tools: dict[str, Tool]) -> None:
  """Read one completion: finish the episode, or run the action and append its observation."""
  r = read_round(completion, fmt, tools, patterns)
  if r.kind == "none":
    ep.transcript += completion
    ep.stop_reason = "no_action"
  elif r.kind == "final":
    ep.transcript += completion[:r.end]
    ep.final_answer = r.answer
    ep.stop_reason = "final_answer"
  else:
    ep.steps.append(r.step)
    ep.transcript += completion[:r.end] + fmt.observation.format(observation=r.step.observation)
