"""Sampling from a decoder.

`sample_reference` recomputes the full forward pass for every new token: slow
but obviously correct, it is the reference the KV-cache sampler is tested
against, and what the pretraining run uses to print a few samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.models import Decoder, ModelConfig
from jaxslm.errors import UserError


@functools.partial(jax.jit, static_argnames=("model_cfg", "max_new_tokens"))
def _generate(params, tokens_bl, lengths_b, rng, temperature, *, model_cfg: ModelConfig,
              max_new_tokens: int):
  """Fill a right-padded [B, L] buffer after each row's length, one token a step."""
  model = Decoder(model_cfg)
  b, buf = tokens_bl.shape

  def body(i, carry):
    tokens, rng = carry
    logits_blv = model.apply({"params": params}, tokens)
    pos_b = lengths_b + i - 1
    logits_bv = jnp.take_along_axis(logits_blv, pos_b[:, None, None], axis=1)[:, 0]
    rng, sub = jax.random.split(rng)
    greedy = jnp.argmax(logits_bv, axis=-1)
    sampled = jax.random.categorical(sub, logits_bv / jnp.maximum(temperature, 1e-6), axis=-1)
    nxt = jnp.where(temperature > 0, sampled, greedy).astype(tokens.dtype)
    tokens = tokens.at[jnp.arange(b), pos_b + 1].set(nxt)
    return tokens, rng

  tokens, _ = jax.lax.fori_loop(0, max_new_tokens, body, (tokens_bl, rng))
  return tokens


def sample_reference(model_cfg: ModelConfig, params, prompts: list[list[int]], *,
                     max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                     eos_id: int | None = None) -> list[list[int]]:
  """New token ids for each prompt (greedy when temperature is 0), cut at EOS."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise UserError("Every prompt needs at least one token.")
  lengths = np.array([len(p) for p in prompts], np.int32)
  buf = int(lengths.max()) + max_new_tokens
  if buf > model_cfg.max_seq_len:
    raise UserError(f"Prompt ({lengths.max()}) + max_new_tokens ({max_new_tokens}) = {buf} "
                     f"exceeds the model's max_seq_len {model_cfg.max_seq_len}; ask for fewer tokens.")
  tokens = np.zeros((len(prompts), buf), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, : len(p)] = p
  out = np.asarray(_generate(params, jnp.asarray(tokens), jnp.asarray(lengths),
                             jax.random.PRNGKey(seed), jnp.float32(temperature),
                             model_cfg=model_cfg, max_new_tokens=max_new_tokens))
  results = []
  for i, n in enumerate(lengths):
    new = out[i, n: n + max_new_tokens].tolist()
    if eos_id is not None and eos_id in new:
      new = new[: new.index(eos_id)]
    results.append(new)
  return results
