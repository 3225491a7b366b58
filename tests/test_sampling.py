"""The KV-cache sampler against the full-recompute reference and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.models import Decoder, ModelConfig, init_params
from jaxslm.sampling import bucket, generate, sample_reference


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig.preset("tiny", dtype="float32")
  return cfg, init_params(cfg, jax.random.PRNGKey(0))


def _forward(cfg, params):
  return jax.jit(lambda t: Decoder(cfg).apply({"params": params}, t))


def _greedy_loop(cfg, params, prompt, n):
  """Token by token in Python, the whole sequence recomputed each time (one
  fixed-size, right-padded buffer, so causality makes the padding irrelevant)."""
  forward = _forward(cfg, params)
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for i in range(len(prompt), len(prompt) + n):
    buf[0, i] = int(jnp.argmax(forward(jnp.asarray(buf))[0, i - 1]))
  return buf[0, len(prompt):].tolist()


PROMPTS = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]   # ragged; two prompt buckets


def test_reference_greedy_matches_python_loop(model):
  cfg, params = model
  out = sample_reference(cfg, params, PROMPTS[:2], max_new_tokens=6)
  for p, o in zip(PROMPTS, out):
    assert o == _greedy_loop(cfg, params, p, 6)


def test_greedy_equals_repeated_argmax_of_full_forward(model):
  cfg, params = model
  out = generate(cfg, params, PROMPTS, max_new_tokens=12)
  for p, c in zip(PROMPTS, out.completions):
    assert c.tokens == _greedy_loop(cfg, params, p, 12)
    assert c.finish_reason == "length"


def test_reference_and_engine_agree_on_sampled_tokens_logprobs(model):
  """Log-probabilities = log-softmax of the full-forward logits at the chosen tokens."""
  cfg, params = model
  out = generate(cfg, params, PROMPTS, max_new_tokens=10, temperature=[0.7, 1.3], n=2,
                 top_k=50, top_p=0.9, seed=4)
  forward = _forward(cfg, params)
  for c in out.completions:
    seq = PROMPTS[c.prompt_index] + c.tokens
    logits = np.asarray(forward(jnp.asarray([seq]))[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    start = len(PROMPTS[c.prompt_index])
    want = [logp[start - 1 + i, t] for i, t in enumerate(c.tokens)]
    np.testing.assert_allclose(c.logprobs, want, atol=2e-5)


def test_a_sequence_does_not_depend_on_its_batch_or_padding(model):
  cfg, params = model
  kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95)
  alone = generate(cfg, params, [PROMPTS[1]], seed=[11], **kw).completions[0]
  # In a batch of 3 (another prompt bucket, so more left padding, and a bigger batch bucket).
  batch = generate(cfg, params, PROMPTS, seed=[3, 11, 5], **kw).completions[1]
  assert alone.tokens == batch.tokens
  np.testing.assert_allclose(alone.logprobs, batch.logprobs, atol=1e-5)
  g_alone = generate(cfg, params, [PROMPTS[2]], max_new_tokens=8).completions[0]
  g_batch = generate(cfg, params, PROMPTS * 3, max_new_tokens=8).completions[2]
  assert g_alone.tokens == g_batch.tokens


def test_seeded_determinism_and_per_row_temperature(model):
  cfg, params = model
  kw = dict(max_new_tokens=8, n=3, temperature=[0.0, 1.0, 1.0])
  a = generate(cfg, params, PROMPTS[:2], seed=1, **kw)
  b = generate(cfg, params, PROMPTS[:2], seed=1, **kw)
  c = generate(cfg, params, PROMPTS[:2], seed=2, **kw)
  assert [x.tokens for x in a.completions] == [x.tokens for x in b.completions]
  assert [x.tokens for x in a.completions] != [x.tokens for x in c.completions]
  greedy = generate(cfg, params, PROMPTS[:2], max_new_tokens=8).completions
  for i in range(2):   # temperature 0 rows are greedy even beside sampled rows
    assert a.completions[i * 3].tokens == greedy[i].tokens
    assert a.completions[i * 3 + 1].tokens != a.completions[i * 3 + 2].tokens  # own keys
  assert [x.temperature for x in a.completions[:3]] == [0.0, 1.0, 1.0]


def test_eos_and_stop_token_ids_end_a_row_early(model):
  cfg, params = model
  full = generate(cfg, params, PROMPTS, max_new_tokens=12).completions
  eos = full[0].tokens[4]
  out = generate(cfg, params, PROMPTS, max_new_tokens=12, eos_id=eos).completions
  k = full[0].tokens.index(eos)
  assert out[0].tokens == full[0].tokens[: k + 1] and out[0].finish_reason == "eos"
  stop = full[2].tokens[3]
  out = generate(cfg, params, PROMPTS, max_new_tokens=12, stop_token_ids=[stop]).completions
  k = full[2].tokens.index(stop)
  assert out[2].tokens == full[2].tokens[: k + 1] and out[2].finish_reason == "stop_token"


def test_generation_stops_at_the_context(model):
  cfg, params = model
  prompt = list(range(1, cfg.max_seq_len - 3))
  c = generate(cfg, params, [prompt], max_new_tokens=10).completions[0]
  assert len(prompt) + len(c.tokens) == cfg.max_seq_len and c.finish_reason == "context"


def test_bad_input_is_refused_with_the_value_named(model):
  cfg, params = model
  cases = [
      (dict(prompts=[[]]), "prompt 0 is empty"),
      (dict(prompts=[[1] * cfg.max_seq_len]), "truncate=True"),
      (dict(prompts=[[cfg.vocab_size]]), "outside"),
      (dict(temperature=-0.5), "temperature"),
      (dict(top_p=0.0), "top_p=0.0"),
      (dict(top_p=1.5), "top_p=1.5"),
      (dict(top_k=0), "top_k=0"),
      (dict(min_p=1.0), "min_p=1.0"),
      (dict(max_new_tokens=0), "max_new_tokens=0"),
      (dict(n=0), "n=0"),
      (dict(temperature=[1.0, 0.5, 0.2]), "temperature has 3 values"),
      (dict(stop_strings=["x"]), "tokenizer"),
  ]
  for kw, match in cases:
    kw = {"prompts": [[1, 2]], **kw}
    with pytest.raises(ValueError, match=match):
      generate(cfg, params, kw.pop("prompts"), **kw)


def test_left_truncation_when_asked_warns(model):
  cfg, params = model
  long = list(np.arange(200) % 500 + 1)
  with pytest.warns(UserWarning, match="keeping its last 118 tokens"):
    out = generate(cfg, params, [long], max_new_tokens=10, truncate=True)
  assert out.prompt_tokens[0] == long[-118:]
  assert out.completions[0].tokens == generate(cfg, params, [long[-118:]],
                                               max_new_tokens=10).completions[0].tokens


def test_buckets_are_powers_of_two():
  assert [bucket(x) for x in (1, 8, 9, 100)] == [8, 8, 16, 128]
  assert [bucket(x, 1) for x in (1, 3, 64)] == [1, 4, 64]


def test_new_prompt_lengths_in_a_bucket_do_not_recompile(model):
  from jaxslm.sampling import engine
  cfg, params = model
  generate(cfg, params, [[1] * 9], max_new_tokens=5)
  before = engine.prefill._cache_size(), engine.decode._cache_size()
  for length in (10, 13, 16):
    generate(cfg, params, [[2] * length], max_new_tokens=7)
  assert (engine.prefill._cache_size(), engine.decode._cache_size()) == before


def test_more_bad_settings_are_refused(model):
  cfg, params = model
  for kw, match in [(dict(chunk_size=0), "chunk_size=0"), (dict(chunk_size=-1), "chunk_size=-1"),
                    (dict(pad_id=cfg.vocab_size), "pad_id=512")]:
    with pytest.raises(ValueError, match=match):
      generate(cfg, params, [[1, 2]], **kw)


def test_a_huge_budget_is_bounded_by_the_context(model):
  cfg, params = model
  out = generate(cfg, params, [[1, 2, 3]], max_new_tokens=10**9)
  assert out.timing["budget_bucket"] == 128 and out.completions[0].finish_reason == "context"
  assert len(out.completions[0].tokens) == cfg.max_seq_len - 3


@pytest.mark.parametrize("kw", [dict(), dict(sliding_window=8, global_layers=(1,))])
def test_a_shared_prefix_runs_once_and_changes_nothing(kw):
  """Prompts with a common 150-token preamble (a few-shot prefix): the prefill
  runs its first 128 tokens once (`shared_prefix`), and greedy and sampled
  completions, with their log-probabilities, equal those of every prompt run
  whole; so do those of prompts without one."""
  from jaxslm.sampling.generate import shared_prefix_length
  cfg = ModelConfig.preset("tiny", dtype="float32", max_seq_len=256, **kw)
  params = init_params(cfg, jax.random.PRNGKey(7))
  rng = np.random.RandomState(3)
  preamble = rng.randint(1, cfg.vocab_size, 150).tolist()
  prompts = [preamble + rng.randint(1, cfg.vocab_size, k).tolist() for k in (1, 30, 9)]
  assert shared_prefix_length(prompts) == 128
  assert shared_prefix_length(prompts[:1]) == 0 and shared_prefix_length([[1] * 70, [2] * 70]) == 0
  assert shared_prefix_length([preamble[:129], preamble[:129]]) == 128   # each keeps a token
  assert shared_prefix_length([preamble[:128], preamble[:128]]) == 64
  # 64 shared, 200 tokens at most: 64 + a 256-slot suffix bucket would pass the 256
  # slots the prompts take whole (what a token budget counts), so the suffixes get 192.
  wide = [preamble[:64] + rng.randint(1, cfg.vocab_size, k).tolist() for k in (136, 86)]
  a = generate(cfg, params, wide, max_new_tokens=4)
  b = generate(cfg, params, wide, max_new_tokens=4, share_prefix=False)
  assert a.timing["shared_prefix"] == 64 and a.timing["prompt_bucket"] == 256
  assert [x.tokens for x in a.completions] == [x.tokens for x in b.completions]
  for settings in (dict(temperature=0.0), dict(temperature=1.0, n=2, seed=5)):
    shared = generate(cfg, params, prompts, max_new_tokens=12, **settings)
    whole = generate(cfg, params, prompts, max_new_tokens=12, share_prefix=False, **settings)
    assert shared.timing["shared_prefix"] == 128 and whole.timing["shared_prefix"] == 0
    for a, b in zip(shared.completions, whole.completions):
      assert a.tokens == b.tokens
      np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
