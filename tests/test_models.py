import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxslm.models import Decoder, ModelConfig, count_params, flops_per_token, init_params, summary

F32 = dict(dtype="float32")


def _logits(cfg, params, tokens):
  return Decoder(cfg).apply({"params": params}, tokens)


@pytest.mark.parametrize("overrides", [
    dict(),                                                     # rmsnorm, swiglu, rope, GQA, untied
    dict(norm="layernorm", mlp="gelu", position="learned", tie_embeddings=True, use_bias=True,
         n_kv_heads=0),
])
def test_causality_zero_gradient_from_future_tokens(overrides):
  cfg = ModelConfig.preset("tiny", **F32, **overrides)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, cfg.vocab_size)
  embeds = jnp.take(params["embed"], tokens, axis=0)
  t = 5

  def loss_at_t(e):
    logits = Decoder(cfg).apply({"params": params}, tokens, embeds_btd=e)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, t], tokens[:, t + 1]).sum()

  g = jax.jit(jax.grad(loss_at_t))(embeds)
  assert np.all(np.asarray(g[:, t + 1:]) == 0.0)
  assert np.all(np.abs(np.asarray(g[:, : t + 1])).sum(-1) > 0)


def test_future_tokens_do_not_change_past_logits():
  cfg = ModelConfig.preset("tiny", **F32)
  params = init_params(cfg, jax.random.PRNGKey(0))
  a = jax.random.randint(jax.random.PRNGKey(1), (1, 16), 0, cfg.vocab_size)
  b = a.at[:, 10:].set((a[:, 10:] + 7) % cfg.vocab_size)
  la, lb = _logits(cfg, params, a), _logits(cfg, params, b)
  np.testing.assert_array_equal(la[:, :10], lb[:, :10])
  assert not np.allclose(la[:, 10:], lb[:, 10:])


def test_gqa_equals_mha_with_repeated_kv_heads():
  """A GQA model equals an MHA model whose k/v kernels repeat each kv head."""
  gqa = ModelConfig.preset("tiny", **F32)            # 4 heads, 2 kv heads
  mha = gqa.replace(n_kv_heads=4)
  p = init_params(gqa, jax.random.PRNGKey(0))
  h = gqa.dim_per_head
  p_mha = jax.tree.map(lambda x: x, p)
  for i in range(gqa.n_layers):
    attn = dict(p_mha[f"layers_{i}"]["attn"])
    for name in ("k_proj", "v_proj"):
      k = attn[name]["kernel"].reshape(gqa.d_model, 2, h)
      attn[name] = {"kernel": jnp.repeat(k, 2, axis=1).reshape(gqa.d_model, 4 * h)}
    p_mha[f"layers_{i}"] = {**p_mha[f"layers_{i}"], "attn": attn}
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, gqa.vocab_size)
  np.testing.assert_allclose(_logits(gqa, p, tokens), _logits(mha, p_mha, tokens), atol=1e-5)


def _reference_forward(cfg, params, tokens):
  """Plain numpy forward of the same architecture (obviously-correct reference)."""
  P = jax.tree.map(np.asarray, params)
  x = P["embed"][tokens].astype(np.float64)
  if cfg.embed_scale:
    x = x * np.sqrt(cfg.d_model)
  T = tokens.shape[1]
  if cfg.position == "learned":
    x = x + P["pos_embed"][:T]

  def norm(x, p):
    if cfg.norm == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * p["scale"]
    return y + p["bias"] if cfg.norm == "layernorm" else y

  def lin(x, p):
    return x @ p["kernel"] + (p["bias"] if "bias" in p else 0)

  def rope(x, layer):   # the first r dims of each head rotate (partial_rotary_factor)
    r = int(x.shape[-1] * cfg.partial_rotary_factor)
    theta, scaling = cfg.layer_rope(layer)
    inv = 1.0 / theta ** (np.arange(0, r, 2) / r)
    if scaling:
      assert dict(scaling)["type"] == "linear"
      inv = inv / dict(scaling)["factor"]
    ang = np.arange(T)[:, None] * inv
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., : r // 2], x[..., r // 2: r]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., r:]], -1)

  n, k, h = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
  for i in range(cfg.n_layers):
    L = P[f"layers_{i}"]
    a = norm(x, L["attn_norm"])
    q = lin(a, L["attn"]["q_proj"]).reshape(*a.shape[:2], n, h)
    kk = lin(a, L["attn"]["k_proj"]).reshape(*a.shape[:2], k, h)
    v = lin(a, L["attn"]["v_proj"]).reshape(*a.shape[:2], k, h)
    if cfg.qk_norm:
      q, kk = norm(q, L["attn"]["q_norm"]), norm(kk, L["attn"]["k_norm"])
    if cfg.position == "rope":
      q, kk = rope(q, i), rope(kk, i)
    kk, v = np.repeat(kk, n // k, 2), np.repeat(v, n // k, 2)
    s = np.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(cfg.attn_scale_dim or h)
    allowed = np.tril(np.ones((T, T), bool))
    if cfg.layer_window(i):     # query t sees keys t - W + 1 .. t
      allowed &= np.triu(np.ones((T, T), bool), -(cfg.layer_window(i) - 1))
    s = np.where(allowed, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", w, v).reshape(*a.shape[:2], n * h)
    attn_out = lin(o, L["attn"]["o_proj"])
    if cfg.sandwich_norm:
      attn_out = norm(attn_out, L["post_attn_norm"])
    m = a if cfg.parallel_block else norm(x + attn_out, L["mlp_norm"])
    x = x + attn_out

    def gelu(u):
      return 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    if cfg.mlp == "swiglu":
      g = lin(m, L["mlp"]["gate_proj"])
      act = g / (1 + np.exp(-g)) * lin(m, L["mlp"]["up_proj"])
    elif cfg.mlp == "geglu":
      act = gelu(lin(m, L["mlp"]["gate_proj"])) * lin(m, L["mlp"]["up_proj"])
    else:
      act = gelu(lin(m, L["mlp"]["up_proj"]))
    mlp_out = lin(act, L["mlp"]["down_proj"])
    x = x + (norm(mlp_out, L["post_mlp_norm"]) if cfg.sandwich_norm else mlp_out)
  x = norm(x, P["final_norm"])
  logits = x @ P["embed"].T if cfg.tie_embeddings else x @ P["lm_head"]["kernel"]
  return logits + P["lm_head"]["bias"] if cfg.lm_head_bias else logits


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(norm="layernorm", mlp="gelu", position="learned", tie_embeddings=True, use_bias=True),
    dict(qk_norm=True, head_dim=24, lm_head_bias=True),         # Qwen3-style, untied head bias
    dict(norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True, lm_head_bias=True,
         parallel_block=True, partial_rotary_factor=0.5, qk_norm=True),  # Phi-2-style
    dict(mlp="geglu", qk_norm=True, sandwich_norm=True, embed_scale=True, head_dim=24,  # Gemma 3
         attn_scale_dim=32, tie_embeddings=True, sliding_window=4, global_layers=(1,),
         rope_theta=1e6, rope_local_theta=1e4, rope_scaling={"type": "linear", "factor": 8.0}),
])
def test_forward_matches_numpy_reference(overrides):
  cfg = ModelConfig.preset("tiny", **F32, **overrides)
  params = init_params(cfg, jax.random.PRNGKey(3))
  # Non-trivial norm/bias params so every term is exercised.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
      if x.ndim == 1 else x, params)
  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (2, 9), 0, cfg.vocab_size))
  np.testing.assert_allclose(_logits(cfg, params, tokens), _reference_forward(cfg, params, tokens),
                             rtol=1e-4, atol=1e-4)


def test_bf16_compute_fp32_params_and_logits():
  cfg = ModelConfig.preset("tiny")
  assert cfg.dtype == "bfloat16"
  params = init_params(cfg, jax.random.PRNGKey(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = jnp.zeros((1, 8), jnp.int32)
  logits = _logits(cfg, params, tokens)
  assert logits.dtype == jnp.float32
  ref = _logits(cfg.replace(dtype="float32"), params, tokens)
  np.testing.assert_allclose(logits, ref, atol=5e-2)


def test_presets_param_counts():
  c = count_params(ModelConfig.preset("slm26m"))
  # 12 x (4·384² + 2·384·1536 + biases + norms) + 50257·384 + final norm.
  assert c["embedding"] == 50257 * 384
  per_layer = 4 * 384 * 384 + 4 * 384 + 2 * 384 * 1536 + 1536 + 384 + 4 * 384
  assert c["non_embedding"] == 12 * per_layer + 2 * 384
  assert c["total"] == 40_593_024
  assert count_params(ModelConfig.preset("gpt2_124m"))["total"] == 123_653_376
  assert "40,593,024" in summary(ModelConfig.preset("slm26m"))
  assert flops_per_token(ModelConfig.preset("slm26m"), 1024) == pytest.approx(
      6 * (c["non_embedding"] + 50257 * 384) + 12 * 12 * 384 * 1024)


@pytest.mark.parametrize("bad, match", [
    (dict(norm="batchnorm"), "norm"), (dict(n_heads=5), "n_heads"), (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(mlp="relu"), "mlp"), (dict(d_model=0), "d_model"), (dict(dtype="int8"), "dtype"),
    (dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
    (dict(partial_rotary_factor=0.1), "partial_rotary_factor"),    # 16 * 0.1 -> 1 dim, odd
    (dict(qk_norm=1), "qk_norm"),
    (dict(global_layers=(1,)), "global_layers"),                   # no sliding_window
    (dict(sliding_window=4, global_layers=(2,)), "global_layers"),  # tiny has 2 layers
    (dict(sliding_window=4, global_layers=(1, 0)), "global_layers"),
    (dict(sandwich_norm=True, parallel_block=True), "sandwich_norm"),
    (dict(rope_scaling={"type": "linear"}), "factor"), (dict(attn_scale_dim=-1), "attn_scale_dim"),
    (dict(rope_local_theta=0.0), "rope_local_theta"),
])
def test_bad_model_config_names_field(bad, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig.preset("tiny", **bad)


def test_new_switches_default_off_and_survive_to_dict():
  """Fields added for converted checkpoints default to the old computation, and
  a config saved before they existed (no such keys) loads unchanged."""
  cfg = ModelConfig.preset("tiny")
  new = ("partial_rotary_factor", "qk_norm", "parallel_block", "lm_head_bias", "sandwich_norm",
         "embed_scale", "attn_scale_dim", "global_layers", "rope_local_theta")
  assert tuple(getattr(cfg, k) for k in new) == (
      1.0, False, False, False, False, False, 0, (), None)
  assert cfg.rotary_dim == cfg.dim_per_head
  assert cfg.layer_window(0) is None and cfg.layer_rope(1) == (cfg.rope_theta, ())
  old = {k: v for k, v in cfg.to_dict().items() if k not in new}
  assert ModelConfig.from_dict(old) == cfg
  phi = cfg.replace(parallel_block=True, partial_rotary_factor=0.5, lm_head_bias=True,
                    tie_embeddings=True, qk_norm=True)
  assert ModelConfig.from_dict(phi.to_dict()) == phi and phi.rotary_dim == 8
  shapes = jax.eval_shape(lambda r: init_params(phi, r), jax.random.PRNGKey(0))
  assert "mlp_norm" not in shapes["layers_0"] and shapes["lm_head"]["bias"].shape == (512,)
  assert shapes["layers_0"]["attn"]["q_norm"]["scale"].shape == (16,)
  counts = count_params(phi)
  assert counts["embedding"] == 512 * 64 + 512                 # the head's bias is a vocab leaf
  gemma = cfg.replace(mlp="geglu", sandwich_norm=True, sliding_window=4, global_layers=[1])
  assert gemma.global_layers == (1,) and ModelConfig.from_dict(gemma.to_dict()) == gemma
  assert (gemma.layer_window(0), gemma.layer_window(1)) == (4, None)
  shapes = jax.eval_shape(lambda r: init_params(gemma, r), jax.random.PRNGKey(0))
  assert {"post_attn_norm", "post_mlp_norm", "mlp_norm"} <= set(shapes["layers_0"])
  assert shapes["layers_0"]["mlp"]["gate_proj"]["kernel"].shape == (64, 128)


def test_unknown_preset_lists_available():
  with pytest.raises(ValueError, match="slm26m"):
    ModelConfig.preset("nope")
