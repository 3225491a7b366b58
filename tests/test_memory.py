"""The memory estimate against numbers worked out by hand for the `tiny` preset
(vocab 512, D 64, 2 layers, 4 heads, 2 kv heads of 16, FFN 128, untied, no biases)."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.config import base_config
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params
from jaxslm.train import memory, parallel
from jaxslm.train.optim import make_optimizer

CFG = ModelConfig.preset("tiny", vocab_size=512, dtype="float32")
# embed 512·64 + lm_head 64·512 + per layer (q 64·64 + k 64·32 + v 64·32 + o 64·64
# + gate/up 2·64·128 + down 128·64 + 2 norms of 64) + final norm 64
N_PARAMS = 2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
NORM_PARAMS = 2 * 2 * 64 + 64


@pytest.fixture(scope="module")
def abstract():
  params = jax.eval_shape(lambda: init_params(CFG, jax.random.PRNGKey(0)))
  optimizer, _ = make_optimizer(base_config().train)
  return params, jax.eval_shape(optimizer.init, params)


def test_params_optimizer_and_gradients_are_exact(abstract):
  params, opt_state = abstract
  assert N_PARAMS == 139_584
  est = memory.estimate(CFG, params=params, opt_state=opt_state, batch_per_device=2, seq_len=32)
  assert est.parts["params"] == 4 * N_PARAMS == 558_336
  # AdamW: mu and nu in float32, plus two int32 step counts (Adam's, the schedule's).
  assert est.parts["optimizer"] == 2 * 4 * N_PARAMS + 2 * 4 == 1_116_680
  assert est.parts["gradients"] == 4 * N_PARAMS
  accumulating = memory.estimate(CFG, params=params, opt_state=opt_state, batch_per_device=2,
                                 seq_len=32, grad_copies=2)
  assert accumulating.parts["gradients"] == 2 * 4 * N_PARAMS


def test_fsdp_divides_every_kernel_by_the_fsdp_size(abstract):
  params, _ = abstract

  class FakeMesh:   # parallel's rules need only the axis sizes
    shape = {"data": 2, "fsdp": 2}

  class Spec:
    def __init__(self, spec):
      self.spec = spec

    def shard_shape(self, shape):
      return tuple(d // (FakeMesh.shape[a] if a else 1) for d, a in zip(shape, self.spec))

  shardings = jax.tree_util.tree_map_with_path(
      lambda p, x: Spec(parallel.spec_for(parallel.path_str(p), x.shape, FakeMesh)), params)
  # Every kernel and embedding has an "embed" axis split over fsdp=2; norm scales are replicated.
  assert memory.tree_bytes(params, shardings) == 4 * ((N_PARAMS - NORM_PARAMS) // 2 + NORM_PARAMS)
  assert memory.tree_bytes(params, shardings) == 279_808


def test_activation_and_kv_cache_formulas():
  # B 2, T 32: blocks 2·32·(64·16 + 128·7) values, attention 2·4·32·32, per layer,
  # float32; logits 2·32·512 float32 twice (values and gradient).
  block, attn = 2 * 32 * (64 * 16 + 128 * 7) * 4, 2 * 4 * 32 * 32 * 4
  logits = 2 * 32 * 512 * 4 * 2
  assert memory.activation_bytes(CFG, 2, 32) == 2 * (block + attn) + logits == 1_310_720
  remat = ModelConfig.preset("tiny", vocab_size=512, dtype="float32", remat=True)
  assert memory.activation_bytes(remat, 2, 32) == 2 * 32 * 64 * 2 * 4 + block + attn + logits
  bf16 = ModelConfig.preset("tiny", vocab_size=512, dtype="bfloat16")
  assert memory.activation_bytes(bf16, 2, 32) == 2 * (block + attn) // 2 + logits
  # rows 8 × layers 2 × (k, v) × kv heads 2 × head dim 16 × length 64 × 4 bytes
  assert memory.kv_cache_bytes(CFG, 8, 64) == 8 * 2 * 2 * 2 * 16 * 64 * 4 == 262_144


@pytest.mark.parametrize("preset,over,rows,tokens", [
    ("small", {}, 8, 256), ("llama135m", dict(n_layers=2, max_seq_len=512, vocab_size=4096), 2, 256)])
def test_train_step_estimate_is_near_xla_own_account(preset, over, rows, tokens):
  """The whole estimate of a plain train step against the peak XLA's compiler
  accounts for it (arguments + new outputs + temporaries): within 0.85-1.3x
  (1.26x at 8 x 128 tokens on `small`, where the fit is loosest)."""
  import functools
  import optax
  from jaxslm.train.step import create_state, train_step
  cfg = ModelConfig.preset(preset, dtype="float32", **over)
  opt = optax.adamw(1e-3)
  state = jax.eval_shape(lambda: create_state(init_params(cfg, jax.random.PRNGKey(0)), opt, 0))
  step = jax.jit(functools.partial(train_step, model_cfg=cfg, optimizer=opt,
                                   schedule=lambda s: 1e-3), donate_argnums=0)
  compiled = step.lower(state, jax.ShapeDtypeStruct((1, rows, tokens + 1), jnp.int32)).compile()
  if compiled.memory_analysis() is None:
    pytest.skip("this backend gives no memory account")
  peak = compiled.memory_analysis().argument_size_in_bytes + memory.compiled_need(compiled)
  est = memory.estimate(cfg, params=state.params, opt_state=state.opt_state,
                        batch_per_device=rows, seq_len=tokens)
  assert 0.85 < est.total / peak < 1.3, (est.line(), peak)


def test_grpo_estimate_adds_the_reference_and_the_bucketed_kv_cache(abstract):
  params, opt_state = abstract
  est = memory.grpo_estimate(CFG, trainable=params, frozen={}, opt_state=opt_state,
                             rows_per_device=4, rollout_len=129, sample_prompts=3, group=4,
                             prompt_budget=90, max_new_tokens=40)
  assert est.parts["reference"] == est.parts["params"] == 4 * N_PARAMS
  # 3 prompts -> 4 (power of two) × G 4 = 16 rows; cache 128 (prompt) + 64 (budget) slots
  assert est.parts["kv_cache"] == memory.kv_cache_bytes(CFG, 16, 128 + 64)
  # shared prefix: 1 prompt (4 rows / G 4) of 89 slots, 4 rows of 39 completion slots
  # (129 - 1 - 89); per layer each token keeps 16·D + 7·d_ff values and 4 heads × 128
  # slots of scores, float32; the logits 4 rows × 39 × 512 in 4 float32 copies
  tokens = 89 + 4 * 39
  per_layer = tokens * (16 * 64 + 7 * 128) * 4 + tokens * 4 * 128 * 4
  assert est.parts["activations"] == 2 * per_layer + 4 * 39 * 512 * 4 * 4 == 6_044_672
  assert est.parts["activations"] == memory.grpo_activation_bytes(CFG, 1, 89, 4, 39)
  line = est.line()
  assert "kv cache ~" in line and "reference" in line and "estimates" in line
  assert est.total == sum(est.parts.values())


def test_fsdp_grpo_counts_shards_and_the_gathered_rollout_copy(abstract):
  params, opt_state = abstract

  class Half:   # every leaf split in two along its first axis
    def shard_shape(self, shape):
      return (shape[0] // 2, *shape[1:])

  half = lambda tree: jax.tree.map(lambda _: Half(), tree)   # noqa: E731
  adapters = {"a0": jax.ShapeDtypeStruct((64, 4), jnp.float32)}
  adapter_opt = jax.eval_shape(make_optimizer(base_config().train)[0].init, adapters)
  kw = dict(rows_per_device=4, rollout_len=129, sample_prompts=3, group=4, prompt_budget=90,
            max_new_tokens=40)
  plain = memory.grpo_estimate(CFG, trainable=adapters, frozen=params, opt_state=adapter_opt, **kw)
  assert "rollout_params" not in plain.parts   # replicated: the sampler shares the buffers
  split = memory.grpo_estimate(CFG, trainable=adapters, frozen=params, opt_state=adapter_opt,
                               trainable_shardings=half(adapters), frozen_shardings=half(params),
                               opt_shardings=half(adapter_opt), where="mesh x", **kw)
  assert split.parts["frozen"] == memory.tree_bytes(params, half(params)) < plain.parts["frozen"]
  assert split.parts["params"] == split.parts["reference"] == 64 * 4 * 4 // 2
  assert split.parts["rollout_params"] == 4 * N_PARAMS + 64 * 4 * 4
  assert "rollout params" in split.line() and "(mesh x, rollouts" in split.line()


def test_line_and_compiled_account():
  est = memory.Estimate({"params": 3 * 2**20, "activations": 512})
  assert est.line() == ("Memory per device: params 3 MiB + activations ~512 B = ~3 MiB "
                        "(~: estimates, see jaxslm/train/memory.py)")
  compiled = jax.jit(lambda x: x * 2).lower(jnp.ones((256,), jnp.float32)).compile()
  line = memory.compiled_line(compiled)
  assert line is None or "arguments 1 KiB" in line

  class NoStats:
    def memory_analysis(self):
      return None
  assert memory.compiled_line(NoStats()) is None


def _doubling(free, said, k=2):
  return memory.Accounted(_DOUBLE, {"k": k}, what="Doubling", log=said.append,
                          advice=lambda need, free: f"try less ({need} > {free})",
                          describe=lambda x: f"{x.shape[0]} values", free=lambda: free)


_DOUBLE = jax.jit(lambda x, *, k: x * k, static_argnames="k")


def test_accounted_compiles_once_per_shape_and_says_xla_account(monkeypatch):
  """memory.Accounted: XLA's account of each new input shape is said once, before
  it runs; the same shape again compiles and says nothing; a shape that needs
  more than the free memory gets a warning with the advice."""
  monkeypatch.setattr(memory, "_COMPILED", collections.OrderedDict())
  if memory.compiled_need(_DOUBLE.lower(jnp.ones(4), k=2).compile()) is None:
    pytest.skip("this backend gives no memory account")
  said = []
  f = _doubling(10**12, said)
  np.testing.assert_array_equal(np.asarray(f(jnp.ones(256))), 2.0)
  f(jnp.ones(256))
  assert len(said) == 1 and said[0].startswith("Doubling, 256 values (XLA, per device): "
                                               "arguments 1 KiB, outputs 1 KiB")
  f(jnp.ones(512))
  _doubling(10**12, said, k=3)(jnp.ones(512))     # other static arguments: compiled anew
  assert [s.split(" (")[0] for s in said] == ["Doubling, 256 values", "Doubling, 512 values",
                                               "Doubling, 512 values"]
  tight = []
  np.testing.assert_array_equal(np.asarray(_doubling(16, tight)(jnp.ones(1024))), 2.0)
  assert len(tight) == 2 and re.match(r"Warning: Doubling allocates [\d.]+ KiB beyond its inputs, "
                                      r"more than the 16 B free; try less \(\d+ > 16\)\.$", tight[1])


def test_accounted_turns_an_out_of_memory_failure_into_advice(monkeypatch):
  class Stats:
    output_size_in_bytes, alias_size_in_bytes, temp_size_in_bytes = 8, 0, 68 * 2**30

  class Failing:
    def memory_analysis(self):
      return Stats()

    def __call__(self, *args):
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 73014444040 bytes.")
  f = _doubling(2**30, [])
  monkeypatch.setattr(f, "compiled", lambda *a: Failing())
  with pytest.raises(UserError, match=r"Doubling ran out of memory \(XLA's account: 68 GiB beyond "
                                      r"its inputs\); try less \(73014444040 > 1073741824\)\. XLA "
                                      r"said: RESOURCE_EXHAUSTED: Out of memory allocating 730"):
    f(jnp.ones(4))

  def compile_fails(*a):   # out of memory while compiling (a TPU's HBM): no account yet
    raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm.\nmore")
  monkeypatch.setattr(f, "compiled", compile_fails)
  with pytest.raises(UserError, match=r"Doubling ran out of memory; try less \(0 > 1073741824\)\. "
                                      r"XLA said: RESOURCE_EXHAUSTED: Ran out of memory in memory "
                                      r"space hbm\.$"):
    f(jnp.ones(4))

  class Broken(Failing):
    def __call__(self, *args):
      raise RuntimeError("RESOURCE_EXHAUSTED: too many open streams")   # not memory
  monkeypatch.setattr(f, "compiled", lambda *a: Broken())
  with pytest.raises(RuntimeError, match="open streams"):
    f(jnp.ones(4))


@pytest.mark.parametrize("accum,need,want", [
    (1, 3, "set grpo.grad_accum=4 "), (2, 1.5, "set grpo.grad_accum=4 "),
    (1, 1.5, "set grpo.grad_accum=2 "), (1, 100, "lower grpo.prompts_per_step")])
def test_grpo_memory_advice_names_the_smallest_grad_accum_that_fits(accum, need, want):
  from jaxslm.config import grpo_config
  from jaxslm.train.grpo_setup import memory_advice
  g = grpo_config().grpo
  g.update(prompts_per_step=8, G=4, grad_accum=accum)
  assert memory_advice(g, int(need * 2**30), 2**30).startswith(want)
