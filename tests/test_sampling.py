import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.models import Decoder, ModelConfig, init_params
from jaxslm.sampling import sample_reference


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig.preset("tiny", dtype="float32")
  return cfg, init_params(cfg, jax.random.PRNGKey(0))


def _greedy_loop(cfg, params, prompt, n):
  """Token by token in Python, the whole sequence recomputed each time (one
  fixed-size, right-padded buffer, so causality makes the padding irrelevant)."""
  forward = jax.jit(lambda t: Decoder(cfg).apply({"params": params}, t))
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for i in range(len(prompt), len(prompt) + n):
    buf[0, i] = int(jnp.argmax(forward(jnp.asarray(buf))[0, i - 1]))
  return buf[0, len(prompt):].tolist()


def test_greedy_matches_python_loop_for_ragged_batch(model):
  cfg, params = model
  prompts = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6]]
  out = sample_reference(cfg, params, prompts, max_new_tokens=6)
  for p, o in zip(prompts, out):
    assert o == _greedy_loop(cfg, params, p, 6)


def test_sampling_is_seeded_and_cut_at_eos(model):
  cfg, params = model
  a = sample_reference(cfg, params, [[3, 4]], max_new_tokens=8, temperature=1.0, seed=1)
  b = sample_reference(cfg, params, [[3, 4]], max_new_tokens=8, temperature=1.0, seed=1)
  assert a == b
  full = sample_reference(cfg, params, [[3, 4]], max_new_tokens=8)[0]
  cut = sample_reference(cfg, params, [[3, 4]], max_new_tokens=8, eos_id=full[2])[0]
  assert cut == full[: full.index(full[2])]


def test_too_long_request_is_refused(model):
  cfg, params = model
  with pytest.raises(ValueError, match="max_seq_len"):
    sample_reference(cfg, params, [[1] * 100], max_new_tokens=100)
