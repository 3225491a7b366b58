"""GRPO end to end on a tiny model: LoRA and full, exact resume, the frozen base,
bad input, the launcher, and that a warm-started model's reward rises."""

from __future__ import annotations

import collections
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxslm import lora, quant
from jaxslm.checkpoint import save_params
from jaxslm.config import grpo_config, load_config
from jaxslm.data.synthetic import SyntheticMath
from jaxslm.data.templates import get_template
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import train_sentencepiece
from jaxslm.train import grpo
from jaxslm.train.rewards import RewardError
from jaxslm.train import session
from jaxslm.train.signals import StopRequest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
  return build_warm(tmp_path_factory.mktemp("grpo"))


SFT_STEPS = 250   # enough for the format and ~8% of one-step problems


def build_warm(root):
  """A tiny model SFT-ed briefly on one-step synthetic problems in the
  <reasoning>/<solution> format (the GRPO warm start), and its base."""
  from jaxslm.config import finetune_config
  from jaxslm.train import finetune
  gen = SyntheticMath(0, max_steps=1)
  tmpl = get_template("structured")
  problems = [gen.problem(i) for i in range(400)]
  docs = [tmpl.prompt(p.question) + tmpl.target(p.answer, str(p.final_answer)) for p in problems]
  tok = train_sentencepiece(docs[:300], vocab_size=512)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=160, dtype="float32")
  base = save_params(str(root / "base"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  data = root / "train.jsonl"
  data.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                          for p in problems))
  c = finetune_config("full")
  c.init_from, c.model_dtype = base, "float32"
  c.data.update(path=str(data), template="structured", val_examples=8)
  c.train.update(steps=SFT_STEPS, batch_size=16, seq_len=128, lr=3e-3, min_lr=3e-4, warmup_steps=10,
                 log_every=1000, eval_every=1000, checkpoint_every=1000)
  c.eval.problems = 0
  finetune.run(c, str(root / "sft"))
  return str(root / "sft"), base


def tiny(warm, method="lora", **grpo_fields):
  c = load_config(ROOT / "configs" / "grpo_synthetic.py")
  c.method = method
  c.init_from = warm[0]
  c.model_dtype = "float32"
  c.data.update(synthetic_max_steps=1, train_problems=64, prompt_budget=96)
  c.grpo.update(**{"prompts_per_step": 4, "max_new_tokens": 40, **grpo_fields})
  c.lora.update(rank=4, alpha=8.0)
  c.train.update(steps=2, checkpoint_every=2, log_every=1)
  c.eval.update(problems=0, every=0)
  return c


def _slow_logprobs(params, cfg, prompts, completions, group):
  """The obviously-correct reference: a plain forward over each row's prompt +
  completion (rows right-padded into one batch: causal attention never looks
  ahead), logits everywhere, then each completion token's log-probability."""
  import jax.numpy as jnp
  from jaxslm.models import Decoder
  from jaxslm.train.grpo_loss import token_logprobs
  rows = [list(prompts[r // group]) + list(c) for r, c in enumerate(completions)]
  width = max(map(len, rows))
  tokens = jnp.asarray([x + [0] * (width - len(x)) for x in rows], jnp.int32)
  logp, _ = token_logprobs(Decoder(cfg).apply({"params": params}, tokens[:, :-1]), tokens[:, 1:])
  return [logp[r, len(prompts[r // group]) - 1:len(x) - 1] for r, x in enumerate(rows)]


@pytest.mark.parametrize("variant", ["rope", "learned_gqa_bias", "sliding_window"])
def test_shared_prefix_logprobs_and_grads_match_one_forward_per_row(variant):
  """The fast path (each prompt run once into a KV cache shared by its group,
  logits at completion positions only) against one plain forward per row:
  log-probabilities, and the gradient of a masked sum of them."""
  import jax.numpy as jnp
  from jaxslm.train import grpo_data
  extra = {"rope": {}, "learned_gqa_bias": dict(position="learned", n_kv_heads=1, use_bias=True),
           "sliding_window": dict(sliding_window=3, global_layers=(1,))}[variant]
  cfg = ModelConfig.preset("tiny", vocab_size=97, max_seq_len=24, dtype="float32", **extra)
  params = init_params(cfg, jax.random.PRNGKey(3))
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]                        # G = 2
  completions = [[20, 21], [22], [23, 24, 25, 26], [], [27, 28, 29], [30]]
  # more slots than needed, so padding runs past max_seq_len - 1 (clamped, masked)
  batch = grpo_data.rollout_batch(prompts, completions, 2, 0, prefix_slots=6, suffix_slots=22)
  trainable, frozen = lora.split(params, "all")
  fast, entropy = jax.jit(grpo.policy_logprobs, static_argnames="model_cfg")(
      trainable, frozen, batch, model_cfg=cfg)
  assert np.isfinite(np.asarray(fast)).all() and np.isfinite(np.asarray(entropy)).all()
  slow = jax.jit(lambda p: _slow_logprobs(p, cfg, prompts, completions, 2))(params)
  for r, c in enumerate(completions):
    assert batch["mask"][r].sum() == len(c)
    assert np.array_equal(batch["targets"][r, :len(c)], c)
    np.testing.assert_allclose(np.asarray(fast)[r, :len(c)], np.asarray(slow[r]),
                               rtol=1e-5, atol=1e-5)
  weights = jax.random.normal(jax.random.PRNGKey(1), batch["mask"].shape) * batch["mask"]

  def fast_loss(tr):
    return jnp.sum(grpo.policy_logprobs(tr, frozen, batch, model_cfg=cfg)[0] * weights)

  def slow_loss(tr):
    rows = _slow_logprobs(lora.combine(tr, frozen), cfg, prompts, completions, 2)
    return sum(jnp.sum(x * weights[r, :x.shape[0]]) for r, x in enumerate(rows))
  g_fast, g_slow = jax.jit(jax.grad(fast_loss))(trainable), jax.jit(jax.grad(slow_loss))(trainable)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_fast), jax.tree.leaves(g_slow)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_remat_recomputes_the_learning_pass_blocks(capsys):
  """model remat=True reaches GRPO's shared-prefix pass (it runs through a KV
  cache): far fewer values are kept for the backward pass, with the same
  log-probabilities and gradients."""
  import dataclasses
  import jax.numpy as jnp
  from jax.ad_checkpoint import print_saved_residuals
  from jaxslm.train import grpo_data
  cfg = ModelConfig.preset("tiny", vocab_size=97, max_seq_len=24, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(3))
  batch = grpo_data.rollout_batch([[5, 6, 7], [8, 9]], [[20, 21], [22], [23, 24, 25], []], 2, 0,
                                  prefix_slots=4, suffix_slots=6)
  trainable, frozen = lora.split(params, "all")
  kept, grads = {}, {}
  for remat in (False, True):
    c = dataclasses.replace(cfg, remat=remat)

    def loss(tr):
      return jnp.sum(grpo.policy_logprobs(tr, frozen, batch, model_cfg=c)[0] * batch["mask"])
    capsys.readouterr()
    print_saved_residuals(loss, trainable)
    kept[remat] = [x for x in capsys.readouterr().out.splitlines() if "from the argument" not in x]
    grads[remat] = jax.jit(jax.value_and_grad(loss))(trainable)
  assert 0 < len(kept[True]) < len(kept[False]) / 2, (len(kept[True]), len(kept[False]))
  for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_rollouts_from_an_int8_copy_take_the_ratio_against_the_samplers_logprobs(warm, tmp_path):
  """grpo.rollout_quantize: the rollouts come from an int8 copy of the policy, so
  the sampler's log-probabilities differ from the float learning pass's, and the
  first pass's ratio is taken against them (not the exact 1 of float rollouts)."""
  plain = grpo.run(tiny(warm, rollout_quantize="none"), str(tmp_path / "f"))["records"]
  assert all(r["ratio_mean"] == 1.0 for r in plain)          # mu = 1: the ratio is exactly 1
  assert all(r["sampler_logp_gap"] < 1e-4 for r in plain)
  out = grpo.run(tiny(warm, rollout_quantize="int8-dynamic"), str(tmp_path / "q"))
  for r in out["records"]:
    assert 1e-4 < r["sampler_logp_gap"] < 0.5, r          # a copy, close but not equal
    assert r["ratio_mean"] != 1.0 and abs(r["ratio_mean"] - 1.0) < 0.5, r
    assert np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"])
  # the learned tree is float: adapters over the unquantized base
  assert not any(quant.is_quantized(x) for x in
                 jax.tree_util.tree_leaves(out["params"], is_leaf=quant.is_quantized))
  with pytest.raises(UserError, match="grpo.rollout_quantize='int4'; valid values: none, int8"):
    grpo.run(tiny(warm, rollout_quantize="int4"), str(tmp_path / "bad"))


def test_rollout_lengths_round_up_and_fit_the_budgets():
  from jaxslm.train import grpo_data
  assert grpo_data.rollout_lengths([10, 40], [5, 7], prompt_budget=128, max_new_tokens=96) == (64, 32)
  assert grpo_data.rollout_lengths([128], [96], prompt_budget=128, max_new_tokens=96) == (127, 96)
  assert grpo_data.rollout_lengths([1], [0], prompt_budget=8, max_new_tokens=4) == (7, 4)
  with pytest.raises(ValueError, match="do not fit"):
    grpo_data.rollout_batch([[1, 2, 3]], [[4], [5, 6, 7]], 2, 0, prefix_slots=4, suffix_slots=2)


def test_heldout_eval_sampled_pass_at_1_is_repeatable_and_tends_to_greedy(warm):
  """eval.samples: pass@1 over k sampled completions per held-out problem, with
  the same draws at every call; at a vanishing temperature it is greedy accuracy."""
  from jaxslm.data.templates import get_template
  from jaxslm.train import grpo_data
  c = tiny(warm)
  model_cfg, params, tok, _, _ = grpo.build_policy(c)
  tpl = get_template(c.data.template)
  ep, src = grpo_data.load_problems(c.data, heldout=True, limit=8)
  pool = grpo_data.encode_pool(ep, tok, tpl, budget=96, too_long="truncate", source=src)
  fns, weights = grpo.reward_setup(c)

  def ev(**kw):
    return grpo_data.evaluate_heldout(model_cfg, params, tok, tpl, pool, fns, weights,
                                      max_new_tokens=40, batch_size=16, extractor="solution", **kw)
  hot, again = ev(samples=2, temperature=1.5), ev(samples=2, temperature=1.5)
  greedy = ev()
  assert "eval_sampled_accuracy" not in greedy
  for key in ("eval_sampled_accuracy", "eval_sampled_accuracy_stderr", "eval_sampled_reward",
              "eval_accuracy", "eval_reward"):
    assert hot[key] == again[key], key
  assert hot["eval_accuracy"] == greedy["eval_accuracy"]
  assert 0.0 <= hot["eval_sampled_accuracy"] <= 1.0
  cold = ev(samples=2, temperature=1e-6)
  assert cold["eval_sampled_accuracy"] == greedy["eval_accuracy"]
  assert cold["eval_sampled_reward"] == pytest.approx(greedy["eval_reward"])
  # at 1.5 the tiny model's samples are not its greedy completions
  assert hot["eval_sampled_reward"] != pytest.approx(greedy["eval_reward"])
  with pytest.raises(UserError, match="eval.temperature=0.0"):
    ev(samples=2, temperature=0.0)


def test_lora_run_keeps_the_base_bit_identical_and_logs_everything(warm, tmp_path):
  import jaxslm
  c = tiny(warm)
  out = grpo.run(c, str(tmp_path / "w"))
  assert out["step"] == 2
  base = jaxslm.load(warm[0]).params
  trained = lora.flatten_paths(out["params"])
  for path, leaf in lora.flatten_paths(base).items():
    now = trained[path]
    now = now.w if isinstance(now, lora.LoraWeight) else now
    assert np.array_equal(np.asarray(now), np.asarray(leaf)), path
  rec = out["records"]
  assert [r["step"] for r in rec] == [1, 2]
  for key in ("reward_mean", "reward_std", "reward_format_mean", "reward_process_mean",
              "reward_accuracy_mean", "accuracy", "format", "kl", "beta", "eps", "clip_frac",
              "entropy", "completion_len", "zero_signal_frac", "sample_s", "learn_s",
              "completions_per_s"):
    assert rec[-1][key] is not None and np.isfinite(rec[-1][key]), key
  # the reference is the base with adapters off: the policy equals it at step 0
  # (up to rounding: the reference pass and the step are different XLA programs)
  assert abs(rec[0]["kl"]) < 1e-8 and rec[0]["clip_frac"] == 0.0
  assert (tmp_path / "w/adapters").is_dir() and (tmp_path / "w/export").is_dir()
  assert (tmp_path / "w/curves.png").is_file()
  # the workdir loads as base + adapters, unmerged, equal to the run's params
  loaded = jaxslm.load(str(tmp_path / "w"))
  for path, leaf in lora.flatten_paths(out["params"]).items():
    got = lora.flatten_paths(loaded.params)[path]
    if isinstance(leaf, lora.LoraWeight):
      assert np.array_equal(np.asarray(got.b[-1]), np.asarray(leaf.b[-1]))


class StopAfter(StopRequest):
  """Ctrl-C pressed during step `n` (the loop saves and leaves after it)."""
  n = 2

  def __init__(self):
    super().__init__()
    self.checks = 0

  @property
  def requested(self):
    self.checks += 1
    return self.checks >= self.n

  @requested.setter
  def requested(self, value):
    pass


def test_resume_continues_exactly(warm, tmp_path, monkeypatch):
  c = tiny(warm, mu=2)
  c.train.update(steps=4, checkpoint_every=100)
  straight = grpo.run(c, str(tmp_path / "a"))
  with monkeypatch.context() as m:
    m.setattr(session, "StopRequest", StopAfter)   # every trainer's stop signal
    stopped = grpo.run(c, str(tmp_path / "b"))
  assert stopped["interrupted"] and stopped["step"] == 2
  resumed = grpo.run(c, str(tmp_path / "b"), resume=True)
  for x, y in zip(jax.tree.leaves(straight["trainable"]), jax.tree.leaves(resumed["trainable"])):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert straight["beta"] == resumed["beta"]
  keep = ("reward_mean", "kl", "loss", "beta", "eps")
  assert ([{k: r[k] for k in keep} for r in straight["records"]]
          == [{k: r[k] for k in keep} for r in resumed["records"]])
  with pytest.raises(UserError, match="--resume"):
    grpo.run(c, str(tmp_path / "a"))


def test_agent_rollouts_resume_exactly_and_evaluate_with_and_without_tools(warm, tmp_path,
                                                                           monkeypatch):
  """grpo.tools=agent end to end: episodes as rollouts (the tiny model writes
  few actions, so this is the plumbing; tests/test_grpo_tools.py checks the
  episodes on scripted models), tool metrics logged, held-out evaluation as
  agent episodes and without tools, and an interrupted run resumed exactly."""
  c = tiny(warm, tools="agent", max_new_tokens=24, agent_max_steps=2,
           aggregation="token_mean", kl_ratio_weighted=True)
  c.data.template = "react"
  c.rewards.update(names=("accuracy", "tool_format"), weights=(0.8, 0.2),
                   extractor="final-answer")
  c.eval.update(problems=2, every=0, max_new_tokens=24, batch_size=4)   # at step 0 only
  straight = grpo.run(c, str(tmp_path / "a"))
  first, last = straight["records"][0], straight["records"][-1]
  for key in ("eval_accuracy", "eval_none_accuracy", "eval_none_reward"):
    assert first[key] is not None and np.isfinite(first[key]), key
  assert "eval_none_problems" not in first
  for key in ("tool_calls", "tool_tokens", "tool_cut", "budget_cut", "sampler_logp_gap",
              "reward_tool_format_mean", "completion_len"):
    assert last[key] is not None and np.isfinite(last[key]), key
  c.eval.problems = 0

  class StopAfterOne(StopAfter):
    n = 1
  with monkeypatch.context() as m:
    m.setattr(session, "StopRequest", StopAfterOne)
    assert grpo.run(c, str(tmp_path / "b"))["step"] == 1
  resumed = grpo.run(c, str(tmp_path / "b"), resume=True)
  for x, y in zip(jax.tree.leaves(straight["trainable"]), jax.tree.leaves(resumed["trainable"])):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  keep = ("reward_mean", "kl", "loss", "tool_tokens", "completion_len")
  assert ([{k: r[k] for k in keep} for r in straight["records"] if r["step"] > 0]
          == [{k: r[k] for k in keep} for r in resumed["records"]])


def test_full_parameter_grpo_with_dr_grpo_options_and_the_calculator(warm, tmp_path):
  c = tiny(warm, "full", adv_norm="none", aggregation="token_sum", beta=0.0, kl_target=0.0,
           tools="calculator")
  c.train.lr = 1e-4
  out = grpo.run(c, str(tmp_path / "w"))
  assert out["counts"]["percent"] == pytest.approx(100.0)
  assert out["records"][-1]["kl"] is None        # no reference pass without a KL term
  assert out["records"][-1]["sampler_logp_gap"] < 1e-4   # full, no dropout: the same numbers
  assert not (tmp_path / "w/adapters").exists()


@pytest.mark.parametrize("aggregation,first,kl_ratio_weighted", [
    ("sequence", True, False), ("token_mean", False, True), ("token_sum", False, False)])
def test_micro_batched_update_equals_one_pass(aggregation, first, kl_ratio_weighted):
  """grpo.grad_accum: the prompts in 2 or 4 micro-batches (strided, groups whole)
  give the update, the metrics and the log-probabilities of one pass over the
  batch, and the reference's log-probabilities too."""
  import jax.numpy as jnp
  import optax
  from jaxslm.train import grpo_data
  from jaxslm.train.grpo_step import _reference_jit, _step_jit
  cfg = ModelConfig.preset("tiny", vocab_size=97, max_seq_len=32, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(3))
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 97, size=k)) for k in (3, 5, 1, 4)]          # P = 4, G = 2
  completions = [list(rng.integers(1, 97, size=k)) for k in (2, 1, 4, 0, 3, 5, 2, 6)]
  batch = grpo_data.rollout_batch(prompts, completions, 2, 0, prefix_slots=5, suffix_slots=8)
  trainable, frozen = lora.split(params, "all")
  adv = jnp.asarray(rng.normal(size=8), jnp.float32)
  old = jnp.asarray(rng.normal(scale=0.1, size=(8, 8)) - 4.0, jnp.float32)
  ref = jnp.asarray(rng.normal(scale=0.1, size=(8, 8)) - 4.0, jnp.float32)
  opt = optax.sgd(1.0)   # the update is minus the gradient: compared directly
  out = {}
  for accum in (1, 2, 4):
    tr = jax.tree.map(jnp.copy, trainable)
    out[accum] = _step_jit(tr, opt.init(tr), frozen, batch, adv, old, ref, jnp.float32(0.2),
                           jnp.float32(0.05), jax.random.PRNGKey(0), model_cfg=cfg, optimizer=opt,
                           aggregation=aggregation, norm_tokens=8, first=first, dropout=False,
                           use_ref=True, kl_ratio_weighted=kl_ratio_weighted, grad_accum=accum)
    np.testing.assert_allclose(
        np.asarray(_reference_jit(trainable, frozen, batch, model_cfg=cfg, grad_accum=accum)),
        np.asarray(_reference_jit(trainable, frozen, batch, model_cfg=cfg)), rtol=1e-5, atol=1e-6)
  for accum in (2, 4):
    for a, b, p0 in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[accum][0]),
                        jax.tree.leaves(trainable)):
      np.testing.assert_allclose(np.asarray(b) - np.asarray(p0), np.asarray(a) - np.asarray(p0),
                                 rtol=1e-4, atol=1e-7)
    assert out[1][2].keys() == out[accum][2].keys()
    for k in out[1][2]:
      np.testing.assert_allclose(float(out[1][2][k]), float(out[accum][2][k]), rtol=1e-4,
                                 atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.asarray(out[1][3]), np.asarray(out[accum][3]), rtol=1e-5,
                               atol=1e-6)
  assert float(out[1][2]["grad_norm"]) > 0


def test_a_run_in_micro_batches_matches_one_pass(warm, tmp_path, monkeypatch, capsys):
  """A GRPO step end to end with grpo.grad_accum=2: the same rewards (the same
  rollouts) and, to float tolerance, the same losses as with one pass. A step
  estimated above the free memory is said before it runs, with the fix, and
  XLA's own account of each compiled step too."""
  import re
  from jaxslm.sampling import batching
  from jaxslm.train import memory
  # every account is said, whatever ran before
  monkeypatch.setattr(memory, "_COMPILED", collections.OrderedDict())
  logs = {}
  for accum in (1, 2):
    with monkeypatch.context() as m:
      if accum == 1:
        m.setattr(batching, "free_memory_bytes", lambda device=None: 1)
      c = tiny(warm, grad_accum=accum, rollout_token_budget=0)
      c.train.update(steps=1, checkpoint_every=1)
      grpo.run(c, str(tmp_path / f"a{accum}"))
    said = capsys.readouterr().out
    assert ("exceeds the 1 B free on cpu; lower grpo.prompts_per_step" in said) == (accum == 1)
    for what in ("learning step", "reference pass"):
      assert re.search(rf"GRPO {what}, \d+ rows x \d+ completion slots, \d+ prompts x \d+ "
                       r"prefix slots \(XLA, per device\): arguments", said), said
      assert (f"Warning: GRPO {what} allocates" in said) == (accum == 1)
    logs[accum] = [json.loads(x) for x in (tmp_path / f"a{accum}/metrics.jsonl").read_text()
                   .splitlines() if '"reward_mean"' in x]
  assert len(logs[1]) == len(logs[2]) == 1
  for a, b in zip(logs[1], logs[2]):
    assert a["reward_mean"] == b["reward_mean"]
    for k in ("loss", "kl", "grad_norm", "entropy"):
      assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6), k


@pytest.mark.parametrize("field,value,match", [
    ("grpo.G", 1, "grpo.G=1"),
    ("grpo.temperatures", (0.7, 1.0), "temperatures has 2 values"),
    ("grpo.adv_norm", "std", "adv_norm='std'"),
    ("grpo.aggregation", "mean", "aggregation='mean'"),
    ("method", "qlora", "method='qlora'"),
    ("rewards.names", ("format", "nope"), "nope"),
    ("grpo.tools", "search", "valid tool modes: none, calculator, agent"),
    ("grpo.tools", "agent", "no agent format .*data.template to one of react"),
    ("data.template", "react", "is an agent format; it needs grpo.tools=agent"),
    ("eval.tools", "calculator,agent", "not an agent format"),
    ("eval.tools", "none,bogus", "eval.tools='bogus'"),
    ("grpo.max_tool_tokens", 0, "max_tool_tokens=0"),
    ("grpo.grad_accum", 3, "grad_accum=3 must be a positive integer that divides"),
    ("grpo.grad_accum", 0, "grad_accum=0"),
])
def test_bad_config_is_refused_with_the_field(warm, field, value, match):
  c = tiny(warm)
  section, _, name = field.rpartition(".")
  with (c[section] if section else c).unlocked():
    (c[section] if section else c)[name] = value
  with pytest.raises(UserError, match=match):
    grpo.validate_config(c)


def test_long_prompts_are_refused_or_truncated_and_counted(warm, tmp_path):
  import jaxslm
  from jaxslm.train import grpo_data
  c = tiny(warm)
  c.data.update(prompt_budget=20, too_long="refuse")
  with pytest.raises(UserError, match="prompt_budget=20"):
    grpo.run(c, str(tmp_path / "a"))
  tok = jaxslm.load(warm[0]).tokenizer
  problems = [("What is 2 + 2?", "4"), ("Lena has 3 boxes of 12 pens. " * 8, "36")]
  pool = grpo_data.encode_pool(problems, tok, get_template("qa"), budget=40,
                               too_long="truncate", source="x")
  full = tok.encode(pool.texts[1])
  assert pool.truncated == 1 and pool.ids[1] == full[-40:] and len(pool.ids[0]) < 40
  with pytest.raises(UserError, match="too_long='drop'"):
    grpo_data.encode_pool(problems, tok, get_template("qa"), budget=40, too_long="drop",
                          source="x")


def broken_reward(prompts, completions, answers):
  return [1.0] * (len(completions) - 1)


def test_a_bad_reward_function_stops_the_step(warm, tmp_path):
  c = tiny(warm)
  c.rewards.update(names=("format", "test_grpo:broken_reward"), weights=(1.0, 1.0))
  with pytest.raises(RewardError, match="broken_reward"):
    grpo.run(c, str(tmp_path / "w"))


def test_launcher_help_and_bad_input(warm, tmp_path, capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location("launch_grpo", ROOT / "launch/grpo.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.main(["--help"]) == 0
  assert "launch/grpo.py" in capsys.readouterr().out
  code = mod.main(["--config", str(ROOT / "configs/grpo_gsm8k.py"), "--config.grpo.G=1",
                   f"--config.init_from={warm[0]}", "--workdir", str(tmp_path / "w")])
  assert code == 2 and "grpo.G=1" in capsys.readouterr().err


def test_grpo_configs_validate():
  for name in ("grpo_gsm8k", "grpo_synthetic", "grpo_synthetic_calculator",
               "grpo_synthetic_agent"):
    c = load_config(ROOT / "configs" / f"{name}.py")
    c.init_from = "somewhere"
    grpo.validate_config(c)
  assert grpo_config().grpo.temperatures == (0.6, 0.8, 1.0, 1.2)


def test_reward_rises_from_a_warm_start(warm, tmp_path):
  """The point of GRPO, in well under a minute: with the study's reward
  (0.2 format + 0.3 process + 0.5 accuracy) and a fixed seed, the mean reward
  of the last 10 of 100 steps is above that of the first 10, and so is its
  format component. (This tiny model cannot learn the arithmetic itself;
  benchmarks/grpo_learning.py measures held-out accuracy on a larger one.)"""
  c = tiny(warm, prompts_per_step=4, beta=0.0, kl_target=0.0)
  c.train.update(steps=100, lr=3e-3, checkpoint_every=1000, log_every=1000)
  out = grpo.run(c, str(tmp_path / "w"))
  total = [r["reward_mean"] for r in out["records"]]
  fmt = [r["reward_format_mean"] for r in out["records"]]
  assert np.mean(total[-10:]) > np.mean(total[:10]) + 0.05, total
  assert np.mean(fmt[-10:]) > np.mean(fmt[:10]) + 0.1, fmt
