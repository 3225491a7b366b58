"""The one configurable decoder-only transformer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxslm import ops
from jaxslm.models.config import ModelConfig
from jaxslm.models.layers import Block, Linear, Norm


class Decoder(nn.Module):
  """tokens [B, T] int -> logits [B, T, V] float32.

  Used functionally: `params = Decoder(cfg).init(rng, tokens)["params"]`,
  `logits = Decoder(cfg).apply({"params": params}, tokens)`.

  Incremental decoding passes a KV cache (`init_cache`) and gets it back:
  `logits, cache = apply(..., tokens, positions, cache=cache, cache_index=i,
  kv_mask_bs=m)` writes this call's keys/values at slots [i, i + T). `kv_mask_bs`
  [B, S] marks the slots holding real tokens (this call's included; padding
  False); a query at slot q sees the allowed slots <= q. A Python-int
  `cache_index` (the prefill) attends only over slots [0, i + T).
  `last_only=True` computes logits for the last position only ([B, 1, V]).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array | None = None,
               embeds_btd: jax.Array | None = None, *, cache=None, cache_index=0,
               kv_mask_bs: jax.Array | None = None, last_only: bool = False,
               logit_index_bk: jax.Array | None = None):
    """`embeds_btd`, when given, replaces the token lookup (gradients w.r.t. inputs;
    `cfg.embed_scale` still applies, as to looked-up rows).
    `logit_index_bk` (int [B, K]): logits only at these positions of each row
    ([B, K, V]; GRPO scores completion tokens only, skipping the prompt's)."""
    cfg = self.cfg
    b, t = tokens_bt.shape
    if cache is not None and kv_mask_bs is None:
      raise ValueError("Decoder: a cache needs kv_mask_bs, the [B, S] mask of filled slots.")
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    pdt, cdt = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
    if self.has_variable("params", "embed") and ops.is_quantized(
        self.get_variable("params", "embed")):
      embedding_vd = self.get_variable("params", "embed")   # int8 (jaxslm.quant)
    else:
      embedding_vd = self.param("embed", nn.initializers.normal(cfg.init_std),
                                (cfg.vocab_size, cfg.d_model), pdt)
    if embeds_btd is None:
      embeds_btd = ops.embed(embedding_vd, tokens_bt)
    if cfg.embed_scale:   # sqrt(D) rounded to float32, then to the embedding dtype (as HF)
      scale = jnp.asarray(cfg.d_model ** 0.5, jnp.float32).astype(embeds_btd.dtype)
      embeds_btd = embeds_btd * scale
    x_btd = embeds_btd.astype(cdt)
    if cfg.position == "learned":
      pos_td = self.param("pos_embed", nn.initializers.normal(cfg.init_std / 2),
                          (cfg.max_seq_len, cfg.d_model), pdt)
      x_btd = x_btd + jnp.take(pos_td, positions_bt, axis=0).astype(cdt)
    if cache is None:
      block = nn.remat(Block) if cfg.remat else Block
      for i in range(cfg.n_layers):
        x_btd = block(cfg, i, name=f"layers_{i}")(x_btd, positions_bt)
    else:
      # One mask per distinct window (Gemma 3: sliding-window and global layers).
      windows = [cfg.layer_window(i) for i in range(cfg.n_layers)]
      masks = {w: _cache_mask(kv_mask_bs, cache_index, t, w, positions_bt)
               for w in set(windows)}
      cache = dict(cache)
      # `remat` here too: GRPO's learning pass runs through a cache (its prompts
      # once, their groups' completions after). One-token decode steps never
      # take gradients, so they skip it.
      block = nn.remat(Block) if cfg.remat and t > 1 else Block
      for i in range(cfg.n_layers):
        name = f"layers_{i}"
        x_btd, cache[name] = block(cfg, i, name=name)(x_btd, positions_bt, cache[name],
                                                      cache_index, masks[windows[i]])
    if last_only:
      x_btd = x_btd[:, -1:]
    elif logit_index_bk is not None:
      x_btd = jnp.take_along_axis(x_btd, logit_index_bk[..., None], axis=1)
    x_btd = Norm(cfg, name="final_norm")(x_btd)
    if cfg.tie_embeddings:
      logits_btv = ops.unembed(x_btd, embedding_vd, cdt)
      if cfg.lm_head_bias:
        logits_btv = HeadBias(cfg.vocab_size, pdt, name="lm_head")(logits_btv)
    else:
      logits_btv = Linear(cfg.vocab_size, cfg, use_bias=cfg.lm_head_bias, out_dtype="float32",
                          name="lm_head")(x_btd)
    logits_btv = logits_btv.astype(jnp.float32)
    return logits_btv if cache is None else (logits_btv, cache)


class HeadBias(nn.Module):
  """The output head's [V] bias where the head's kernel is the (tied) embedding,
  at `lm_head/bias` as for an untied head."""
  features: int
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, logits_btv):
    bias_v = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return logits_btv + bias_v.astype(jnp.float32)


def _cache_mask(kv_mask_bs: jax.Array, cache_index, t: int, window: int | None,
                positions_bt: jax.Array) -> jax.Array:
  """[B, T, S']: query t (at slot index + t) may see filled slots s <= index + t
  (and, with a sliding `window` W, only keys less than W positions before it).
  A row's real tokens sit in slot order with consecutive positions, though not
  always in consecutive slots (a shared prefix leaves an empty slot before each
  row's own tokens), so a key's position is the count of filled slots before it;
  the query's is `positions_bt`.

  Every query also sees its own slot, so a padding query has one finite key
  instead of none. With a static `cache_index` only slots [0, index + t) exist
  for the keys (S' = index + T), which keeps the prefill's attention T x T.
  """
  if isinstance(cache_index, int):
    kv_mask_bs = kv_mask_bs[:, : cache_index + t]
  s = kv_mask_bs.shape[-1]
  q_slot_t = cache_index + jnp.arange(t, dtype=jnp.int32)
  s_idx = jnp.arange(s, dtype=jnp.int32)
  causal_ts = s_idx[None, :] <= q_slot_t[:, None]
  own_ts = s_idx[None, :] == q_slot_t[:, None]
  mask_bts = kv_mask_bs[:, None, :] & causal_ts[None]
  if window is not None:
    key_pos_bs = jnp.cumsum(kv_mask_bs, axis=-1, dtype=jnp.int32) - 1
    mask_bts &= key_pos_bs[:, None, :] > positions_bt[:, :, None] - window
  return mask_bts | own_ts[None]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
  """An empty KV cache: per layer {"k", "v"} of [B, K, S, H] in the compute dtype
  (each kv head's slots contiguous: a decode step reads one block per head)."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, cfg.num_kv_heads, length, cfg.dim_per_head)
  return {f"layers_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for i in range(cfg.n_layers)}
