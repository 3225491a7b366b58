"""The one configurable decoder-only transformer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxslm.models.config import ModelConfig
from jaxslm.models.layers import Block, Linear, Norm


class Decoder(nn.Module):
  """tokens [B, T] int -> logits [B, T, V] float32.

  Used functionally: `params = Decoder(cfg).init(rng, tokens)["params"]`,
  `logits = Decoder(cfg).apply({"params": params}, tokens)`.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array | None = None,
               embeds_btd: jax.Array | None = None) -> jax.Array:
    """`embeds_btd`, when given, replaces the token lookup (gradients w.r.t. inputs)."""
    cfg = self.cfg
    b, t = tokens_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    pdt, cdt = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
    embedding_vd = self.param("embed", nn.initializers.normal(cfg.init_std),
                              (cfg.vocab_size, cfg.d_model), pdt)
    if embeds_btd is None:
      embeds_btd = jnp.take(embedding_vd, tokens_bt, axis=0)
    x_btd = embeds_btd.astype(cdt)
    if cfg.position == "learned":
      pos_td = self.param("pos_embed", nn.initializers.normal(cfg.init_std / 2),
                          (cfg.max_seq_len, cfg.d_model), pdt)
      x_btd = x_btd + jnp.take(pos_td, positions_bt, axis=0).astype(cdt)
    block = nn.remat(Block) if cfg.remat else Block
    for i in range(cfg.n_layers):
      x_btd = block(cfg, name=f"layers_{i}")(x_btd, positions_bt)
    x_btd = Norm(cfg, name="final_norm")(x_btd)
    if cfg.tie_embeddings:
      logits_btv = jnp.einsum("btd,vd->btv", x_btd, embedding_vd.astype(cdt),
                              preferred_element_type=jnp.float32)
    else:
      logits_btv = Linear(cfg.vocab_size, cfg, use_bias=False, out_dtype="float32",
                          name="lm_head")(x_btd)
    return logits_btv.astype(jnp.float32)
