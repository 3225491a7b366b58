"""GRPO with tools inside the rollout, on scripted models whose every token is
known in advance (`tests/scripted.py`): the rollout rows keep the sampler's
ids, a model-written mask and the sampler's log-probabilities; tool tokens get
no gradient; agent episodes end for every reason; bad input is refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxslm import lora
from jaxslm.agent import AgentFormat
from jaxslm.errors import UserError
from jaxslm.tools import Tool, calculator
from jaxslm.train import grpo_data, grpo_rollouts
from jaxslm.train.grpo_loss import grpo_loss, token_logprobs
from jaxslm.train.grpo_step import _step_jit
from tests.scripted import CharTokenizer, bigram_model


class MergeTokenizer(CharTokenizer):
  """Characters, except that "=9" and "6;" are one token each (ids 1 and 2):
  a tool's output encoded on its own ("9", "6") differs from the same text
  encoded with what precedes or follows it. EOS = pad = 0."""
  MERGES = {"=9": 1, "6;": 2}

  def _encode(self, text):
    out, i = [], 0
    while i < len(text):
      pair = self.MERGES.get(text[i:i + 2])
      out.append(pair if pair else ord(text[i]))
      i += 2 if pair else 1
    return out

  def _decode(self, ids):
    back = {v: k for k, v in self.MERGES.items()}
    return "".join(back.get(i, chr(i)) for i in ids if i)


# The agent's format in characters a bigram model can write: an action is
# "c[expr]", ">" ends a round (the observation marker), the observation is
# written as "<value>;", and "F<n>" is the final answer.
FMT = AgentFormat(header="", question="{question}", observation=">{observation};", stop=(">",),
                  action_re=r"(?P<tool>[a-z])\[(?P<input>[^\]\n]*)\]",
                  action_input_re=r"(?!x)x(?P<tool>)(?P<input>)", final_re=r"F(?P<answer>\d+)",
                  action_marker=r"[a-z]")
HUGE = Tool("h", "writes a thousand nines", lambda s: "9" * 1000)
TEMPLATE = grpo_rollouts.AgentTemplate("scripted", FMT, (dataclasses.replace(calculator, name="c"),
                                                         HUGE), stop=("@",))
# Prompts (their last character picks the path): "?" a calculator call then the
# final answer; "!" the final answer at once; "#" a malformed action; "%" the
# tool whose output is huge; "<" GSM8K's calculator annotation.
TABLE = {"?": "c", "c": "[", "[": "2", "2": "*", "*": "3", "3": "]", "]": ">",
         ";": "F", "F": "6", "6": "\0", "!": "F", "#": "x", "x": ">", "%": "h", "h": "[",
         "<": "4", "4": "+", "+": "5", "5": "=", "9": ">", ">": "\0"}
TOK = MergeTokenizer()
OPT = optax.sgd(1.0)   # one object: the jitted step is compiled once for every test


@pytest.fixture(scope="module")
def model():
  return bigram_model(TABLE, max_seq_len=64)


def ids(text):
  return [ord(c) for c in text]


def run_agent(model, prompts, *, group=2, budget=24, max_steps=4, max_tool_tokens=8):
  cfg, params = model
  return grpo_rollouts.sample("agent", cfg, params, TOK, TEMPLATE, [ids(p) for p in prompts],
                              group=group, max_new_tokens=budget, temperatures=[1.0, 0.7][:group],
                              seeds=list(range(len(prompts))), max_steps=max_steps,
                              max_tool_tokens=max_tool_tokens)


@pytest.fixture(scope="module")
def episodes(model):
  return run_agent(model, ["Q?", "Q!", "Q#", "Q%"], budget=60, max_tool_tokens=40)


def test_agent_episodes_keep_ids_mask_and_logprobs(episodes):
  out = episodes
  rows = out.rows
  assert len(rows) == 8 and out.prompt_ids[0] == ids("Q?")
  tool, direct, malformed, huge = rows[0], rows[2], rows[4], rows[6]
  # a calculator call, its observation as tool tokens, then the final answer
  assert TOK.decode(tool.tokens) == "c[2*3]>6;F6"
  assert tool.tokens == ids("c[2*3]>") + [ord("6"), ord(";")] + ids("F6") + [0]
  assert tool.model.tolist() == [True] * 7 + [False, False] + [True] * 3
  assert tool.finish == "final_answer" and tool.tool_calls == 1 and tool.tool_cut == 0
  assert np.all(tool.logprobs[~tool.model] == 0.0)
  assert np.all(tool.logprobs[tool.model] > -1e-3)      # the scripted tokens are near certain
  assert rows[1].tokens == tool.tokens                  # the group's second episode, seeded apart
  # never calls the tool: every token the model's
  assert TOK.decode(direct.tokens) == "F6" and direct.model.all() and direct.tool_calls == 0
  # a malformed action: its observation is an error, and the episode goes on
  text = TOK.decode(malformed.tokens)
  assert text.startswith("x>Error: could not") and text.endswith(";F6")
  assert malformed.finish == "final_answer" and malformed.tool_calls == 1
  assert malformed.tool_cut == 1                        # the error text is over 40 tokens
  # a huge tool output: bounded to max_tool_tokens, cut and counted
  assert TOK.decode(huge.tokens) == "h[2*3]>" + "9" * 40 + ";F6"
  assert huge.tool_cut == 1 and (~huge.model).sum() == 41
  assert [r.text for r in rows[:1]] == ["c[2*3]>6;F6"]


def test_agent_step_limit_and_budget(model):
  # (one budget for the three runs: the sampler compiles once for them)
  limited = run_agent(model, ["Q?"], budget=8, max_steps=1).rows[0]
  # the last round's action is not run: nothing would read its observation
  assert limited.finish == "step_limit" and limited.tool_calls == 1
  assert TOK.decode(limited.tokens) == "c[2*3]>" and limited.model.all()
  cut = run_agent(model, ["Q?"], budget=8).rows[0]      # 7 tokens + a 2-token observation
  assert cut.finish == "budget" and cut.budget_cut and len(cut.tokens) == 7
  short = run_agent(model, ["Q?"], budget=5).rows[0]    # cut inside the first round
  assert short.finish == "budget" and short.budget_cut and len(short.tokens) == 5
  exact = run_agent(model, ["Q?"], budget=9).rows[0]    # the observation fills it exactly
  assert exact.finish == "budget" and exact.budget_cut and len(exact.tokens) == 9
  assert exact.model.tolist() == [True] * 7 + [False] * 2


def test_learning_batch_is_the_samplers_ids_with_pad_equal_to_eos(episodes):
  """Rows end by their lengths (EOS = pad = 0 here), the targets are exactly the
  sampled ids although re-encoding the text would merge "6;", and the mask is 0
  exactly on the tool's tokens."""
  out = episodes
  rows = out.rows
  batch = grpo_data.rollout_batch(out.prompt_ids, [r.tokens for r in rows], 2, TOK.pad_id,
                                  prefix_slots=4, suffix_slots=60,
                                  model_masks=[r.model for r in rows],
                                  logprobs=[r.logprobs for r in rows])
  assert TOK.pad_id == TOK.eos_id == 0
  for r, row in enumerate(rows):
    n = len(row.tokens)
    assert batch["targets"][r, :n].tolist() == row.tokens
    assert batch["mask"][r, :n].tolist() == row.model.astype(float).tolist()
    assert batch["mask"][r, n:].sum() == 0 and row.tokens[-1] == 0   # EOS learned, pad not
    assert batch["suffix"][r, 1:n].tolist() == row.tokens[:-1]
  assert TOK.encode(TOK.decode(rows[0].tokens)) != rows[0].tokens    # re-encoding would differ


def test_calculator_rows_keep_forced_ids_and_first_pass_matches_the_sampler(model):
  """Calculator mode: the value the sampler wrote is a tool token (mask 0)
  kept as its own ids ("=9" would merge on re-encoding); the learning pass's
  first log-probabilities equal the sampler's on the model's tokens; the loss
  gives the tool tokens exactly zero gradient."""
  cfg, params = model
  tmpl = dataclasses.replace(TEMPLATE, stop=())
  out = grpo_rollouts.sample("calculator", cfg, params, TOK, tmpl, [ids("Q<<"), ids("Q!")],
                             group=2, max_new_tokens=12, temperatures=[1.0, 0.8], seeds=[5, 6])
  row = out.rows[0]
  assert TOK.decode(row.tokens) == "4+5=9>" and row.tokens == ids("4+5=9>") + [0]
  assert row.model.tolist() == [True] * 4 + [False] + [True] * 2 and row.tool_calls == 1
  assert TOK.encode(TOK.decode(row.tokens)) != row.tokens[:-1]
  batch = grpo_data.rollout_batch(out.prompt_ids, [r.tokens for r in out.rows], 2, 0, 3, 12,
                                  model_masks=[r.model for r in out.rows],
                                  logprobs=[r.logprobs for r in out.rows])
  assert batch["targets"][0, :7].tolist() == row.tokens and batch["mask"][0, 4] == 0.0
  trainable, frozen = lora.split(params, "all")
  _, _, m, logp = _step_jit(
      jax.tree.map(jnp.copy, trainable), OPT.init(trainable), frozen, batch,
      jnp.asarray([1.0, -1.0, .5, -.5]),
      batch["mask"], batch["mask"], jnp.float32(0.2), jnp.float32(0.0), jax.random.PRNGKey(0),
      model_cfg=cfg, optimizer=OPT, aggregation="sequence", norm_tokens=12,
      first=True, dropout=False, use_ref=False)
  mask = batch["mask"] > 0
  np.testing.assert_allclose(np.asarray(logp)[mask], batch["sampler_logp"][mask], atol=1e-5)
  assert float(m["sampler_logp_gap"]) < 1e-5

  # exactly zero gradient at the tool tokens (through the logits of every position)
  logits = jax.random.normal(jax.random.PRNGKey(1), (*batch["targets"].shape, 128))

  def loss(lg):
    logp_bt, _ = token_logprobs(lg, batch["targets"])
    return grpo_loss(logp_bt, jax.lax.stop_gradient(logp_bt) - 0.1, logp_bt + 0.2,
                     jnp.asarray([1.0, -1.0, 0.5, -0.5]), batch["mask"], eps=0.2, beta=0.1,
                     aggregation="token_mean", kl_ratio_weighted=True)[0]
  grads = np.asarray(jax.grad(loss)(logits))
  assert np.all(grads[~mask] == 0.0) and np.abs(grads[mask]).sum(axis=-1).min() > 0


def test_a_rollout_where_the_tool_never_fires_equals_tools_none(model):
  """A noisy model that never writes "<<expr=": calculator mode samples the
  same ids and log-probabilities as no tools, so the batch, loss and gradient
  are the same."""
  cfg, params = model
  # the scripted table at 1/20 of its strength: near-uniform, noisy samples
  params = {**params, "lm_head": {"kernel": params["lm_head"]["kernel"] / 20.0}}
  tmpl = dataclasses.replace(TEMPLATE, stop=())
  prompts = [ids("Qab"), ids("Qbc")]
  outs = {mode: grpo_rollouts.sample(mode, cfg, params, TOK, tmpl, prompts, group=2,
                                     max_new_tokens=12, temperatures=[1.0, 1.2], seeds=[1, 2])
          for mode in ("none", "calculator")}
  batches = {}
  for mode, out in outs.items():
    assert all(r.model.all() and r.tool_calls == 0 for r in out.rows)
    batches[mode] = grpo_data.rollout_batch(
        out.prompt_ids, [r.tokens for r in out.rows], 2, 0, 3, 12,
        model_masks=[r.model for r in out.rows], logprobs=[r.logprobs for r in out.rows])
  for k in batches["none"]:
    assert np.array_equal(batches["none"][k], batches["calculator"][k]), k
  trainable, frozen = lora.split(params, "all")

  def grads(batch):
    return _step_jit(jax.tree.map(jnp.copy, trainable), OPT.init(trainable), frozen,
                     batch, jnp.asarray([1.0, -1.0, 0.3, -0.3]), batch["mask"], batch["mask"],
                     jnp.float32(0.2), jnp.float32(0.0), jax.random.PRNGKey(0), model_cfg=cfg,
                     optimizer=OPT, aggregation="sequence", norm_tokens=12,
                     first=True, dropout=False, use_ref=False)
  a, b = grads(batches["none"]), grads(batches["calculator"])
  assert float(a[2]["loss"]) == float(b[2]["loss"])
  for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
    assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ["calculator", "agent"])
def test_a_small_token_budget_splits_the_sampler_calls_without_changing_a_draw(model, mode):
  """grpo.rollout_token_budget: rows whose KV cache would pass the budget run in
  several sampler calls; each prompt's seed goes with it, so ids, masks and
  log-probabilities are the same as in one call."""
  from jaxslm.sampling import generate as generate_fn
  from jaxslm.train import grpo_rollouts as ro
  cfg, params = model
  prompts = [ids(p) for p in ("Q?", "Q!", "Q#", "Q%", "Qab")]
  template = TEMPLATE if mode == "agent" else dataclasses.replace(TEMPLATE, stop=())
  calls = []

  def counting(*a, **k):
    calls.append(len(a[2]))
    return generate_fn(*a, **k)
  outs = {}
  for budget in (0, 150):
    calls.clear()
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr("jaxslm.sampling.generate", counting)
      outs[budget] = ro.sample(mode, cfg, params, TOK, template, prompts, group=2,
                               max_new_tokens=24, temperatures=[1.0, 0.7], seeds=[3, 4, 5, 6, 7],
                               token_budget=budget)
    outs[budget].calls = list(calls)
  assert outs[0].calls[0] == 5 and max(outs[150].calls) < 5     # rows split under the budget
  for a, b in zip(outs[0].rows, outs[150].rows):
    assert a.tokens == b.tokens and np.array_equal(a.model, b.model)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  assert outs[0].prompt_ids == outs[150].prompt_ids


def test_bad_tool_modes_and_templates_are_refused():
  with pytest.raises(UserError, match="valid tool modes: none, calculator, agent"):
    grpo_rollouts.prompt_template("structured", "search")
  with pytest.raises(UserError, match="no agent format.*data.template to one of react"):
    grpo_rollouts.prompt_template("structured", "agent")
  with pytest.raises(UserError, match="is an agent format; it needs grpo.tools=agent"):
    grpo_rollouts.prompt_template("react", "calculator")
  assert grpo_rollouts.prompt_template("react", "agent").extractor == "final-answer"
  with pytest.raises(UserError, match="no agent format"):
    grpo_rollouts.prompt_template("nonsense", "agent")
