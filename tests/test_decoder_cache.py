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


def _prefill_case(cfg, lengths, p, max_new):
  rng = np.random.RandomState(3)
  tokens = np.zeros((len(lengths), p), np.int32)
  for b, n in enumerate(lengths):
    tokens[b, p - n:] = rng.randint(1, cfg.vocab_size, n)
  return jnp.asarray(tokens), jnp.asarray(np.array(lengths, np.int32))


@pytest.mark.parametrize("kw", [dict(), dict(sliding_window=5, global_layers=(1,))])
def test_chunked_prefill_equals_one_shot_prefill(kw):
  """The prefill in chunks of 16 queries (traced cache index, attention over all
  slots) leaves the same cache and decodes the same logits as the one-shot
  prefill; and both equal the full forward."""
  from jaxslm.sampling import engine
  from jaxslm.sampling.filters import Filters
  cfg = ModelConfig.preset("tiny", dtype="float32", **kw)
  params = init_params(cfg, jax.random.PRNGKey(4))
  tokens, lengths = _prefill_case(cfg, [64, 37, 1], p=64, max_new=8)
  seeds = jnp.zeros((3, 2), jnp.uint32)
  run = lambda chunk: engine.prefill(params, tokens, lengths, seeds, model_cfg=cfg, n=1,
                                     max_new=8, queue_len=1, chunk=chunk)
  one, chunked = run(None), run(16)
  assert engine.prefill_chunk(3, 64, 73, cfg) == 64       # small: one shot by default
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=TOL)
  # Logits: the first decode step's (it feeds the prompt's last token), and the
  # full forward over each prompt.
  model = Decoder(cfg)
  mask = chunked.kv_mask_bs.at[:, 64].set(True)
  step = jax.jit(lambda c, t: model.apply({"params": params}, t[:, None], (lengths - 1)[:, None],
                                          cache=c, cache_index=64, kv_mask_bs=mask)[0][:, 0])
  right = np.zeros((3, 64), np.int32)        # the prompts right-aligned at 0: one forward
  for b, n in enumerate([64, 37, 1]):
    right[b, :n] = tokens[b, 64 - n:]
  full = jax.jit(lambda t: model.apply({"params": params}, t))(jnp.asarray(right))
  want = full[jnp.arange(3), lengths - 1]
  for state in (one, chunked):
    np.testing.assert_allclose(step(state.cache, state.next_b), want, atol=TOL)


def test_fused_prefill_attention_equals_masked_attention(monkeypatch):
  """The GPU path (jax.nn.dot_product_attention with the cache mask) run on CPU."""
  from jaxslm.models import layers
  cfg = ModelConfig.preset("tiny", dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(5))
  tokens, _ = _prefill_case(cfg, [20, 7], p=24, max_new=0)
  mask = jnp.asarray(np.arange(30)[None] >= np.array([[4], [17]])) & (jnp.arange(30) < 24)
  pos = jnp.maximum(jnp.arange(24)[None] - jnp.array([[4], [17]]), 0)
  outs = []
  for fused in (False, True):
    monkeypatch.setattr(layers, "FUSED_PREFILL_ATTENTION", fused)
    outs.append(Decoder(cfg).apply({"params": params}, tokens, pos, cache=init_cache(cfg, 2, 30),
                                   cache_index=0, kv_mask_bs=mask))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(a, b, atol=TOL)


def test_prompt_buckets_are_fine_and_few():
  from jaxslm.sampling.engine import prompt_bucket, prompt_buckets
  assert [prompt_bucket(n) for n in (1, 9, 200, 256, 257, 300, 1322, 2048, 2049)] == \
      [8, 16, 256, 256, 320, 320, 1536, 2048, 2560]
  for n in range(1, 5000, 7):
    assert n <= prompt_bucket(n) and (n <= 256 or prompt_bucket(n) < 1.25 * n + 1)
  assert len(prompt_buckets(2048)) == 18 and len(prompt_buckets(8192)) == 26   # 4 per doubling


def test_chunked_prefill_memory_grows_linearly_with_the_prompt():
  """XLA's own count of the prefill's scratch memory (compiled, not run): in chunks
  of 64 queries it doubles when the prompt doubles; in one shot it quadruples."""
  from jaxslm.sampling import engine
  cfg = ModelConfig.preset("tiny", dtype="float32", max_seq_len=2048)
  params = init_params(cfg, jax.random.PRNGKey(0))

  def scratch(p, chunk):
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
    compiled = engine.prefill.lower(
        params, spec((8, p), jnp.int32), spec((8,), jnp.int32), spec((8, 2), jnp.uint32),
        model_cfg=cfg, n=1, max_new=8, queue_len=1, chunk=chunk).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  chunked = scratch(1024, 64) / scratch(512, 64)
  one_shot = scratch(1024, 1024) / scratch(512, 512)
  assert 1.5 < chunked < 2.3 and one_shot > 3.5, (chunked, one_shot)
  # The default picks chunks once the scores of the whole prompt pass the budget.
  big = ModelConfig.preset("llama135m")
  assert engine.prefill_chunk(64, 2048, 2048 + 1 + 256, big) == 32
  assert 64 * big.n_heads * 32 * (2048 + 257) * 4 <= engine.PREFILL_SCORE_BYTES


@pytest.mark.parametrize("kw", [dict(), dict(sliding_window=5, global_layers=(1,))])
@pytest.mark.parametrize("chunk", [None, 32])
def test_shared_prefix_prefill_equals_each_prompt_whole(kw, chunk):
  """A 128-token prefix run once and copied to every row, then each row's suffix
  (1 to 40 tokens): the first decode step's logits equal a full forward over
  each whole prompt, and the cache holds the prompt's keys at its positions."""
  from jaxslm.sampling import engine
  cfg = ModelConfig.preset("tiny", dtype="float32", **kw)
  params = init_params(cfg, jax.random.PRNGKey(5))
  rng = np.random.RandomState(1)
  prefix = rng.randint(1, cfg.vocab_size, 128)
  suffixes = [rng.randint(1, cfg.vocab_size, n) for n in (40, 1, 17)]
  c, q = 128, 64
  tokens = np.zeros((3, c + q), np.int32)
  tokens[:, :c] = prefix
  for b, x in enumerate(suffixes):
    tokens[b, c + q - len(x):] = x
  lengths = jnp.asarray([c + len(x) for x in suffixes], jnp.int32)
  state = engine.prefill(params, jnp.asarray(tokens), lengths, jnp.zeros((3, 2), jnp.uint32),
                         model_cfg=cfg, n=1, max_new=8, queue_len=1, chunk=chunk, shared=c)
  model = Decoder(cfg)
  mask = state.kv_mask_bs.at[:, c + q].set(True)
  logits = model.apply({"params": params}, state.next_b[:, None], (lengths - 1)[:, None],
                       cache=state.cache, cache_index=c + q, kv_mask_bs=mask)[0][:, 0]
  for b, x in enumerate(suffixes):
    whole = jnp.asarray(np.concatenate([prefix, x])[None], jnp.int32)
    want = model.apply({"params": params}, whole)[0, -1]
    np.testing.assert_allclose(logits[b], want, atol=TOL)
    assert int(state.next_b[b]) == x[-1]
    # the prefix in slots [0, 128), the slot at 128 empty, the suffix ending at slot 191
    row = np.asarray(state.kv_mask_bs[b])
    assert row[:c].all() and not row[c] and row[c + q - len(x) + 1:c + q].all()
    assert row.sum() == c + len(x) - 1
