"""GRPO's rollouts in a tool mode (`grpo.tools`): what the policy wrote, as token ids.

    sampled = sample("agent", model_cfg, params, tok, template, prompt_ids, group=4,
                     max_new_tokens=256, temperatures=[0.6, 0.8, 1.0, 1.2], seeds=seeds)
    row = sampled.rows[0]
    row.tokens     # every id after the prompt, in the order the policy saw them
    row.model      # True where the model wrote the token, False on a tool's output
    row.logprobs   # the sampler's log p of each token (temperature 1), 0 on tool tokens
    row.text       # the whole trajectory decoded: what the rewards read

Modes:

  * "none": the sampler alone (GRPO without tools).
  * "calculator": GSM8K's calculator hook. After the model writes `<<expr=`
    the sampler writes the value of expr as forced tokens (`Completion.forced`);
    the model continues from there (`>>36 ...`).
  * "agent": the ReAct loop (`jaxslm.agent`) on token ids. Round 0 samples the
    G completions of each prompt together (the prompt runs once per group);
    each later round runs every unfinished episode as prompt + its ids so far,
    all in one sampler call. A round that ends at the format's observation
    marker and holds an action gets the tool's observation appended as ids
    (encoded once, never merged with the model's ids), then the next round.
    The episode ends at `Final Answer:`, an EOS, a round without an action,
    `max_steps` rounds (the last action is not run: nothing would read it),
    the model's context, or the token budget.

The token budget (`max_new_tokens`) covers the whole episode, model and tool
tokens together; an episode it cuts is marked `budget_cut`. A tool output is
bounded by `max_tool_tokens` (and the format's `max_observation_chars`); one
that was longer is cut and counted in `tool_cut`.

Nothing here decodes a rollout to encode it again: the learning pass reads
exactly these ids (`grpo_data.rollout_batch`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxslm.errors import UserError

TOOL_MODES = ("none", "calculator", "agent")
AGENT_STOPS = ("final_answer", "step_limit", "no_action", "eos", "context_full", "budget")


@dataclasses.dataclass
class Row:
  """One completion (or agent episode) after its prompt."""
  tokens: list[int]
  model: np.ndarray          # bool [len(tokens)]: written by the model
  logprobs: np.ndarray       # float32 [len(tokens)]: the sampler's log p; 0 on tool tokens
  text: str                  # the whole trajectory, for the rewards
  finish: str                # the sampler's finish reason, or an agent stop reason
  tool_calls: int = 0
  tool_cut: int = 0          # tool outputs cut to their bound
  budget_cut: bool = False   # ended by the token budget


@dataclasses.dataclass
class Sampled:
  prompt_ids: list[list[int]]   # the prompts as run
  rows: list[Row]               # prompt-major: prompt i's completion j is rows[i * group + j]
  group: int
  seconds: float


@dataclasses.dataclass(frozen=True)
class AgentTemplate:
  """An agent format used where GRPO expects a prompt template: prompts are
  `fmt.prompt(question, tools)`, answers are read after `Final Answer:`."""
  name: str
  fmt: object                   # jaxslm.agent.AgentFormat
  tools: tuple
  stop: tuple[str, ...] = ("\nQuestion:",)   # ends an episode (the next question)
  extractor: str = "final-answer"
  answer_format: str = "none"
  keep_stop: tuple[str, ...] = ()

  def prompt(self, question: str) -> str:
    return self.fmt.prompt(question.strip(), self.tools)


def check_mode(name: str, mode: str) -> str:
  if mode not in TOOL_MODES:
    raise UserError(f"{name}={mode!r}; valid tool modes: {', '.join(TOOL_MODES)}.")
  return mode


def prompt_template(name: str, mode: str):
  """The template named `name` for rollouts in tool mode `mode`: an agent
  format (`jaxslm.agent.AGENT_FORMATS`) for "agent", a prompt template
  (`jaxslm.data.templates`) otherwise."""
  from jaxslm import agent
  from jaxslm.data.templates import TEMPLATES, get_template
  from jaxslm.tools import calculator
  check_mode("grpo.tools", mode)
  if mode == "agent":
    if name in TEMPLATES:
      raise UserError(f"grpo.tools=agent with data.template={name!r}: that template has no "
                      "agent format (Thought / Action / Observation); set data.template to one "
                      f"of {', '.join(sorted(agent.AGENT_FORMATS))} (react: the synthetic agent "
                      "traces of configs/sft_synthetic_agent.py).")
    return AgentTemplate(name, agent.get_agent_format(name), (calculator,))
  if name in agent.AGENT_FORMATS:
    raise UserError(f"data.template={name!r} is an agent format; it needs grpo.tools=agent "
                    f"(grpo.tools={mode!r} needs one of: {', '.join(sorted(TEMPLATES))}).")
  return get_template(name)


def sample(mode: str, model_cfg, params, tok, template, prompt_ids, *, group: int,
           max_new_tokens: int, temperatures, seeds, top_p: float = 1.0, max_steps: int = 8,
           max_tool_tokens: int = 32, token_budget: int | None = None) -> Sampled:
  """`group` rollouts of each prompt in tool mode `mode`; see the module doc.
  `temperatures`: one value or one per completion index; `seeds`: one per prompt.
  `token_budget`: KV-cache slots (rows x length) per sampler call, at most; more
  rows run in several calls (None: from the device's free memory; 0: one call)."""
  check_mode("tools", mode)
  temps = [float(temperatures)] * group if np.ndim(temperatures) == 0 else \
      [float(x) for x in temperatures]
  if len(temps) != group:
    raise UserError(f"{len(temps)} temperatures for a group of {group}: give one, or one per "
                    "completion of a prompt.")
  t0 = time.perf_counter()
  if mode == "agent":
    if not isinstance(template, AgentTemplate):
      raise UserError("tools=agent needs an agent format as the template "
                      "(grpo_rollouts.prompt_template(name, 'agent')).")
    rows, prompts = _agent(model_cfg, params, tok, template, prompt_ids, group=group,
                           budget=max_new_tokens, temps=temps, seeds=list(seeds), top_p=top_p,
                           max_steps=max_steps, max_tool_tokens=max_tool_tokens,
                           token_budget=token_budget)
  else:
    gen = _generate(model_cfg, params, tok, prompt_ids, stops=template.stop,
                    max_new_tokens=max_new_tokens, temperature=temps, n=group, seeds=list(seeds),
                    top_p=top_p, calculator=mode == "calculator", truncate=True,
                    token_budget=token_budget)
    rows = [_plain_row(c, tok, template) for c in gen.completions]
    prompts = gen.prompt_tokens
  return Sampled(prompts, rows, group, time.perf_counter() - t0)


def _generate(model_cfg, params, tok, prompts, *, stops, max_new_tokens, temperature, n, seeds,
              top_p, calculator=False, truncate=False, token_budget=None):
  """One sampler call, or several when the KV cache of all the rows would pass
  `token_budget` slots (None: from the device's free memory, `sampling.batching`;
  0: one call). Each prompt's seed goes with it, so the split changes no draw."""
  from jaxslm.sampling import batching, generate
  budget = batching.default_token_budget(model_cfg) if token_budget is None else token_budget
  calls = batching.plan([len(p) for p in prompts], max_new_tokens=max_new_tokens,
                        max_rows=max(len(prompts), 1), token_budget=budget, n=n)
  per_row = np.ndim(temperature) > 0 and len(temperature) == len(prompts) * n != n
  outs = []
  for rows in calls:
    temp = ([temperature[i * n + j] for i in rows for j in range(n)] if per_row
            else temperature)
    outs.append(generate(model_cfg, params, [prompts[i] for i in rows],
                         max_new_tokens=max_new_tokens, temperature=temp, top_p=top_p, n=n,
                         seed=[seeds[i] for i in rows], eos_id=tok.eos_id,
                         stop_token_ids=[i for i in tok.eos_ids if i != tok.eos_id],
                         stop_strings=list(stops), tokenizer=tok, calculator=calculator,
                         truncate=truncate, pad_id=tok.pad_id))
  if len(outs) == 1:
    return outs[0]
  return _Calls([c for o in outs for c in o.completions], [p for o in outs for p in o.prompt_tokens])


@dataclasses.dataclass
class _Calls:
  """The completions and prompts of several sampler calls, in prompt order."""
  completions: list
  prompt_tokens: list


def _plain_row(c, tok, template) -> Row:
  from jaxslm.evaluation.gsm8k import _with_kept_stop
  forced = np.zeros(len(c.tokens), bool) if c.forced is None else np.asarray(c.forced, bool)
  model = ~forced
  logprobs = np.where(model, np.asarray(c.logprobs, np.float32), np.float32(0.0))
  calls = int(np.sum(forced[1:] & ~forced[:-1]) + (forced[:1].sum() if len(forced) else 0))
  return Row(list(c.tokens), model, logprobs.astype(np.float32), _with_kept_stop(c, tok, template),
             c.finish_reason, tool_calls=calls, budget_cut=c.finish_reason == "length")


# ------------------------------------------------------------------ the agent on ids
@dataclasses.dataclass
class _Episode:
  prompt: int
  index: int                    # j within its group
  tokens: list = dataclasses.field(default_factory=list)
  model: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  stop: str | None = None
  calls: int = 0
  cut: int = 0

  def add(self, ids, logprobs=None):
    self.tokens += list(ids)
    self.model += [logprobs is not None] * len(ids)
    self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


def agent_seed(seed: int, j: int, round_: int) -> int:
  """The sampling seed of completion j's round `round_` >= 1 (round 0 uses the prompt's)."""
  return int(np.random.default_rng([seed, j, round_, 11]).integers(0, 2**31 - 1))


def _agent(model_cfg, params, tok, template, prompt_ids, *, group, budget, temps, seeds, top_p,
           max_steps, max_tool_tokens, token_budget=None):
  from jaxslm.agent import read_round, tools_by_name
  fmt, tools = template.fmt, tools_by_name(template.tools)
  stops = list(fmt.stop) + [s for s in template.stop if s not in fmt.stop]
  ctx = model_cfg.max_seq_len
  prompts = [list(map(int, x)) for x in prompt_ids]
  for i, x in enumerate(prompts):
    if len(x) >= ctx:
      raise UserError(f"prompt {i} has {len(x)} tokens, the model's whole context ({ctx}); "
                      "lower data.prompt_budget.")
  episodes = [_Episode(r // group, r % group) for r in range(len(prompts) * group)]
  for k in range(max_steps):
    active = [e for e in episodes if e.stop is None]
    for e in active:
      if len(prompts[e.prompt]) + len(e.tokens) >= ctx:
        e.stop = "context_full"
      elif len(e.tokens) >= budget:   # an observation filled the budget exactly
        e.stop = "budget"
    active = [e for e in active if e.stop is None]
    if not active:
      break
    if k == 0:
      gen = _generate(model_cfg, params, tok, prompts, stops=stops, max_new_tokens=budget,
                      temperature=temps, n=group, seeds=seeds, top_p=top_p,
                      token_budget=token_budget)
    else:
      gen = _generate(model_cfg, params, tok, [prompts[e.prompt] + e.tokens for e in active],
                      stops=stops, max_new_tokens=max(budget - len(e.tokens) for e in active),
                      temperature=[temps[e.index] for e in active], n=1, top_p=top_p,
                      seeds=[agent_seed(seeds[e.prompt], e.index, k) for e in active],
                      token_budget=token_budget)
    for e, c in zip(active, gen.completions):
      _round(e, c, tok, fmt, tools, stops, read_round, budget=budget,
             last=k == max_steps - 1, max_tool_tokens=max_tool_tokens)
  rows = []
  for e in episodes:
    stop = e.stop or "step_limit"
    rows.append(Row(e.tokens, np.asarray(e.model, bool), np.asarray(e.logprobs, np.float32),
                    _text(tok, e.tokens), stop, tool_calls=e.calls, tool_cut=e.cut,
                    budget_cut=stop == "budget"))
  return rows, prompts


def _text(tok, ids) -> str:
  """The text of `ids` without a final EOS / stop token (as the sampler's texts)."""
  if ids and ids[-1] in set(tok.eos_ids) | {tok.eos_id}:
    ids = ids[:-1]
  return tok.decode(ids)


def _round(e: _Episode, c, tok, fmt, tools, stops, read_round, *, budget, last,
           max_tool_tokens) -> None:
  """Add one round's sampled ids to episode `e`; end it, or append the observation."""
  room = budget - len(e.tokens)
  ids, logprobs = list(c.tokens[:room]), np.asarray(c.logprobs[:room], np.float32)
  e.add(ids, logprobs)
  text = _text(tok, ids)
  ends = [(text.find(s), s) for s in stops if s in text]
  stop_at, stop_s = min(ends) if ends else (-1, None)
  read = read_round(text[:stop_at] if stop_at >= 0 else text, fmt, tools)
  if read.kind == "final":
    e.stop = "final_answer"
    return
  out_of_room = len(c.tokens) > room or (c.finish_reason == "length" and len(e.tokens) >= budget)
  if read.kind == "none" or stop_s not in fmt.stop:
    e.stop = ("budget" if out_of_room else "eos" if c.finish_reason in ("eos", "stop_token")
              else "context_full" if c.finish_reason == "context" else "no_action")
    return
  e.calls += 1
  if last:
    e.stop = "step_limit"
    return
  pre, _, post = fmt.observation.partition("{observation}")
  pre = pre[len(stop_s):] if pre.startswith(stop_s) else pre
  extra = text[stop_at + len(stop_s):]   # what the stop string's last token wrote past it
  if extra and pre.startswith(extra):
    pre = pre[len(extra):]
  value = tok.encode(read.step.observation)
  if len(value) > max_tool_tokens or read.observation_cut:
    e.cut += 1
  obs = tok.encode(pre) + value[:max_tool_tokens] + tok.encode(post)
  if len(e.tokens) + len(obs) > budget:
    e.stop = "budget"
    return
  e.add(obs)
