"""Parameter counts, FLOPs per token and a printable model summary."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxslm.models.config import ModelConfig
from jaxslm.models.decoder import Decoder

# Leaves that are lookups/outputs over the vocabulary or positions, excluded
# from the "non-embedding" count (Kaplan et al.'s convention).
_EMBEDDING_LEAVES = ("embed", "pos_embed", "lm_head")


def init_params(cfg: ModelConfig, rng: jax.Array):
  """Fresh fp32 (param_dtype) parameters, a plain nested dict."""
  tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
  return Decoder(cfg).init(rng, tokens)["params"]


def param_shapes(cfg: ModelConfig):
  return jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))


def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Exact counts from the parameter shapes: total, embedding, non-embedding."""
  shapes = param_shapes(cfg)
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  embedding = sum(math.prod(x.shape) for k in _EMBEDDING_LEAVES if k in shapes
                  for x in jax.tree.leaves(shapes[k]))
  return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6N + 12·L·(N_heads·H)·T (PaLM appendix B).

  N counts every parameter that takes part in a matrix multiply: the
  non-embedding parameters plus the output head (V·D, tied or not); the token
  lookup and learned positions do no multiply. The attention term counts the
  full T×T score and value products (as is customary, causal masking's
  halving is not subtracted).
  """
  counts = count_params(cfg)
  n_matmul = counts["non_embedding"] + cfg.vocab_size * cfg.d_model
  attn = 12 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len
  return float(6 * n_matmul + attn)


def summary(cfg: ModelConfig) -> str:
  c = count_params(cfg)
  kv = f", {cfg.num_kv_heads} kv heads" if cfg.num_kv_heads != cfg.n_heads else ""
  return (f"Decoder: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads{kv}, "
          f"FFN {cfg.d_ff} ({cfg.mlp}), {cfg.norm}, {cfg.position} positions, "
          f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} embeddings; "
          f"params {c['total']:,} total, {c['non_embedding']:,} non-embedding "
          f"({c['embedding']:,} embedding)")

