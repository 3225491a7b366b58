"""LoRA transforms against their slow references: merged weights, finite
differences, numpy sums, the plain model."""

import math
import sys
import types
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from jaxslm import lora, ops
from jaxslm.errors import UserError
from jaxslm.models import Decoder, ModelConfig, init_params
from jaxslm.models.summary import param_shapes
from jaxslm.sampling import engine, generate

CFG = ModelConfig.preset("tiny", dtype="float32")
TOKENS_BT1 = jax.random.randint(jax.random.PRNGKey(7), (2, 13), 0, CFG.vocab_size)
MASK_BT = jnp.broadcast_to(jnp.arange(12) >= 4, (2, 12)).astype(jnp.float32)  # "prompt" masked


_init = jax.jit(lambda key: init_params(CFG, key))


@pytest.fixture(scope="module")
def base():
  return _init(jax.random.PRNGKey(0))


@jax.jit
def _logits(params, tokens_bt):
  return Decoder(CFG).apply({"params": params}, tokens_bt)


def _loss(params):
  """Masked next-token cross entropy."""
  logits_btv = Decoder(CFG).apply({"params": params}, TOKENS_BT1[:, :-1])
  ce_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, TOKENS_BT1[:, 1:])
  return jnp.sum(ce_bt * MASK_BT) / jnp.sum(MASK_BT)


def _randomize_b(params, seed, std=0.5):
  """Every adapter's B random (a fresh adapter's B is zero, so it does nothing)."""
  def one(path, x):
    if not isinstance(x, lora.LoraWeight):
      return x
    key = jax.random.fold_in(jax.random.PRNGKey(seed), hash(path) % (2**31))
    keys = jax.random.split(key, len(x.b))
    return x.replace(b=tuple(std * jax.random.normal(k, b.shape, b.dtype)
                             for k, b in zip(keys, x.b)))
  return lora.map_with_paths(params, one)


def _train(params, trainable, steps, lr=1e-2):
  """`steps` adamw updates of the split's trainable tree; returns (params, tr, opt_state)."""
  opt = optax.adamw(lr)
  tr, frozen = lora.split(params, trainable)
  state = opt.init(tr)

  @jax.jit
  def step(tr, frozen, state):
    grads = jax.grad(lambda t: _loss(lora.combine(t, frozen)))(tr)
    updates, state = opt.update(grads, state, tr)
    return optax.apply_updates(tr, updates), state
  for _ in range(steps):
    tr, state = step(tr, frozen, state)
  return lora.combine(tr, frozen), tr, state


def _bases_equal(p, q):
  fp, fq = lora.flatten_paths(lora.strip(p)), lora.flatten_paths(lora.strip(q))
  return fp.keys() == fq.keys() and all(np.array_equal(fp[k], fq[k]) for k in fp)


def test_zero_init_adapters_leave_logits_unchanged(base):
  tokens = TOKENS_BT1[:, :-1]
  ref = _logits(base, tokens)
  for targets in ("qv", "all"):
    adapted = lora.add_adapter(base, lora.LoraConfig(rank=4, targets=targets),
                               jax.random.PRNGKey(1))
    assert lora.lora_paths(adapted)
    np.testing.assert_array_equal(_logits(adapted, tokens), ref)


def test_merge_matches_adapted_forward_and_unmerge_restores(base):
  cfg = lora.LoraConfig(rank=4, alpha=8, targets="all")
  adapted = _randomize_b(lora.add_adapter(base, cfg, jax.random.PRNGKey(1)), seed=2)
  merged = lora.merge(adapted)
  assert not lora.lora_paths(merged)
  tokens = TOKENS_BT1[:, :-1]
  out, ref = _logits(adapted, tokens), _logits(merged, tokens)
  assert not np.allclose(out, _logits(base, tokens), atol=1e-3)   # the adapters do something
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)

  back = lora.unmerge(merged, adapted)
  assert jax.tree.structure(back) == jax.tree.structure(adapted)
  for path, x in lora.flatten_paths(back).items():
    orig = lora.flatten_paths(adapted)[path]
    if isinstance(x, lora.LoraWeight):
      np.testing.assert_allclose(x.w, orig.w, atol=1e-6)
      assert all(np.array_equal(u, v) for u, v in zip(x.a + x.b, orig.a + orig.b))
    else:
      np.testing.assert_array_equal(x, orig)


def test_one_adamw_step_changes_only_adapters_and_state_is_adapter_only(base):
  params = lora.add_adapter(base, lora.LoraConfig(rank=4), jax.random.PRNGKey(1))
  tr, frozen = lora.split(params)
  n_adapted = len(lora.lora_paths(params))
  assert n_adapted == 2 * CFG.n_layers
  assert len(jax.tree.leaves(tr)) == 2 * n_adapted
  new, tr2, state = _train(params, "last", steps=1)
  # adam keeps mu and nu per trainable leaf (plus scalar counts), nothing for the base
  moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
  assert len(moments) == 2 * len(jax.tree.leaves(tr))
  assert _bases_equal(new, params)
  for path in lora.lora_paths(params):
    b_old, b_new = lora.flatten_paths(params)[path].b[0], lora.flatten_paths(new)[path].b[0]
    assert not np.array_equal(b_old, b_new)
  assert float(jax.jit(_loss)(new)) < float(jax.jit(_loss)(params))


def test_adapter_gradients_match_finite_differences_float64():
  """Exact check of dense's LoRA path (two adapters, the last trainable) in float64."""
  with jax.enable_x64(True):
    ks = jax.random.split(jax.random.PRNGKey(3), 6)
    x = jax.random.normal(ks[0], (2, 3, 8), jnp.float64)
    lw = lora.LoraWeight(jax.random.normal(ks[1], (8, 6), jnp.float64),
                         (jax.random.normal(ks[2], (8, 2), jnp.float64),
                          jax.random.normal(ks[3], (8, 3), jnp.float64)),
                         (jax.random.normal(ks[4], (2, 6), jnp.float64),
                          jax.random.normal(ks[5], (3, 6), jnp.float64)), (0.5, 2.0), 0.0)
    tr, frozen = lora.split({"k": lw})

    @jax.jit
    def f(t):
      return jnp.sum(jnp.sin(ops.dense(x, lora.combine(t, frozen)["k"], jnp.float64)))
    grads = jax.grad(f)(tr)
    flat, unravel = jax.flatten_util.ravel_pytree(tr)
    g_flat = jax.flatten_util.ravel_pytree(grads)[0]
    eps = 1e-6
    fd = jax.vmap(lambda e: (f(unravel(flat + eps * e)) - f(unravel(flat - eps * e))) / (2 * eps))(
        jnp.eye(flat.size, dtype=jnp.float64))
    np.testing.assert_allclose(g_flat, fd, rtol=1e-6, atol=1e-8)
    assert flat.size == 8 * 3 + 3 * 6   # only the last adapter is trainable


def test_model_adapter_gradient_matches_finite_difference(base):
  """The whole model, float32: the derivative along the normalized gradient
  (its norm) by central differences; a loose tolerance for float32."""
  params = _randomize_b(lora.add_adapter(base, lora.LoraConfig(rank=4, alpha=8),
                                         jax.random.PRNGKey(1)), seed=2, std=0.1)
  tr, frozen = lora.split(params)
  loss = jax.jit(lambda t: _loss(lora.combine(t, frozen)))
  grads = jax.jit(jax.grad(lambda t: _loss(lora.combine(t, frozen))))(tr)
  norm = float(optax.tree.norm(grads))
  assert norm > 1e-3
  h = 1e-2
  shift = lambda s: jax.tree.map(lambda p, g: p + s * h * g / norm, tr, grads)
  fd = (float(loss(shift(1.0))) - float(loss(shift(-1.0)))) / (2 * h)
  assert fd == pytest.approx(norm, rel=5e-3)   # measured: 4e-4


def test_stacked_adapters_train_last_only_and_merge_to_the_sum(base):
  p1 = lora.add_adapter(base, lora.LoraConfig(rank=4, alpha=4), jax.random.PRNGKey(1))
  p1, _, _ = _train(p1, "last", steps=1)
  p2 = lora.add_adapter(p1, lora.LoraConfig(rank=2, alpha=4), jax.random.PRNGKey(2))
  path = "layers_0/attn/q_proj/kernel"
  assert lora.flatten_paths(p2)[path].ranks == (4, 2)
  assert lora.flatten_paths(p2)[path].scales == (1.0, 2.0)
  tr, _ = lora.split(p2, "last")
  assert set(tr["layers_0"]["attn"]["q_proj"]["kernel"]) == {"a1", "b1"}
  tr, _ = lora.split(p2, "adapters")
  assert set(tr["layers_0"]["attn"]["q_proj"]["kernel"]) == {"a0", "b0", "a1", "b1"}
  tr, _ = lora.split(p2, "all")
  assert set(tr["layers_0"]["attn"]["q_proj"]["kernel"]) == {"w", "a0", "b0", "a1", "b1"}
  assert "embed" in tr

  p3, _, _ = _train(p2, "last", steps=2)
  assert _bases_equal(p3, p2)
  for path in lora.lora_paths(p2):
    old, new = lora.flatten_paths(p2)[path], lora.flatten_paths(p3)[path]
    assert np.array_equal(old.a[0], new.a[0]) and np.array_equal(old.b[0], new.b[0])
    assert not np.array_equal(old.b[1], new.b[1])

  x = lora.flatten_paths(p3)[path]
  want = np.asarray(x.w, np.float64) + sum(
      s * np.asarray(a, np.float64) @ np.asarray(b, np.float64)
      for a, b, s in zip(x.a, x.b, x.scales))
  np.testing.assert_allclose(lora.flatten_paths(lora.merge(p3))[path], want, atol=1e-6)


def test_save_load_round_trip_and_wrong_base(base, tmp_path):
  params = _randomize_b(lora.add_adapter(base, lora.LoraConfig(rank=4, dropout=0.1),
                                         jax.random.PRNGKey(1)), seed=2)
  out = lora.save_adapters(str(tmp_path / "ad"), params, {"base": "runs/base"})
  meta = lora.read_adapter_meta(out)
  assert meta["base"] == "runs/base"
  rec = meta["lora"]
  assert rec["targets"] == lora.lora_paths(params)
  assert rec["adapters"]["layers_1/attn/v_proj/kernel"]["base_shape"] == [64, 32]
  assert rec["adapters"]["layers_1/attn/v_proj/kernel"]["ranks"] == [4]
  assert rec["base_fingerprint"] == lora.adapter_fingerprint(base)
  loaded = lora.load_adapters(out, base)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  tokens = TOKENS_BT1[:, :-1]
  np.testing.assert_array_equal(_logits(loaded, tokens), _logits(params, tokens))

  with pytest.raises(FileExistsError):
    lora.save_adapters(out, params)
  assert not [p for p in tmp_path.iterdir() if p.name != "ad"]   # no temporaries left

  wrong = jax.tree.map(lambda x: x, base)
  wrong["layers_1"]["attn"]["v_proj"]["kernel"] = jnp.zeros((64, 16))
  with pytest.raises(UserError, match=r"layers_1/attn/v_proj/kernel.*\(64, 32\).*\(64, 16\)"):
    lora.load_adapters(out, wrong)

  other = _init(jax.random.PRNGKey(5))   # same shapes, other values
  with pytest.warns(UserWarning, match="fingerprint"):
    lora.load_adapters(out, other)
  with pytest.raises(UserError, match="fingerprint"):
    lora.load_adapters(out, other, strict=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lora.load_adapters(out, base)   # the right base: no warning


def test_bad_rank_and_targets_are_user_errors(base):
  with pytest.raises(UserError, match=r"rank 33.*layers_0/attn/v_proj/kernel.*\(64, 32\)"):
    lora.add_adapter(base, lora.LoraConfig(rank=33), jax.random.PRNGKey(0))
  for bad in (0, -1, 2.5):
    with pytest.raises(UserError, match="rank"):
      lora.LoraConfig(rank=bad)
  with pytest.raises(UserError, match="dropout"):
    lora.LoraConfig(dropout=1.0)
  with pytest.raises(UserError, match="regex"):
    lora.LoraConfig(targets="attn/(q")
  for targets in ("attn/nothing_proj", "embed"):   # embed is 2-D but no kernel of dense
    with pytest.raises(UserError, match="layers_0/attn/q_proj/kernel") as e:
      lora.add_adapter(base, lora.LoraConfig(targets=targets), jax.random.PRNGKey(0))
    assert "lm_head/kernel" in str(e.value)
  with pytest.raises(UserError, match="trainable"):
    lora.split(base, "first")
  with pytest.raises(UserError, match="no LoRA adapters"):
    lora.split(base)


def test_target_presets_select_expected_paths(base):
  def picked(targets):
    p = lora.add_adapter(base, lora.LoraConfig(rank=2, targets=targets), jax.random.PRNGKey(0))
    return {path.split("/", 1)[1] for path in lora.lora_paths(p)}
  attn = {f"attn/{n}_proj/kernel" for n in "qkvo"}
  mlp = {f"mlp/{n}_proj/kernel" for n in ("gate", "up", "down")}
  assert picked("qv") == {"attn/q_proj/kernel", "attn/v_proj/kernel"}
  assert picked("attn") == attn
  assert picked("all") == attn | mlp
  p = lora.add_adapter(base, lora.LoraConfig(rank=2, targets="lm_head"), jax.random.PRNGKey(0))
  assert lora.lora_paths(p) == ["lm_head/kernel"]


def test_count_params_slm26m_qv_rank8_is_under_one_percent():
  cfg = ModelConfig.preset("slm26m")
  shapes = param_shapes(cfg)
  adapted = jax.eval_shape(
      lambda p: lora.add_adapter(p, lora.LoraConfig(rank=8), jax.random.PRNGKey(0)), shapes)
  c = lora.count_params(adapted)
  n_lora = cfg.n_layers * 2 * (2 * 8 * cfg.d_model)   # q and v: [384, 8] + [8, 384]
  assert c["trainable"] == n_lora
  assert c["total"] == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) + n_lora
  assert 0 < c["percent"] < 1
  assert lora.count_params(adapted, "all")["trainable"] == c["total"]


def test_lora_dropout_only_with_rng_and_only_on_the_adapter_path(base):
  tokens = TOKENS_BT1[:, :-1]
  apply = jax.jit(lambda p, t, k: Decoder(CFG).apply({"params": p}, t, rngs={"lora_dropout": k}))
  for rate, differs in ((0.5, True), (0.0, False)):
    params = _randomize_b(lora.add_adapter(base, lora.LoraConfig(rank=4, dropout=rate),
                                           jax.random.PRNGKey(1)), seed=2)
    plain = _logits(params, tokens)
    dropped = apply(params, tokens, jax.random.PRNGKey(9))
    assert (not np.array_equal(plain, dropped)) == differs
    if differs:
      assert not np.array_equal(dropped, apply(params, tokens, jax.random.PRNGKey(10)))
  # B = 0: the adapter adds nothing, so dropout on its input cannot touch the output.
  zero = lora.add_adapter(base, lora.LoraConfig(rank=4, dropout=0.5), jax.random.PRNGKey(1))
  np.testing.assert_array_equal(apply(zero, tokens, jax.random.PRNGKey(9)), _logits(base, tokens))


def test_generate_on_lora_tree_equals_generate_on_merged(base):
  """LoRA rollouts need no merge: the sampler takes the wrapped tree."""
  params = _randomize_b(lora.add_adapter(base, lora.LoraConfig(rank=4, alpha=16),
                                         jax.random.PRNGKey(1)), seed=2, std=1.0)
  prompts = [[5, 9, 13], [7, 1]]
  got = generate(CFG, params, prompts, max_new_tokens=8)
  want = generate(CFG, lora.merge(params), prompts, max_new_tokens=8)
  assert [c.tokens for c in got.completions] == [c.tokens for c in want.completions]
  cast = engine.compute_params(params, CFG.replace(dtype="bfloat16"))
  x = lora.flatten_paths(cast)["layers_0/attn/q_proj/kernel"]
  assert isinstance(x, lora.LoraWeight) and x.scales == (4.0,)
  assert {v.dtype for v in (x.w,) + x.a + x.b} == {jnp.dtype("bfloat16")}


@struct.dataclass
class _FakeQ:
  """A stand-in quantized kernel (int8 codes * one scale), to test the
  duck-typed NF4 hooks without depending on jaxslm.quant."""
  codes: jax.Array
  scale: jax.Array

  @property
  def shape(self):
    return tuple(self.codes.shape)


def test_quantized_base_hooks(base, monkeypatch):
  fake = types.SimpleNamespace(
      is_quantized=lambda x: isinstance(x, _FakeQ),
      dequantize=lambda w, dtype: (w.codes.astype(jnp.float32) * w.scale).astype(dtype))
  monkeypatch.setitem(sys.modules, "jaxslm.quant", fake)

  def quantize(path, x):
    if not path.endswith("_proj/kernel"):
      return x
    scale = jnp.max(jnp.abs(x)) / 127
    return _FakeQ(jnp.round(x / scale).astype(jnp.int8), scale)
  q = lora.map_with_paths(base, quantize)
  dq = lora.map_with_paths(
      q, lambda _, x: fake.dequantize(x, jnp.float32) if isinstance(x, _FakeQ) else x)
  tokens = TOKENS_BT1[:, :-1]
  np.testing.assert_array_equal(_logits(q, tokens), _logits(dq, tokens))

  params = _randomize_b(lora.add_adapter(q, lora.LoraConfig(rank=4), jax.random.PRNGKey(1)), 2)
  x = lora.flatten_paths(params)["layers_0/attn/q_proj/kernel"]
  assert isinstance(x.w, _FakeQ) and x.a[0].dtype == jnp.float32
  merged = lora.merge(params)
  assert lora.flatten_paths(merged)["layers_0/attn/q_proj/kernel"].dtype == jnp.float32
  np.testing.assert_allclose(_logits(params, tokens), _logits(merged, tokens), atol=1e-5)
  tr, frozen = lora.split(params, "all")
  assert "w" not in tr["layers_0"]["attn"]["q_proj"]["kernel"]   # a quantized base stays frozen
  assert isinstance(lora.flatten_paths(frozen)["layers_0/mlp/up_proj/kernel"], _FakeQ)
  c = lora.count_params(params)
  assert c["total"] == sum(x.size for x in jax.tree.leaves(base)) + c["trainable"]
  kept = lora.flatten_paths(engine.compute_params(params, CFG.replace(dtype="bfloat16")))
  assert kept["layers_0/mlp/up_proj/kernel"].codes.dtype == jnp.int8
  back = lora.unmerge(merged, params)["layers_0"]["attn"]["q_proj"]["kernel"]
  assert back.w is params["layers_0"]["attn"]["q_proj"]["kernel"].w   # quantized base kept


def test_linear_rejects_wrapped_kernel_of_the_wrong_shape(base):
  params = lora.add_adapter(base, lora.LoraConfig(rank=2), jax.random.PRNGKey(0))
  bad = dict(params, layers_0=dict(params["layers_0"], attn=dict(params["layers_0"]["attn"])))
  bad["layers_0"]["attn"]["q_proj"] = {"kernel": lora.LoraWeight(
      jnp.zeros((64, 32)), (jnp.zeros((64, 2)),), (jnp.zeros((2, 32)),), (1.0,), 0.0)}
  with pytest.raises(UserError, match=r"q_proj/kernel has shape \(64, 32\).*\(64, 64\)"):
    _logits(bad, TOKENS_BT1[:, :-1])


def test_qlora_on_real_nf4_base(base):
  quant = pytest.importorskip("jaxslm.quant")
  q = jax.jit(lambda p: quant.quantize_params(p, r"_proj/kernel$"))(base)
  dq = jax.jit(lambda p: lora.map_with_paths(
      p, lambda _, x: quant.dequantize(x, jnp.float32) if quant.is_quantized(x) else x))(q)
  params = lora.add_adapter(q, lora.LoraConfig(rank=4, targets="all"), jax.random.PRNGKey(1))
  tokens = TOKENS_BT1[:, :-1]
  # dequantized inside the jitted forward (fused) vs before it: float32 rounding only
  np.testing.assert_allclose(_logits(params, tokens), _logits(dq, tokens), atol=1e-6)
  params = _randomize_b(params, seed=2)
  # Factored (x·A)·B vs merged W + A·B: float32 rounding in a different order
  # (up to 1.8e-5 seen on logits of ~0.1, depending on XLA:CPU's threading);
  # dropping the adapters moves them by 0.9.
  np.testing.assert_allclose(_logits(params, tokens), _logits(lora.merge(params), tokens),
                             atol=5e-5, rtol=1e-5)
  tr, frozen = lora.split(params, "all")   # the NF4 base is never trainable
  assert quant.is_quantized(lora.flatten_paths(frozen)["layers_0/mlp/up_proj/kernel"].w)
  n_adapters = lora.count_params(params, "adapters")["trainable"]
  n_base = sum(x.size for x in jax.tree.leaves(base))
  assert lora.count_params(params)["total"] == n_base + n_adapters
  out = generate(CFG, params, [[5, 9, 13]], max_new_tokens=4)
  assert len(out.completions[0].tokens) == 4
