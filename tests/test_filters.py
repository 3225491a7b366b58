"""Top-k / top-p / min-p: the allowed sets against numpy, and sampled tokens stay inside them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.models import Decoder, ModelConfig, init_params
from jaxslm.sampling import Filters, filter_logits, generate


def allowed_numpy(logits, temperature, top_k, top_p, min_p):
  """The allowed set, written the obvious way: sort, count, renormalize."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.ones(z.size, bool)
  if top_k:
    keep[order[top_k:]] = False
  if top_p < 1:
    kept = order[keep[order]]
    p = np.exp(z[kept] - z[kept].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    drop = kept[1:][before[1:] >= top_p]
    keep[drop] = False
  if min_p:
    p = np.exp(z - z[keep].max())
    keep &= p >= min_p
  return keep


CASES = [  # temperature, top_k, top_p, min_p
    (1.0, 5, 1.0, 0.0), (0.7, 0, 0.8, 0.0), (1.3, 40, 0.9, 0.0), (1.0, 0, 1.0, 0.1),
    (0.5, 20, 0.95, 0.05), (2.0, 1, 1.0, 0.0), (1.0, 0, 0.01, 0.0),
]


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", CASES)
def test_allowed_set_matches_numpy(temperature, top_k, top_p, min_p):
  logits = jax.random.normal(jax.random.PRNGKey(1), (3, 300)) * 3
  filters = Filters(greedy_only=False, top_k=top_k and max(top_k, 8), top_p=top_p < 1,
                    min_p=min_p > 0)
  out = filter_logits(logits, jnp.full(3, temperature), jnp.full(3, top_k, jnp.int32),
                      jnp.full(3, top_p), jnp.full(3, min_p), filters)
  for row in range(3):
    want = allowed_numpy(logits[row], temperature, top_k, top_p, min_p)
    np.testing.assert_array_equal(np.isfinite(np.asarray(out[row])), want)
    np.testing.assert_allclose(np.asarray(out[row])[want], np.asarray(logits[row])[want] / temperature,
                               rtol=1e-6)


def test_rows_have_their_own_settings():
  logits = jnp.tile(jnp.linspace(0, 5, 50)[None], (3, 1))
  out = filter_logits(logits, jnp.ones(3), jnp.array([3, 0, 10], jnp.int32), jnp.ones(3),
                      jnp.zeros(3), Filters(greedy_only=False, top_k=16))
  assert np.isfinite(np.asarray(out)).sum(-1).tolist() == [3, 50, 10]


@pytest.mark.parametrize("kw", [dict(top_k=7), dict(top_p=0.6), dict(min_p=0.2),
                                dict(top_k=12, top_p=0.8, min_p=0.05)])
def test_sampled_tokens_never_leave_the_allowed_set(kw):
  """600 first tokens drawn (fixed seed) from one prompt: all inside the set numpy
  allows, and every allowed token's frequency near its renormalized probability."""
  cfg = ModelConfig.preset("tiny", dtype="float32", vocab_size=256)
  params = init_params(cfg, jax.random.PRNGKey(3))
  params = jax.tree.map(lambda x: x * 6 if x.ndim == 2 else x, params)  # a peakier distribution
  prompt = [3, 1, 4, 1, 5]
  logits = np.asarray(Decoder(cfg).apply({"params": params}, jnp.asarray([prompt]))[0, -1])
  settings = dict(top_k=kw.get("top_k"), top_p=kw.get("top_p", 1.0), min_p=kw.get("min_p", 0.0))
  allowed = allowed_numpy(logits, 1.0, settings["top_k"] or 0, settings["top_p"], settings["min_p"])
  assert 2 <= allowed.sum() < 100, "the test needs a set that is neither trivial nor everything"
  out = generate(cfg, params, [prompt], max_new_tokens=1, temperature=1.0, n=600, seed=0,
                 **settings)
  drawn = np.array([c.tokens[0] for c in out.completions])
  assert allowed[drawn].all(), f"sampled outside the allowed set: {sorted(set(drawn[~allowed[drawn]]))}"
  p = np.where(allowed, np.exp(logits - logits.max()), 0)
  p /= p.sum()
  freq = np.bincount(drawn, minlength=logits.size) / drawn.size
  assert np.abs(freq - p).max() < 5 * np.sqrt(p.max() * (1 - p.max()) / drawn.size) + 0.01


def test_fast_argmax_equals_jnp_argmax_with_ties():
  from jaxslm.sampling.filters import argmax
  x = jax.random.randint(jax.random.PRNGKey(0), (64, 1000), 0, 5).astype(jnp.float32)  # many ties
  np.testing.assert_array_equal(argmax(x), jnp.argmax(x, axis=-1))
  y = jax.random.normal(jax.random.PRNGKey(1), (8, 50257))
  np.testing.assert_array_equal(argmax(y), jnp.argmax(y, axis=-1))


def test_vocab_limit_is_never_crossed_greedy_or_sampled():
  from jaxslm.sampling.filters import choose
  logits = jnp.asarray(np.tile(np.arange(8, dtype=np.float32) * 3.0, (6, 1)))   # id 7 best
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  temp = jnp.asarray([0.0, 1.0, 1.0, 2.0, 5.0, 0.0])
  ones = jnp.ones((6,), jnp.float32)
  zeros_i = jnp.zeros((6,), jnp.int32)
  for f in (Filters(greedy_only=False, vocab=5), Filters(greedy_only=True, vocab=5)):
    out = np.asarray(choose(logits, keys, temp, zeros_i, ones, 0 * ones, f))
    assert out.max() < 5 and out[0] == 4 and out[5] == 4
  free = np.asarray(choose(logits, keys, temp, zeros_i, ones, 0 * ones, Filters(greedy_only=False)))
  assert free[0] == 7


def test_padded_embedding_never_samples_ids_the_tokenizer_lacks():
  """A model whose embedding is padded past its tokenizer (as Qwen's and Phi-2's
  are): sampling must stay inside the tokenizer, or decoding fails."""
  from jaxslm.data.synthetic import iter_documents
  from jaxslm.tokenizers import train_sentencepiece
  tok = train_sentencepiece(list(iter_documents(0, 300)), vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=512, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(1))
  out = generate(cfg, params, [tok.encode("Question: Ava")] * 4, max_new_tokens=48,
                 temperature=2.0, n=4, seed=3, tokenizer=tok)
  ids = np.concatenate([c.tokens for c in out.completions])
  assert len(ids) > 100 and ids.max() < tok.vocab_size
  assert all(isinstance(c.text, str) for c in out.completions)
