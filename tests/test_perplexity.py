"""jaxslm.evaluation.perplexity: batched, padded, jitted NLL against a one-sequence reference."""

import math

import jax
import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.evaluation.perplexity import perplexity, text_perplexity, token_nll
from jaxslm.models import Decoder, ModelConfig, init_params
from tests.scripted import CharTokenizer


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig.preset("tiny", vocab_size=128, max_seq_len=32, dtype="float32")
  return cfg, init_params(cfg, jax.random.PRNGKey(3))


def reference_nll(cfg, params, context, target):
  """Slow and obvious: one unpadded forward, log-softmax in numpy, target tokens only."""
  seq = np.array(list(context) + list(target))
  logits = np.asarray(Decoder(cfg).apply({"params": params}, seq[None, :-1])[0], np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                            keepdims=True)) \
      - logits.max(-1, keepdims=True)
  start = max(len(context), 1)
  return np.array([-logp[t - 1, seq[t]] for t in range(start, len(seq))])


def test_token_nll_matches_reference(model):
  cfg, params = model
  rng = np.random.default_rng(0)
  contexts = [rng.integers(1, 128, n).tolist() for n in (0, 1, 5, 9, 3, 12)]
  targets = [rng.integers(1, 128, n).tolist() for n in (4, 1, 7, 2, 15, 6)]
  wants = [reference_nll(cfg, params, c, t) for c, t in zip(contexts, targets)]
  # a tiny logit budget forces one sequence per batch; 16 scored positions x 128
  # vocabulary x 4 bytes x 2 makes batches of two; a big one puts all in one
  for budget in (1, 16 * 128 * 4 * 2, 1 << 30):
    got, cut = token_nll(cfg, params, contexts, targets, max_logit_bytes=budget)
    assert cut == 0
    for g, want in zip(got, wants):
      assert g.shape == want.shape
      np.testing.assert_allclose(g, want, rtol=2e-5, atol=2e-5)


def test_long_sequences_keep_the_target_and_the_end_of_the_context(model):
  cfg, params = model   # context 32 tokens
  context, target = list(range(1, 41)), list(range(50, 60))
  got, cut = token_nll(cfg, params, [context], [target])
  assert cut == 0 and got[0].shape == (10,)
  want = reference_nll(cfg, params, context[-(33 - 10):], target)
  np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=2e-5)
  got, cut = token_nll(cfg, params, [[1, 2]], [list(range(1, 41))])
  assert cut == 1 and got[0].shape == (32,)   # 32 target tokens, one context token
  np.testing.assert_allclose(got[0], reference_nll(cfg, params, [2], list(range(1, 33))),
                             rtol=2e-5, atol=2e-5)


def test_perplexity_is_exp_of_mean_token_nll(model):
  cfg, params = model
  tok = CharTokenizer()
  out = perplexity((cfg, params, tok), ["abc", "hello there"], ["Q: ", "x"])
  nlls, _ = token_nll(cfg, params, [tok.encode("Q: "), tok.encode("x")],
                      [tok.encode("abc"), tok.encode("hello there")])
  total = sum(float(n.sum()) for n in nlls)
  assert out["tokens"] == 14 and out["texts"] == 2
  assert out["ppl"] == pytest.approx(math.exp(total / 14), rel=1e-6)
  assert out["per_example"][0]["tokens"] == 3
  # a uniform model has perplexity = vocabulary size
  zero = jax.tree.map(np.zeros_like, params)
  assert perplexity((cfg, zero, tok), ["abcdef"], ["z"])["ppl"] == pytest.approx(128, rel=1e-5)


def test_bad_input(model):
  cfg, params = model
  with pytest.raises(UserError, match="2 contexts but 1 targets"):
    token_nll(cfg, params, [[1], [2]], [[3]])
  with pytest.raises(UserError, match="target 0 is empty"):
    token_nll(cfg, params, [[1]], [[]])
  with pytest.raises(UserError, match="no texts"):
    perplexity((cfg, params, CharTokenizer()), [])


def test_text_perplexity_scores_every_token_once_with_history(model):
  cfg, params = model   # context 32
  tok = CharTokenizer()
  text = "".join(chr(33 + (i * 7) % 90) for i in range(75))
  out = text_perplexity((cfg, params, tok), text, stride=16)
  assert out["tokens"] == 74 and out["windows"] == 5
  ids = tok.encode(text)
  want = np.concatenate([reference_nll(cfg, params, ids[max(0, s - 17):s], ids[s:s + 16])
                         for s in range(0, 75, 16)])
  assert out["nll_per_token"] == pytest.approx(want.mean(), rel=1e-5)
  assert text_perplexity((cfg, params, tok), text, stride=32)["tokens"] == 74   # none skipped
  with pytest.raises(UserError, match="stride=40"):
    text_perplexity((cfg, params, tok), text, stride=40)
