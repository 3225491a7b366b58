"""Cached decoding (prefill + one token at a time) equals the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.models import Decoder, ModelConfig, init_cache, init_params

TOL = 2e-5   # float32: the two paths differ only in the order of float additions

VARIANTS = {
    "gqa_rope_rmsnorm_swiglu_untied": dict(),                     # tiny: 4 heads, 2 kv heads
    "mha_layernorm_gelu_tied_bias": dict(n_kv_heads=0, norm="layernorm", mlp="gelu",
                                         tie_embeddings=True, use_bias=True),
    "mqa": dict(n_kv_heads=1),
    "learned_positions": dict(position="learned", n_kv_heads=0),
    "head_dim_override": dict(head_dim=24, n_kv_heads=2),
    "qk_norm": dict(qk_norm=True),                                 # Qwen3
    "partial_rotary": dict(partial_rotary_factor=0.75),            # Phi-3/4: 12 of 16 dims
    "phi2_parallel_block_lm_head_bias": dict(                      # Phi-2
        norm="layernorm", mlp="gelu", use_bias=True, parallel_block=True,
        partial_rotary_factor=0.5, lm_head_bias=True),
    # Gemma 3: layer 0 sees the last 4 keys (rows run to 15 tokens) with its own RoPE
    # base, layer 1 every key with a linearly scaled RoPE; GeGLU, sandwich norms, q/k
    # norms, scaled embeddings, q.k / sqrt(32).
    "gemma3_sliding_and_global_layers": dict(
        mlp="geglu", qk_norm=True, sandwich_norm=True, embed_scale=True, head_dim=24,
        attn_scale_dim=32, tie_embeddings=True, sliding_window=4, global_layers=(1,),
        rope_theta=1e6, rope_local_theta=1e4, rope_scaling={"type": "linear", "factor": 8.0}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_logits_equal_full_forward(name):
  cfg = ModelConfig.preset("tiny", dtype="float32", **VARIANTS[name])
  params = init_params(cfg, jax.random.PRNGKey(1))
  model = Decoder(cfg)
  rng = np.random.RandomState(0)
  lengths, new = np.array([5, 9, 2]), 6
  seqs = [rng.randint(0, cfg.vocab_size, l + new) for l in lengths]
  p, s = 12, 12 + new + 2                       # left padding up to 12, two spare slots
  tokens = np.zeros((3, p), np.int32)
  mask = np.zeros((3, s), bool)
  pad = p - lengths
  for b in range(3):
    tokens[b, pad[b]:] = seqs[b][: lengths[b]]
    mask[b, pad[b]:p] = True
  positions = np.maximum(np.arange(p)[None] - pad[:, None], 0)
  logits, cache = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions),
                              cache=init_cache(cfg, 3, s), cache_index=0, kv_mask_bs=jnp.asarray(mask))
  # Reference: one full forward over the right-padded sequences (causal, so the
  # padding at the end changes nothing before it).
  right = np.zeros((3, max(len(x) for x in seqs)), np.int32)
  for b, seq in enumerate(seqs):
    right[b, : len(seq)] = seq
  full = np.asarray(model.apply({"params": params}, jnp.asarray(right)))
  for b in range(3):
    np.testing.assert_allclose(logits[b, pad[b]:], full[b][: lengths[b]], atol=TOL)
  step = jax.jit(lambda c, t, pos, i, m: model.apply({"params": params}, t, pos, cache=c,
                                                     cache_index=i, kv_mask_bs=m))
  for i in range(new):
    mask[:, p + i] = True
    tok = np.array([seq[l + i] for seq, l in zip(seqs, lengths)])[:, None]
    logits, cache = step(cache, jnp.asarray(tok), jnp.asarray((lengths + i)[:, None]),
                         jnp.int32(p + i), jnp.asarray(mask))
    for b in range(3):
      np.testing.assert_allclose(logits[b, 0], full[b][lengths[b] + i], atol=TOL)


def test_last_only_and_bfloat16_cache():
  cfg = ModelConfig.preset("tiny")                  # bfloat16 compute and cache
  params = init_params(cfg, jax.random.PRNGKey(2))
  tokens = jnp.arange(1, 9)[None]
  full = Decoder(cfg).apply({"params": params}, tokens)
  last, cache = Decoder(cfg).apply({"params": params}, tokens, cache=init_cache(cfg, 1, 16),
                                   cache_index=0, kv_mask_bs=jnp.ones((1, 16), bool),
                                   last_only=True)
  assert last.shape == (1, 1, cfg.vocab_size) and cache["layers_0"]["k"].dtype == jnp.bfloat16
  np.testing.assert_allclose(last[0, 0], full[0, -1], atol=0.05)
  assert int(jnp.argmax(last[0, 0])) == int(jnp.argmax(full[0, -1]))


def test_a_cache_needs_its_mask():
  cfg = ModelConfig.preset("tiny", dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(2))
  with pytest.raises(ValueError, match="kv_mask_bs"):
    Decoder(cfg).apply({"params": params}, jnp.ones((1, 4), jnp.int32), cache=init_cache(cfg, 1, 8))
